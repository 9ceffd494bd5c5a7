// Second-order effects of MLP neurons (Gandelsman, Efros, Steinhardt, 2024): the arithmetic shared by the
// CPU loop and the CUDA kernels.
//
// A neuron n of an MLP layer writes act[b, t, n] * w_n into the residual stream at every token t. Its
// second-order effect is what that write contributes to the image embedding through the values of the
// attention heads of the later layers, with the attention weights and every LayerNorm linearized at the
// statistics of the actual forward pass. It factorizes into per-image coefficients times image-independent
// directions (one per later (layer, head) pair p = (l_s, h) and neuron):
//
//   coef[b, p, n]  = scale[b] * sum_t attn[b, l_s, h, t] / ln_std[b, l_s, t] * act[b, t, n]
//   out[b, n, :]   = sum_p coef[b, p, n] * directions[s, h, n, :] + offset[b, :]
//
//   attn       [B, L, H, N]    class-token attention rows A[l, h, 0, :] of every layer
//   ln_std     [B, L, N]       sqrt(var + eps) of the residual stream entering each layer's ln_1
//   act        [B, N, Nn]      the neurons' activations (after the non-linearity) at every token
//   directions [S, H, Nn, E]   (W_V^h diag(gamma_1) C w_n) @ M[l_s, h] for the listed later layers
//   scale      [B]             1 / std(r_b) of the final residual (divided by |z_b| when normalizing)
//   offset     [B, E]          optional vector added to every neuron's effect (the even-split shares)
//
// `layers` lists the S later layers l_s whose heads carry the effect. Accumulation is float (double for
// float64 inputs); the output [B, Nn, E] may have another floating dtype. No per-token or per-(neuron,
// width) tensor is formed: the only large array is the output.
#pragma once

#include <vector>

#include "../common/checks.h"
#include "../common/defs.h"
#include "../common/tensor.h"

namespace vk::second_order {

constexpr int kMaxLayers = 256;  // later-layer indices passed by value to CUDA kernels

// The weight of token t in a head's class-token output, pulled back through ln_1: A[l, h, 0, t] / std[l, t].
template <typename A>
VK_HOST_DEVICE VK_FORCE_INLINE A token_weight(A attention, A std) {
  return attention / std;
}

// accumulator + a * b (one multiply-add of either contraction).
template <typename A>
VK_HOST_DEVICE VK_FORCE_INLINE A accumulate(A accumulator, A a, A b) {
  return accumulator + a * b;
}

// Sizes of one call. Pair p = s * heads + h is (layer list entry s, head h).
struct Shape {
  index_t batch = 0, layers = 0, heads = 0, tokens = 0, neurons = 0, embed = 0, selected = 0;
  VK_HOST_DEVICE index_t pairs() const { return selected * heads; }
};

inline Shape make_shape(const TensorRef& attn, const TensorRef& activations, const TensorRef& directions,
                        const std::vector<index_t>& layers) {
  Shape shape;
  shape.batch = attn.sizes[0];
  shape.layers = attn.sizes[1];
  shape.heads = attn.sizes[2];
  shape.tokens = attn.sizes[3];
  shape.neurons = activations.sizes[2];
  shape.embed = directions.sizes[3];
  shape.selected = static_cast<index_t>(layers.size());
  return shape;
}

// The checks both entry points run (the Python layer runs the same ones first).
inline void check_second_order_arguments(const ArgCheck& check, const TensorRef& attn, const TensorRef& ln_std,
                                         const TensorRef& activations, const TensorRef& directions,
                                         const TensorRef& scale, const TensorRef* offset,
                                         const std::vector<index_t>& layers, const TensorRef& out, int device) {
  check.rank(attn, "attn", 4, "[B, L, H, N]");
  check.rank(ln_std, "ln_std", 3, "[B, L, N]");
  check.rank(activations, "activations", 3, "[B, N, Nn]");
  check.rank(directions, "directions", 4, "[S, H, Nn, E]");
  check.rank(scale, "scale", 1, "[B]");
  check.rank(out, "out", 3, "[B, Nn, E]");
  check.floating(attn, "attn");
  check.same_dtype(attn, "attn", ln_std, "ln_std");
  check.same_dtype(attn, "attn", activations, "activations");
  check.same_dtype(attn, "attn", directions, "directions");
  check.same_dtype(attn, "attn", scale, "scale");
  check.floating(out, "out");
  const index_t batch = attn.sizes[0], num_layers = attn.sizes[1], heads = attn.sizes[2], tokens = attn.sizes[3];
  const index_t neurons = activations.sizes[2], embed = directions.sizes[3];
  check.size(ln_std, "ln_std", 0, batch, "B, the batch of attn");
  check.size(ln_std, "ln_std", 1, num_layers, "L, the layers of attn");
  check.size(ln_std, "ln_std", 2, tokens, "N, the tokens of attn");
  check.size(activations, "activations", 0, batch, "B, the batch of attn");
  check.size(activations, "activations", 1, tokens, "N, the tokens of attn");
  check.size(directions, "directions", 0, static_cast<index_t>(layers.size()), "S, the number of listed layers");
  check.size(directions, "directions", 1, heads, "H, the heads of attn");
  check.size(directions, "directions", 2, neurons, "Nn, the neurons of activations");
  check.size(scale, "scale", 0, batch, "B, the batch of attn");
  if (offset != nullptr) {
    check.rank(*offset, "offset", 2, "[B, E]");
    check.same_dtype(attn, "attn", *offset, "offset");
    check.size(*offset, "offset", 0, batch, "B, the batch of attn");
    check.size(*offset, "offset", 1, embed, "E, the embedding size of directions");
    check.on_device(*offset, "offset", device);
    check.not_null(*offset, "offset");
  }
  VK_CHECK(static_cast<index_t>(layers.size()) <= kMaxLayers, ErrorKind::Value, check.function(),
           ": argument 'layers' must list at most ", kMaxLayers, " layers, got ", layers.size());
  for (std::size_t k = 0; k < layers.size(); ++k)
    VK_CHECK(layers[k] >= 0 && layers[k] < num_layers, ErrorKind::Index, check.function(),
             ": argument 'layers' must hold layer indices in [0, ", num_layers, "), got ", layers[k], " at position ",
             k);
  check.size(out, "out", 0, batch, "B");
  check.size(out, "out", 1, neurons, "Nn");
  check.size(out, "out", 2, embed, "E");
  check.contiguous(out, "out");
  check.on_device(attn, "attn", device);
  check.on_device(ln_std, "ln_std", device);
  check.on_device(activations, "activations", device);
  check.on_device(directions, "directions", device);
  check.on_device(scale, "scale", device);
  check.on_device(out, "out", device);
  check.not_null(attn, "attn");
  check.not_null(ln_std, "ln_std");
  check.not_null(activations, "activations");
  check.not_null(directions, "directions");
  check.not_null(scale, "scale");
  check.not_null(out, "out");
}

}  // namespace vk::second_order
