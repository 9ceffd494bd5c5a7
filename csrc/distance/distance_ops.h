// Native entry points of the distance family, declared once for both devices: one argument list,
// the CUDA twin adds the stream last. Bound by bind_cpu.cpp / bind_cuda.cpp with VK_BIND_OP; called
// by vision_kernels/ops/distance.py with prepare's native arguments.
#pragma once

#include <cstdint>

#include "../common/tensor.h"

namespace vk::distance {

// out[i, j] = sum_d (x[i, d] - y[j, d])^2. x: [N, D], y: [M, D], out: [N, M], any strides, one
// floating dtype, all on the device of the entry point.
#define VK_SQ_L2_DISTANCE_ARGS const TensorRef &x, const TensorRef &y, const TensorRef &out

void sq_l2_distance_cpu(VK_SQ_L2_DISTANCE_ARGS);
void sq_l2_distance_cuda(VK_SQ_L2_DISTANCE_ARGS, std::uintptr_t stream);

}  // namespace vk::distance
