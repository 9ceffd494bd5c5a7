#include <pybind11/stl.h>

#include "../common/pybind_tensor.h"
#include "../common/registry.h"
#include "attention_decomp_ops.h"

VK_REGISTER_BINDINGS(attention_decomp_cuda) {
  VK_BIND_OP(module, vk::attention_decomp, attention_decomposition_cuda, "(values, attn, folded, scale, offset, layers, keep_layers, keep_heads, keep_tokens, out, stream): CUDA twin of attention_decomposition_cpu.");
}
