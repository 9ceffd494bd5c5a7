#include "../common/pybind_tensor.h"
#include "../common/registry.h"
#include "patch_nn_ops.h"

VK_REGISTER_BINDINGS(patch_nn_cuda) {
  VK_BIND_OP(module, vk::patch_nn, patch_nn_cuda, "CUDA twin of patch_nn_cpu (workspace and stream last).");
  VK_BIND_OP(module, vk::patch_nn, patch_vote_cuda, "CUDA twin of patch_vote_cpu (stream last).");
  VK_BIND_OP(module, vk::patch_nn, patch_match_cuda, "CUDA twin of patch_match_cpu (workspace and stream last).");
}
