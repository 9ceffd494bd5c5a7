#pragma once

#include <cstdint>

#include "../common/tensor.h"

namespace vk::pca {

// CUDA (or emulated) twins of the pca_project_cpu.h kernels, enqueued on `stream`.
//
// pca_project_fused_cuda also takes `partial`, a [S, B, K] contiguous workspace in the
// accumulation dtype allocated by the caller: D is split into S chunks (S >= 1, chosen by the
// caller), each block accumulates one chunk for 128 columns, and a second kernel sums the S
// partials in order (deterministic, no atomics).
void pca_project_fused_cuda(const TensorRef& x, const TensorRef& shift, const TensorRef& scale,
                            const TensorRef& basis, const TensorRef& partial, const TensorRef& out,
                            std::uintptr_t stream);

void pca_reconstruct_fused_cuda(const TensorRef& coeffs, const TensorRef& basis, const TensorRef& scale,
                                const TensorRef& shift, const TensorRef& out, std::uintptr_t stream);

void pca_standardize_cuda(const TensorRef& x, const TensorRef& shift, const TensorRef& scale, const TensorRef& out,
                          std::uintptr_t stream);

void pca_destandardize_cuda(const TensorRef& accumulated, const TensorRef& scale, const TensorRef& shift,
                            const TensorRef& out, std::uintptr_t stream);

}  // namespace vk::pca
