// Native entry points of the second_order family, declared once for both devices: one argument list,
// workspace and stream last on the CUDA twin. Bound by bind_cpu.cpp / bind_cuda.cpp with VK_BIND_OP; called
// by vision_kernels/ops/second_order.py with prepare's native arguments.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "../common/tensor.h"

namespace vk::second_order {

// out[b, n] = sum_(s,h) coef[b, s, h, n] directions[s, h, n] + offset[b] (see second_order.h).
// attn [B, L, H, N], ln_std [B, L, N], activations [B, N, Nn], directions [S, H, Nn, E], scale [B],
// offset [B, E] or None, all of one floating dtype with any strides; out [B, Nn, E] contiguous, any
// floating dtype. `layers` lists the S later layers (indices into L) whose heads carry the effect.
#define VK_SECOND_ORDER_EFFECTS_ARGS                                                                            \
  const TensorRef &attn, const TensorRef &ln_std, const TensorRef &activations, const TensorRef &directions,    \
      const TensorRef &scale, const std::optional<TensorRef> &offset, const std::vector<index_t> &layers,       \
      const TensorRef &out

void second_order_effects_cpu(VK_SECOND_ORDER_EFFECTS_ARGS);
// workspace: contiguous [B, S * H, Nn] of the accumulation dtype (float32, float64 for float64 inputs) on
// the inputs' device, receiving the per-image coefficients.
void second_order_effects_cuda(VK_SECOND_ORDER_EFFECTS_ARGS, const TensorRef &workspace, std::uintptr_t stream);

}  // namespace vk::second_order
