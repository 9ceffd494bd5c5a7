#pragma once

#include <cstdint>
#include <vector>

#include "../common/tensor.h"

namespace vk::second_order {

// CUDA (or emulated) twin of second_order_effects_cpu, enqueued on `stream`. `workspace` is a contiguous
// [B, S * H, Nn] array of the accumulation dtype (float32, float64 for float64 inputs) on the inputs'
// device, allocated by the caller, that receives the per-image coefficients.
void second_order_effects_cuda(const TensorRef& attn, const TensorRef& ln_std, const TensorRef& activations,
                               const TensorRef& directions, const TensorRef& scale, const TensorRef* offset,
                               const std::vector<index_t>& layers, const TensorRef& workspace, const TensorRef& out,
                               std::uintptr_t stream);

}  // namespace vk::second_order
