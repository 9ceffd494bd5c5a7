#pragma once

#include <cstdint>
#include <vector>

#include "../common/tensor.h"

namespace vk::attention_decomp {

// CUDA (or emulated) twin of attention_decomposition_cpu, enqueued on `stream`.
void attention_decomposition_cuda(const TensorRef& values, const TensorRef& attn, const TensorRef& folded,
                                  const TensorRef& scale, const TensorRef* offset, const std::vector<index_t>& layers,
                                  bool keep_layers, bool keep_heads, bool keep_tokens, const TensorRef& out,
                                  std::uintptr_t stream);

}  // namespace vk::attention_decomp
