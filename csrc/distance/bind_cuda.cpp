#include "../common/pybind_tensor.h"
#include "../common/registry.h"
#include "distance_ops.h"

VK_REGISTER_BINDINGS(distance_cuda) {
  VK_BIND_OP(module, vk::distance, sq_l2_distance_cuda, "(x, y, out, stream): CUDA twin of sq_l2_distance_cpu.");
}
