#pragma once

#include "../common/tensor.h"

namespace vk::cc_conv {

// out[b, o, i, j] = bias[o] + sum_{c, t, u} w[gy(i), gx(j), o, c, t, u] * input[b, c, ty(i, t), tx(j, u)]
// (see cc_conv.h). input [B, C, H, W] any strides; weight [Gy, Gx, O, C, Ty, Tx] (w = weight) when
// row_pairs/col_pairs have no elements, else the forward weight [Py, Px, C, O, Kh, Kw] read through the
// pairs [G, T, 2] (input gradient); any strides; bias [O] or a 0-element tensor for none; out
// [B, O, Hout, Wout] contiguous; the row/col plans as int64 tables.
void gather_gemm_cpu(const TensorRef& input, const TensorRef& weight, const TensorRef& bias,
                     const TensorRef& row_pairs, const TensorRef& col_pairs, const TensorRef& row_taps, const TensorRef& row_group, const TensorRef& row_order,
                     const TensorRef& row_offsets, const TensorRef& col_taps, const TensorRef& col_group,
                     const TensorRef& col_order, const TensorRef& col_offsets, const TensorRef& out);

// grad_weight[gy, gx, o, c, t, u] = sum_{b, i in gy, j in gx} grad[b, o, i, j] * input[b, c, ty(i, t), tx(j, u)].
// grad [B, O, Hout, Wout] and input [B, C, H, W] any strides; grad_weight [Gy, Gx, O, C, Ty, Tx] contiguous.
void weight_grad_cpu(const TensorRef& grad, const TensorRef& input, const TensorRef& row_taps,
                     const TensorRef& row_group, const TensorRef& row_order, const TensorRef& row_offsets,
                     const TensorRef& col_taps, const TensorRef& col_group, const TensorRef& col_order,
                     const TensorRef& col_offsets, const TensorRef& grad_weight);

}  // namespace vk::cc_conv
