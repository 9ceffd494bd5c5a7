#pragma once

#include "../common/tensor.h"

namespace vk::pca {

// c = ((x - shift) * scale) @ basis for B <= kFusedMaxRows rows: one pass over the basis, x
// standardized on the fly. x: [B, D] and basis: [D, K] in one storage dtype (any strides);
// shift ([D], or [0] for none) and scale ([D]) in its accumulation dtype; out: [B, K] contiguous.
void pca_project_fused_cpu(const TensorRef& x, const TensorRef& shift, const TensorRef& scale,
                           const TensorRef& basis, const TensorRef& out);

// out = (coeffs @ basis^T) * scale + shift for B <= kFusedMaxRows rows: one pass over the basis
// with the scale/shift/cast epilogue fused. coeffs: [B, K] contiguous in the accumulation dtype,
// out: [B, D] in the storage dtype or the accumulation dtype (any strides).
void pca_reconstruct_fused_cpu(const TensorRef& coeffs, const TensorRef& basis, const TensorRef& scale,
                               const TensorRef& shift, const TensorRef& out);

// out = (x - shift) * scale in the accumulation dtype (dequantize + standardize a block).
void pca_standardize_cpu(const TensorRef& x, const TensorRef& shift, const TensorRef& scale, const TensorRef& out);

// out = store(accumulated * scale + shift) (the reconstruct epilogue; out may alias accumulated).
void pca_destandardize_cpu(const TensorRef& accumulated, const TensorRef& scale, const TensorRef& shift,
                           const TensorRef& out);

}  // namespace vk::pca
