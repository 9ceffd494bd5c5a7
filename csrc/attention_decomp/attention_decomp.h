// Attention decomposition of a CLIP ViT: the arithmetic shared by the CPU loop and the CUDA kernels.
//
// For image b, layer l, head h and source token i, the direct contribution of that head's attention
// from token i to the class token, carried through the linearized final LayerNorm and projection, is
//
//   term[b, l, h, i, :] = scale[b] * attn[b, l, h, i] * (values[b, l, i, h, :] @ folded[l, h])   [E]
//                         + offset[b, l, :]
//
//   values [B, L, N, H, Dh]   v = W_V^h ln_1(x_i) + b_V^h of every layer and token
//   attn   [B, L, H, N]       class-token attention row A[l, h, 0, :]
//   folded [L, H, Dh, E]      W_O^h^T diag(LayerScale) C diag(gamma_final_ln) proj, folded once per model
//                             (C = I - 11^T / width centres a term; see vision_kernels.clip.folded)
//   scale  [B]                1 / std(r_b) of the final residual (divided by |z_b| when normalizing)
//   offset [B, L, E]          optional per-term additive vector (the original code's even split of
//                             the LayerNorm mean, bias and out-projection bias), zero when absent
//
// The caller keeps any subset of axes: the output is [B, Lk, Hk, Nk, E] with Lk = |layers| or 1
// (summed over the selected layers), Hk = H or 1, Nk = N or 1. Each output element is the sum of
// the terms of its group of (layer, head, token); the offset counts once per summed term.
// Accumulation is float (double for float64 inputs); the output may have another floating dtype.
// Nothing larger than the output is ever formed: a term is a [Dh] x [Dh, E] product computed into
// the output tile, never a [N, N, H, D] or [B, L, N, H, width] temporary.
#pragma once

#include <vector>

#include "../common/checks.h"
#include "../common/defs.h"
#include "../common/tensor.h"

namespace vk::attention_decomp {

constexpr int kMaxSelectedLayers = 256;  // layer indices passed by value to CUDA kernels

// Sizes of one call and the grouping of (layer, head, token) terms into output elements.
struct Plan {
  index_t batch = 0, layers = 0, tokens = 0, heads = 0, head_dim = 0, embed = 0;
  index_t selected = 0;  // number of entries of the layer list
  bool keep_layers = true, keep_heads = true, keep_tokens = true;

  VK_HOST_DEVICE index_t out_layers() const { return keep_layers ? selected : 1; }
  VK_HOST_DEVICE index_t out_heads() const { return keep_heads ? heads : 1; }
  VK_HOST_DEVICE index_t out_tokens() const { return keep_tokens ? tokens : 1; }
  // Output blocks: one per (b, lk, hk), each [Nk, E].
  VK_HOST_DEVICE index_t blocks() const { return batch * out_layers() * out_heads(); }
  // (layer list entry, head) pairs that contribute to one output block.
  VK_HOST_DEVICE index_t pairs_per_block() const {
    return (keep_layers ? 1 : selected) * (keep_heads ? 1 : heads);
  }
  // Pair p of block (lk, hk): entry s of the layer list and head h.
  VK_HOST_DEVICE void pair(index_t lk, index_t hk, index_t p, index_t& s, index_t& h) const {
    const index_t heads_in_block = keep_heads ? 1 : heads;
    s = keep_layers ? lk : p / heads_in_block;
    h = keep_heads ? hk : p % heads_in_block;
  }
  // How many terms of one (layer, image) an output element sums: the offset's multiplicity.
  VK_HOST_DEVICE index_t terms_per_layer() const { return (keep_heads ? 1 : heads) * (keep_tokens ? 1 : tokens); }
  // Block index -> (b, lk, hk).
  VK_HOST_DEVICE void block(index_t index, index_t& b, index_t& lk, index_t& hk) const {
    hk = index % out_heads();
    index /= out_heads();
    lk = index % out_layers();
    b = index / out_layers();
  }
};

// The per-(image, layer, head, token) weight of a value row: scale[b] * A[b, l, h, i].
template <typename A>
VK_HOST_DEVICE VK_FORCE_INLINE A term_weight(A scale, A attention) {
  return scale * attention;
}

// accumulator + weight * value * folded (one multiply-add of the [Dh] x [Dh, E] product).
template <typename A>
VK_HOST_DEVICE VK_FORCE_INLINE A accumulate_term(A accumulator, A weighted_value, A folded) {
  return accumulator + weighted_value * folded;
}

// The offset of an output element: terms_per_layer * sum over its layers of offset[b, l, e].
template <typename A>
VK_HOST_DEVICE VK_FORCE_INLINE A scaled_offset(A offset_sum, index_t terms_per_layer) {
  return offset_sum * static_cast<A>(terms_per_layer);
}

inline Plan make_plan(const TensorRef& values, const std::vector<index_t>& layers, bool keep_layers, bool keep_heads,
                      bool keep_tokens, index_t embed) {
  Plan plan;
  plan.batch = values.sizes[0];
  plan.layers = values.sizes[1];
  plan.tokens = values.sizes[2];
  plan.heads = values.sizes[3];
  plan.head_dim = values.sizes[4];
  plan.embed = embed;
  plan.selected = static_cast<index_t>(layers.size());
  plan.keep_layers = keep_layers;
  plan.keep_heads = keep_heads;
  plan.keep_tokens = keep_tokens;
  return plan;
}

// The checks both entry points run (the Python layer runs the same ones first).
inline void check_attention_decomposition_arguments(const ArgCheck& check, const TensorRef& values,
                                                    const TensorRef& attn, const TensorRef& folded,
                                                    const TensorRef& scale, const TensorRef* offset,
                                                    const std::vector<index_t>& layers, bool keep_layers,
                                                    bool keep_heads, bool keep_tokens, const TensorRef& out,
                                                    int device) {
  check.rank(values, "values", 5, "[B, L, N, H, Dh]");
  check.rank(attn, "attn", 4, "[B, L, H, N]");
  check.rank(folded, "folded", 4, "[L, H, Dh, E]");
  check.rank(scale, "scale", 1, "[B]");
  check.rank(out, "out", 5, "[B, Lk, Hk, Nk, E]");
  check.floating(values, "values");
  check.same_dtype(values, "values", attn, "attn");
  check.same_dtype(values, "values", folded, "folded");
  check.same_dtype(values, "values", scale, "scale");
  check.floating(out, "out");
  const index_t batch = values.sizes[0], num_layers = values.sizes[1], tokens = values.sizes[2];
  const index_t heads = values.sizes[3], head_dim = values.sizes[4], embed = folded.sizes[3];
  check.size(attn, "attn", 0, batch, "B, the batch of values");
  check.size(attn, "attn", 1, num_layers, "L, the layers of values");
  check.size(attn, "attn", 2, heads, "H, the heads of values");
  check.size(attn, "attn", 3, tokens, "N, the tokens of values");
  check.size(folded, "folded", 0, num_layers, "L, the layers of values");
  check.size(folded, "folded", 1, heads, "H, the heads of values");
  check.size(folded, "folded", 2, head_dim, "Dh, the head size of values");
  check.size(scale, "scale", 0, batch, "B, the batch of values");
  if (offset != nullptr) {
    check.rank(*offset, "offset", 3, "[B, L, E]");
    check.same_dtype(values, "values", *offset, "offset");
    check.size(*offset, "offset", 0, batch, "B, the batch of values");
    check.size(*offset, "offset", 1, num_layers, "L, the layers of values");
    check.size(*offset, "offset", 2, embed, "E, the embedding size of folded");
    check.on_device(*offset, "offset", device);
    check.not_null(*offset, "offset");
  }
  VK_CHECK(static_cast<index_t>(layers.size()) <= kMaxSelectedLayers, ErrorKind::Value, check.function(),
           ": argument 'layers' must list at most ", kMaxSelectedLayers, " layers, got ", layers.size());
  for (std::size_t k = 0; k < layers.size(); ++k)
    VK_CHECK(layers[k] >= 0 && layers[k] < num_layers, ErrorKind::Index, check.function(),
             ": argument 'layers' must hold layer indices in [0, ", num_layers, "), got ", layers[k],
             " at position ", k);
  const index_t selected = static_cast<index_t>(layers.size());
  check.size(out, "out", 0, batch, "B");
  check.size(out, "out", 1, keep_layers ? selected : 1, "Lk, the kept layers");
  check.size(out, "out", 2, keep_heads ? heads : 1, "Hk, the kept heads");
  check.size(out, "out", 3, keep_tokens ? tokens : 1, "Nk, the kept tokens");
  check.size(out, "out", 4, embed, "E");
  if (out.numel() > 0) check.contiguous(out, "out");  // an empty tensor's strides are arbitrary
  check.on_device(values, "values", device);
  check.on_device(attn, "attn", device);
  check.on_device(folded, "folded", device);
  check.on_device(scale, "scale", device);
  check.on_device(out, "out", device);
  check.not_null(values, "values");
  check.not_null(attn, "attn");
  check.not_null(folded, "folded");
  check.not_null(scale, "scale");
  check.not_null(out, "out");
}

}  // namespace vk::attention_decomp
