// Native entry points of the attention_decomp family, declared once for both devices: one argument list,
// the CUDA twin adds the stream last. Bound by bind_cpu.cpp / bind_cuda.cpp with VK_BIND_OP; called by
// vision_kernels/ops/attention_decomp.py with prepare's native arguments.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "../common/tensor.h"

namespace vk::attention_decomp {

// out = scale * A * (values @ folded) + offset per (layer, head, token) term, summed over the axes not kept
// (see attention_decomp.h). values [B, L, N, H, Dh], attn [B, L, H, N], folded [L, H, Dh, E], scale [B],
// offset [B, L, E] or None, all of one floating dtype with any strides; out [B, Lk, Hk, Nk, E] contiguous,
// any floating dtype. `layers` lists the layer indices whose terms are computed (repeats allowed).
#define VK_ATTENTION_DECOMPOSITION_ARGS                                                                          \
  const TensorRef &values, const TensorRef &attn, const TensorRef &folded, const TensorRef &scale,               \
      const std::optional<TensorRef> &offset, const std::vector<index_t> &layers, bool keep_layers,              \
      bool keep_heads, bool keep_tokens, const TensorRef &out

void attention_decomposition_cpu(VK_ATTENTION_DECOMPOSITION_ARGS);
void attention_decomposition_cuda(VK_ATTENTION_DECOMPOSITION_ARGS, std::uintptr_t stream);

}  // namespace vk::attention_decomp
