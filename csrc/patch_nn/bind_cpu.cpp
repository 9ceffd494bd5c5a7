#include "../common/pybind_tensor.h"
#include "../common/registry.h"
#include "patch_nn_ops.h"

VK_REGISTER_BINDINGS(patch_nn_cpu) {
  VK_BIND_OP(module, vk::patch_nn, patch_nn_cpu, "Exact patch nearest neighbours (see vision_kernels.ops.patch_nn).");
  VK_BIND_OP(module, vk::patch_nn, patch_vote_cpu, "Fold chosen value patches (see vision_kernels.ops.patch_vote).");
  VK_BIND_OP(module, vk::patch_nn, patch_match_cpu, "PatchMatch (see vision_kernels.ops.patch_match).");
}
