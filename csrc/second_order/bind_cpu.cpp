#include <pybind11/stl.h>

#include "../common/pybind_tensor.h"
#include "../common/registry.h"
#include "second_order_ops.h"

VK_REGISTER_BINDINGS(second_order_cpu) {
  VK_BIND_OP(module, vk::second_order, second_order_effects_cpu, "(attn, ln_std, activations, directions, scale, offset, layers, out): see vision_kernels.ops.second_order_effects.");
}
