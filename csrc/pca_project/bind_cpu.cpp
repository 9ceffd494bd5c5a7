#include "../common/pybind_tensor.h"
#include "../common/registry.h"
#include "pca_project_ops.h"

// Arguments: see pca_project_ops.h; callers: vision_kernels/ops/pca_project.py.
VK_REGISTER_BINDINGS(pca_project_cpu) {
  VK_BIND_OP(module, vk::pca, pca_project_fused_cpu, "out = ((x - shift) * scale) @ basis, at most 16 rows.");
  VK_BIND_OP(module, vk::pca, pca_reconstruct_fused_cpu, "out = (coeffs @ basis^T) * scale + shift, at most 16 rows.");
  VK_BIND_OP(module, vk::pca, pca_standardize_cpu, "out = (x - shift) * scale in the accumulation dtype.");
  VK_BIND_OP(module, vk::pca, pca_destandardize_cpu, "out = store(accumulated * scale + shift); out may alias.");
}
