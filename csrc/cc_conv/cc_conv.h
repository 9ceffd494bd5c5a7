// Continuous convolution (DESIGN.md 2.4): the gather-GEMM shared by the CPU loops and the CUDA kernels.
//
// Both kernels of the family run on per-axis integer plans built by vision_kernels/ops/cc_conv_grid.py
// from the centred grid x(i) = i / s + (n_in - 1) / 2 - (n_out - 1) / (2 s):
//
//   taps    [n_out, T]  input index read by tap t of output index i, -1 for a zero (padding) tap
//   group   [n_out]     the weight group output i uses (its phase in the forward plan)
//   order   [n_out]     the output indices sorted by group
//   offsets [G + 1]     group g holds order[offsets[g] .. offsets[g + 1])
//
// gather_gemm (forward, and the gradient to the input with the transposed plans):
//
//   out[b, o, i, j] = bias[o] + sum_{c, t, u} w[gy(i), gx(j), o, c, t, u] * in[b, c, ty(i, t), tx(j, u)]
//
// where a tap index of -1 reads zero. For a fixed (gy, gx) the output pixels {i : gy(i) = gy} x
// {j : gx(j) = gx} share one weight matrix [O, C * T * U], so the sum is a GEMM whose right-hand
// side (the im2col columns) is gathered on the fly from the input: no im2col buffer is stored.
//
// weight_grad (gradient to the per-group weights):
//
//   gw[gy, gx, o, c, t, u] = sum_b sum_{i in gy, j in gx} grad[b, o, i, j] * in[b, c, ty(i, t), tx(j, u)]
//
// The reduction dimension k = (c * T + t) * U + u orders the weight's last three axes.
#pragma once

#include <cstdint>

#include "../common/checks.h"
#include "../common/defs.h"
#include "../common/dtype.h"
#include "../common/tensor.h"

namespace vk::cc_conv {

// One axis' plan as the kernels read it (int64 tables, any strides).
struct AxisPlan {
  View<const std::int64_t, 2> taps;     // [n_out, T]
  View<const std::int64_t, 1> group;    // [n_out]
  View<const std::int64_t, 1> order;    // [n_out]
  View<const std::int64_t, 1> offsets;  // [G + 1]

  VK_HOST_DEVICE index_t outputs() const { return taps.size[0]; }
  VK_HOST_DEVICE index_t taps_per_output() const { return taps.size[1]; }
  VK_HOST_DEVICE index_t groups() const { return offsets.size[0] - 1; }
  VK_HOST_DEVICE index_t group_begin(index_t g) const { return offsets(g); }
  VK_HOST_DEVICE index_t group_size(index_t g) const { return offsets(g + 1) - offsets(g); }
  // The n-th output index of group g (n < group_size(g)).
  VK_HOST_DEVICE index_t member(index_t g, index_t n) const { return order(offsets(g) + n); }
};

inline AxisPlan make_plan(const TensorRef& taps, const TensorRef& group, const TensorRef& order,
                          const TensorRef& offsets) {
  return AxisPlan{make_view<const std::int64_t, 2>(taps), make_view<const std::int64_t, 1>(group),
                  make_view<const std::int64_t, 1>(order), make_view<const std::int64_t, 1>(offsets)};
}

// Split of the reduction index k = (c * T + t) * U + u.
struct Tap {
  index_t channel, t, u;
};
VK_HOST_DEVICE VK_FORCE_INLINE Tap split_reduction(index_t k, index_t taps_y, index_t taps_x) {
  const index_t u = k % taps_x;
  const index_t rest = k / taps_x;
  return Tap{rest / taps_y, rest % taps_y, u};
}

// in[b, c, y, x] as the accumulation type, zero for a padding tap (-1) or an index out of range (the
// CUDA kernels cannot validate device-side tables before launch, so every read is bounds-checked).
template <typename T>
VK_HOST_DEVICE VK_FORCE_INLINE acc_t<T> gather(const View<const T, 4>& in, index_t b, index_t c, index_t y,
                                               index_t x) {
  return (y >= 0 && y < in.size[2] && x >= 0 && x < in.size[3]) ? Scalar<T>::load(in(b, c, y, x)) : acc_t<T>(0);
}

// ---------------------------------------------------------------- argument checks

inline void check_plan(const ArgCheck& check, const char* axis, const TensorRef& taps, const TensorRef& group,
                       const TensorRef& order, const TensorRef& offsets, index_t outputs, int device) {
  const std::string prefix(axis);
  const std::string taps_name = prefix + "_taps", group_name = prefix + "_group", order_name = prefix + "_order",
                    offsets_name = prefix + "_offsets";
  check.rank(taps, taps_name.c_str(), 2, "[n_out, T]");
  check.rank(group, group_name.c_str(), 1, "[n_out]");
  check.rank(order, order_name.c_str(), 1, "[n_out]");
  check.rank(offsets, offsets_name.c_str(), 1, "[G + 1]");
  check.dtype(taps, taps_name.c_str(), {DType::Int64});
  check.dtype(group, group_name.c_str(), {DType::Int64});
  check.dtype(order, order_name.c_str(), {DType::Int64});
  check.dtype(offsets, offsets_name.c_str(), {DType::Int64});
  check.size(taps, taps_name.c_str(), 0, outputs, "n_out");
  check.at_least(taps, taps_name.c_str(), 1, 1, "T, taps per output");
  check.size(group, group_name.c_str(), 0, outputs, "n_out");
  check.size(order, order_name.c_str(), 0, outputs, "n_out");
  check.at_least(offsets, offsets_name.c_str(), 0, 2, "G + 1, at least one group");
  check.not_null(taps, taps_name.c_str());
  check.not_null(group, group_name.c_str());
  check.not_null(order, order_name.c_str());
  check.not_null(offsets, offsets_name.c_str());
  check.on_device(taps, taps_name.c_str(), device);
  check.on_device(group, group_name.c_str(), device);
  check.on_device(order, order_name.c_str(), device);
  check.on_device(offsets, offsets_name.c_str(), device);
}

// Host-side validation of a plan's values (CPU entry points): taps in [-1, n_in), groups in [0, G),
// offsets from 0 to n_out and non-decreasing, order listing each group's outputs.
inline void validate_plan_values(const ArgCheck& check, const char* axis, const AxisPlan& plan, index_t n_in) {
  const index_t n_out = plan.outputs(), groups = plan.groups();
  auto fail = [&](const std::string& what) {
    vk::fail(ErrorKind::Value, str(check.function(), ": argument '", axis, "' plan is inconsistent: ", what));
  };
  for (index_t i = 0; i < n_out; ++i) {
    for (index_t t = 0; t < plan.taps_per_output(); ++t) {
      const index_t tap = plan.taps(i, t);
      if (tap < -1 || tap >= n_in) fail(str("taps[", i, ", ", t, "] = ", tap, " is outside [-1, ", n_in, ")"));
    }
    const index_t g = plan.group(i);
    if (g < 0 || g >= groups) fail(str("group[", i, "] = ", g, " is outside [0, ", groups, ")"));
  }
  if (plan.offsets(0) != 0 || plan.offsets(groups) != n_out) fail("offsets must run from 0 to n_out");
  for (index_t g = 0; g < groups; ++g) {
    if (plan.offsets(g + 1) < plan.offsets(g)) fail("offsets must be non-decreasing");
    for (index_t n = plan.offsets(g); n < plan.offsets(g + 1); ++n) {
      const index_t i = plan.order(n);
      if (i < 0 || i >= n_out || plan.group(i) != g) fail(str("order[", n, "] = ", i, " is not an output of group ", g));
    }
  }
}

// Checks shared by the CPU and CUDA entry points of gather_gemm.
//   input [B, C, H, W]; weight [Gy, Gx, O, C, Ty, Tx] contiguous; bias [O] or empty; out [B, O, Hout, Wout].
inline void check_gather_gemm_arguments(const ArgCheck& check, const TensorRef& input, const TensorRef& weight,
                                        const TensorRef& bias, const TensorRef& out, int device) {
  check.rank(input, "input", 4, "[B, C, H, W]");
  check.rank(weight, "weight", 6, "[Gy, Gx, O, C, Ty, Tx]");
  check.rank(out, "out", 4, "[B, O, Hout, Wout]");
  check.floating(input, "input");
  check.same_dtype(input, "input", weight, "weight");
  check.same_dtype(input, "input", out, "out");
  check.size(weight, "weight", 3, input.sizes[1], "C, the channels of input");
  check.size(out, "out", 0, input.sizes[0], "B");
  check.size(out, "out", 1, weight.sizes[2], "O, the output channels of weight");
  check.contiguous(weight, "weight");
  check.contiguous(out, "out");
  if (bias.numel() > 0 || bias.ndim != 1) {
    check.rank(bias, "bias", 1, "[O]");
    check.same_dtype(input, "input", bias, "bias");
    check.size(bias, "bias", 0, weight.sizes[2], "O");
    check.on_device(bias, "bias", device);
  }
  check.on_device(input, "input", device);
  check.on_device(weight, "weight", device);
  check.on_device(out, "out", device);
  check.not_null(input, "input");
  check.not_null(weight, "weight");
  check.not_null(out, "out");
}

// The plans must match the output's spatial size and the weight's groups and taps; `first` is the
// dimension of the weight's Gy (0, or 1 for the CUDA weight-gradient workspace with partial sums first).
inline void check_plans_match(const ArgCheck& check, const char* weight_name, const TensorRef& weight, int first,
                              const AxisPlan& rows, const AxisPlan& cols, index_t out_h, index_t out_w) {
  VK_CHECK(rows.outputs() == out_h && cols.outputs() == out_w, ErrorKind::Value, check.function(),
           ": arguments 'rows'/'cols' plans cover ", rows.outputs(), " x ", cols.outputs(), " outputs, expected ",
           out_h, " x ", out_w);
  VK_CHECK(weight.sizes[first] == rows.groups() && weight.sizes[first + 1] == cols.groups(), ErrorKind::Value,
           check.function(), ": argument '", weight_name, "' must have ", rows.groups(), " x ", cols.groups(),
           " groups (phases) in dimensions ", first, " and ", first + 1, ", got shape ", weight.shape_string());
  VK_CHECK(weight.sizes[first + 4] == rows.taps_per_output() && weight.sizes[first + 5] == cols.taps_per_output(),
           ErrorKind::Value, check.function(), ": argument '", weight_name, "' must have ", rows.taps_per_output(),
           " x ", cols.taps_per_output(), " taps in dimensions ", first + 4, " and ", first + 5, ", got shape ",
           weight.shape_string());
}

// Checks shared by the CPU and CUDA entry points of weight_grad.
//   grad [B, O, Hout, Wout]; input [B, C, H, W];
//   grad_weight [Gy, Gx, O, C, Ty, Tx] contiguous, of the input's dtype (CPU), or
//   [S, Gy, Gx, O, C, Ty, Tx] of the accumulation dtype (CUDA: S partial sums over pixel ranges).
inline void check_weight_grad_arguments(const ArgCheck& check, const TensorRef& grad, const TensorRef& input,
                                        const TensorRef& grad_weight, int device, bool split_sums) {
  check.rank(grad, "grad", 4, "[B, O, Hout, Wout]");
  check.rank(input, "input", 4, "[B, C, H, W]");
  const int first = split_sums ? 1 : 0;
  check.rank(grad_weight, "grad_weight", 6 + first, split_sums ? "[S, Gy, Gx, O, C, Ty, Tx]" : "[Gy, Gx, O, C, Ty, Tx]");
  check.floating(input, "input");
  check.same_dtype(input, "input", grad, "grad");
  if (split_sums) {
    check.dtype(grad_weight, "grad_weight", {input.dtype == DType::Float64 ? DType::Float64 : DType::Float32});
    check.at_least(grad_weight, "grad_weight", 0, 1, "S, the number of partial sums");
  } else {
    check.same_dtype(input, "input", grad_weight, "grad_weight");
  }
  check.size(grad, "grad", 0, input.sizes[0], "B");
  check.size(grad_weight, "grad_weight", 2 + first, grad.sizes[1], "O");
  check.size(grad_weight, "grad_weight", 3 + first, input.sizes[1], "C");
  check.contiguous(grad_weight, "grad_weight");
  check.on_device(grad, "grad", device);
  check.on_device(input, "input", device);
  check.on_device(grad_weight, "grad_weight", device);
  check.not_null(grad, "grad");
  check.not_null(input, "input");
  check.not_null(grad_weight, "grad_weight");
}

}  // namespace vk::cc_conv
