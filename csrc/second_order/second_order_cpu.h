#pragma once

#include <vector>

#include "../common/tensor.h"

namespace vk::second_order {

// CPU kernel of vision_kernels.second_order_effects (see second_order.h for the equation).
// attn [B, L, H, N], ln_std [B, L, N], activations [B, N, Nn], directions [S, H, Nn, E], scale [B],
// offset [B, E] or nullptr, all of one floating dtype with any strides; out [B, Nn, E] contiguous, any
// floating dtype. `layers` lists the S later layers (indices into L) whose heads carry the effect.
void second_order_effects_cpu(const TensorRef& attn, const TensorRef& ln_std, const TensorRef& activations,
                              const TensorRef& directions, const TensorRef& scale, const TensorRef* offset,
                              const std::vector<index_t>& layers, const TensorRef& out);

}  // namespace vk::second_order
