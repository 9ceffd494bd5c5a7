#pragma once

#include <cstdint>

#include "../common/tensor.h"

namespace vk::cc_conv {

// CUDA (or emulated) twin of gather_gemm_cpu, enqueued on `stream`. The plans live on the device; their
// values are not validated here (every tap read is bounds-checked, so bad tables give wrong values,
// never out-of-bounds accesses).
void gather_gemm_cuda(const TensorRef& input, const TensorRef& weight, const TensorRef& bias,
                      const TensorRef& row_pairs, const TensorRef& col_pairs, const TensorRef& row_taps, const TensorRef& row_group, const TensorRef& row_order,
                      const TensorRef& row_offsets, const TensorRef& col_taps, const TensorRef& col_group,
                      const TensorRef& col_order, const TensorRef& col_offsets, const TensorRef& out,
                      std::uintptr_t stream);

// CUDA twin of weight_grad_cpu: writes S partial sums over consecutive ranges of (batch, pixel) into
// partial [S, Gy, Gx, O, C, Ty, Tx] (float32, float64 for float64 inputs); the caller adds them up.
void weight_grad_cuda(const TensorRef& grad, const TensorRef& input, const TensorRef& row_taps,
                      const TensorRef& row_group, const TensorRef& row_order, const TensorRef& row_offsets,
                      const TensorRef& col_taps, const TensorRef& col_group, const TensorRef& col_order,
                      const TensorRef& col_offsets, const TensorRef& partial, std::uintptr_t stream);

}  // namespace vk::cc_conv
