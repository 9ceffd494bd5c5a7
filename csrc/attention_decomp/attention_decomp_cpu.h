#pragma once

#include <vector>

#include "../common/tensor.h"

namespace vk::attention_decomp {

// CPU kernel of vision_kernels.attention_decomposition (see attention_decomp.h for the equation).
// values [B, L, N, H, Dh], attn [B, L, H, N], folded [L, H, Dh, E], scale [B], offset [B, L, E]
// or nullptr, all of one floating dtype with any strides; out [B, Lk, Hk, Nk, E] contiguous, any
// floating dtype. `layers` lists the layer indices whose terms are computed (repeats allowed).
void attention_decomposition_cpu(const TensorRef& values, const TensorRef& attn, const TensorRef& folded,
                                 const TensorRef& scale, const TensorRef* offset, const std::vector<index_t>& layers,
                                 bool keep_layers, bool keep_heads, bool keep_tokens, const TensorRef& out);

}  // namespace vk::attention_decomp
