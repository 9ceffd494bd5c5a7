#include <pybind11/stl.h>

#include "../common/pybind_tensor.h"
#include "../common/registry.h"
#include "attention_decomp_ops.h"

VK_REGISTER_BINDINGS(attention_decomp_cpu) {
  VK_BIND_OP(module, vk::attention_decomp, attention_decomposition_cpu, "(values, attn, folded, scale, offset, layers, keep_layers, keep_heads, keep_tokens, out): see vision_kernels.ops.attention_decomposition.");
}
