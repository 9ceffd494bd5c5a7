#include "../common/pybind_tensor.h"
#include "../common/registry.h"
#include "distance_ops.h"

VK_REGISTER_BINDINGS(distance_cpu) {
  VK_BIND_OP(module, vk::distance, sq_l2_distance_cpu, "(x, y, out): see vision_kernels.ops.sq_l2_distance.");
}
