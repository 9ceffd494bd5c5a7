#include "../common/pybind_tensor.h"
#include "../common/registry.h"
#include "pca_project_ops.h"

// CUDA twins of bind_cpu.cpp's entry points: the same arguments, then workspace and stream.
VK_REGISTER_BINDINGS(pca_project_cuda) {
  VK_BIND_OP(module, vk::pca, pca_project_fused_cuda, "CUDA pca_project_fused (+ partial [S, B, K], stream).");
  VK_BIND_OP(module, vk::pca, pca_reconstruct_fused_cuda, "CUDA pca_reconstruct_fused (+ stream).");
  VK_BIND_OP(module, vk::pca, pca_standardize_cuda, "CUDA pca_standardize (+ stream).");
  VK_BIND_OP(module, vk::pca, pca_destandardize_cuda, "CUDA pca_destandardize (+ stream).");
}
