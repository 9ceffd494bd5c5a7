#pragma once

#include <cstdint>

#include "../common/tensor.h"

namespace vk::distance {

// CUDA (or emulated) twin of sq_l2_distance_cpu, enqueued on `stream`.
void sq_l2_distance_cuda(const TensorRef& x, const TensorRef& y, const TensorRef& out, std::uintptr_t stream);

}  // namespace vk::distance
