// Native entry points of the weight-space PCA family, declared once for both devices: each argument
// list is one macro, the CUDA twin adds its workspace and the stream last. Bound by bind_cpu.cpp /
// bind_cuda.cpp with VK_BIND_OP; called by vision_kernels/ops/pca_project.py (see pca_project.h for
// the math). x and basis share one storage dtype; shift ([D], or [0] for none), scale ([D]) and
// coefficients are in its accumulation dtype.
#pragma once

#include <cstdint>

#include "../common/tensor.h"

namespace vk::pca {

// out = ((x - shift) * scale) @ basis for B <= kFusedMaxRows rows, one pass over the basis.
// x: [B, D], basis: [D, K] any strides; out: [B, K] contiguous. CUDA workspace `partial` [S, B, K]
// contiguous in the accumulation dtype: D is split into S chunks whose partial sums a second kernel
// adds in order (deterministic, no atomics).
#define VK_PCA_PROJECT_FUSED_ARGS \
  const TensorRef &x, const TensorRef &shift, const TensorRef &scale, const TensorRef &basis, const TensorRef &out
void pca_project_fused_cpu(VK_PCA_PROJECT_FUSED_ARGS);
void pca_project_fused_cuda(VK_PCA_PROJECT_FUSED_ARGS, const TensorRef& partial, std::uintptr_t stream);

// out = (coeffs @ basis^T) * scale + shift for B <= kFusedMaxRows rows, epilogue and cast fused.
// coeffs: [B, K] contiguous (accumulation dtype); out: [B, D] storage or accumulation dtype, any strides.
#define VK_PCA_RECONSTRUCT_FUSED_ARGS \
  const TensorRef &coeffs, const TensorRef &basis, const TensorRef &scale, const TensorRef &shift, const TensorRef &out
void pca_reconstruct_fused_cpu(VK_PCA_RECONSTRUCT_FUSED_ARGS);
void pca_reconstruct_fused_cuda(VK_PCA_RECONSTRUCT_FUSED_ARGS, std::uintptr_t stream);

// out = (x - shift) * scale in the accumulation dtype (dequantize + standardize a block).
#define VK_PCA_STANDARDIZE_ARGS const TensorRef &x, const TensorRef &shift, const TensorRef &scale, const TensorRef &out
void pca_standardize_cpu(VK_PCA_STANDARDIZE_ARGS);
void pca_standardize_cuda(VK_PCA_STANDARDIZE_ARGS, std::uintptr_t stream);

// out = store(accumulated * scale + shift) (the reconstruct epilogue; out may alias accumulated).
#define VK_PCA_DESTANDARDIZE_ARGS \
  const TensorRef &accumulated, const TensorRef &scale, const TensorRef &shift, const TensorRef &out
void pca_destandardize_cpu(VK_PCA_DESTANDARDIZE_ARGS);
void pca_destandardize_cuda(VK_PCA_DESTANDARDIZE_ARGS, std::uintptr_t stream);

}  // namespace vk::pca
