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
// where a tap index of -1 reads zero. w is either the weight tensor [Gy, Gx, O, C, Ty, Tx] itself, or
// (input gradient) the forward weight [Py, Px, C, O, Kh, Kw] read through the transposed groups'
// (phase, tap) pairs: w[gy, gx, o, c, t, u] = weight[py, px, c, o, ky, kx] with (py, ky) = pairs_y[gy, t]
// and (px, kx) = pairs_x[gx, u], zero for a (-1, -1) padding pair (see WeightSource). For a fixed (gy, gx) the output pixels {i : gy(i) = gy} x
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

// Where gather_gemm reads its weights w[gy, gx, o, c, t, u] (any strides).
template <typename T>
struct WeightSource {
  const T* data;
  index_t stride_y, stride_x, stride_o, stride_c, stride_t, stride_u;
  View<const std::int64_t, 3> pairs_y, pairs_x;  // [Gy, Ty, 2], [Gx, Tx, 2]; unused when !transposed
  index_t phases_y, phases_x, support_y, support_x;
  bool transposed;

  // Element offset of w[gy, gx, 0, 0, t, u], or -1 when that tap is a padding pair (on the device, also
  // for any out-of-range pair entry).
  VK_HOST_DEVICE index_t tap_base(index_t gy, index_t gx, index_t t, index_t u) const {
    index_t py = gy, px = gx, ky = t, kx = u;
    if (transposed) {
      py = pairs_y(gy, t, 0);
      ky = pairs_y(gy, t, 1);
      px = pairs_x(gx, u, 0);
      kx = pairs_x(gx, u, 1);
      if (py < 0 || py >= phases_y || ky < 0 || ky >= support_y || px < 0 || px >= phases_x || kx < 0 ||
          kx >= support_x)
        return -1;
    }
    return py * stride_y + px * stride_x + ky * stride_t + kx * stride_u;
  }
  VK_HOST_DEVICE acc_t<T> load(index_t base, index_t o, index_t c) const {
    return base < 0 ? acc_t<T>(0) : Scalar<T>::load(data[base + o * stride_o + c * stride_c]);
  }
  VK_HOST_DEVICE acc_t<T> at(index_t gy, index_t gx, index_t o, index_t c, index_t t, index_t u) const {
    return load(tap_base(gy, gx, t, u), o, c);
  }
};

// Plain weights [Gy, Gx, O, C, Ty, Tx] when the pairs are empty, else the forward weight
// [Py, Px, C, O, Kh, Kw] through the pairs (kernel output channel o = forward input channel).
template <typename T>
WeightSource<T> make_weight_source(const TensorRef& weight, const TensorRef& pairs_y, const TensorRef& pairs_x) {
  WeightSource<T> source{};
  source.data = static_cast<const T*>(weight.data);
  source.transposed = pairs_y.numel() > 0;
  source.stride_y = weight.strides[0];
  source.stride_x = weight.strides[1];
  source.stride_o = source.transposed ? weight.strides[3] : weight.strides[2];
  source.stride_c = source.transposed ? weight.strides[2] : weight.strides[3];
  source.stride_t = weight.strides[4];
  source.stride_u = weight.strides[5];
  source.phases_y = weight.sizes[0];
  source.phases_x = weight.sizes[1];
  source.support_y = weight.sizes[4];
  source.support_x = weight.sizes[5];
  if (source.transposed) {
    source.pairs_y = make_view<const std::int64_t, 3>(pairs_y);
    source.pairs_x = make_view<const std::int64_t, 3>(pairs_x);
  }
  return source;
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

// The plans must cover the output's spatial size.
inline void check_plans_cover(const ArgCheck& check, const AxisPlan& rows, const AxisPlan& cols, index_t out_h,
                              index_t out_w) {
  VK_CHECK(rows.outputs() == out_h && cols.outputs() == out_w, ErrorKind::Value, check.function(),
           ": arguments 'rows'/'cols' plans cover ", rows.outputs(), " x ", cols.outputs(), " outputs, expected ",
           out_h, " x ", out_w);
}

// A weight-shaped tensor must have the plans' groups and taps; `first` is the dimension of its Gy
// (0, or 1 for the CUDA weight-gradient partial sums).
inline void check_plans_match_weight(const ArgCheck& check, const char* weight_name, const TensorRef& weight, int first,
                                     const AxisPlan& rows, const AxisPlan& cols) {
  VK_CHECK(weight.sizes[first] == rows.groups() && weight.sizes[first + 1] == cols.groups(), ErrorKind::Value,
           check.function(), ": argument '", weight_name, "' must have ", rows.groups(), " x ", cols.groups(),
           " groups (phases) in dimensions ", first, " and ", first + 1, ", got shape ", weight.shape_string());
  VK_CHECK(weight.sizes[first + 4] == rows.taps_per_output() && weight.sizes[first + 5] == cols.taps_per_output(),
           ErrorKind::Value, check.function(), ": argument '", weight_name, "' must have ", rows.taps_per_output(),
           " x ", cols.taps_per_output(), " taps in dimensions ", first + 4, " and ", first + 5, ", got shape ",
           weight.shape_string());
}

// Checks shared by the CPU and CUDA entry points of gather_gemm.
//   input [B, C, H, W]; bias [O] or empty; out [B, O, Hout, Wout] contiguous;
//   weight [Gy, Gx, O, C, Ty, Tx] with empty pairs, or [Py, Px, C, O, Kh, Kw] with pairs [G, T, 2].
inline void check_gather_gemm_arguments(const ArgCheck& check, const TensorRef& input, const TensorRef& weight,
                                        const TensorRef& bias, const TensorRef& pairs_y, const TensorRef& pairs_x,
                                        const TensorRef& out, int device) {
  const bool transposed = pairs_y.numel() > 0 || pairs_x.numel() > 0;
  check.rank(input, "input", 4, "[B, C, H, W]");
  check.rank(weight, "weight", 6, transposed ? "[Py, Px, C, O, Kh, Kw]" : "[Gy, Gx, O, C, Ty, Tx]");
  check.rank(out, "out", 4, "[B, O, Hout, Wout]");
  check.floating(input, "input");
  check.same_dtype(input, "input", weight, "weight");
  check.same_dtype(input, "input", out, "out");
  check.size(weight, "weight", transposed ? 2 : 3, input.sizes[1], "C, the channels of input");
  check.size(out, "out", 0, input.sizes[0], "B");
  check.size(out, "out", 1, weight.sizes[transposed ? 3 : 2], "O, the output channels of weight");
  if (out.numel() > 0) check.contiguous(out, "out");
  if (bias.numel() > 0 || bias.ndim != 1) {
    check.rank(bias, "bias", 1, "[O]");
    check.same_dtype(input, "input", bias, "bias");
    check.size(bias, "bias", 0, out.sizes[1], "O");
    check.on_device(bias, "bias", device);
  }
  if (transposed) {
    check.rank(pairs_y, "row_pairs", 3, "[Gy, Ty, 2]");
    check.rank(pairs_x, "col_pairs", 3, "[Gx, Tx, 2]");
    check.dtype(pairs_y, "row_pairs", {DType::Int64});
    check.dtype(pairs_x, "col_pairs", {DType::Int64});
    check.size(pairs_y, "row_pairs", 2, 2, "(phase, tap)");
    check.size(pairs_x, "col_pairs", 2, 2, "(phase, tap)");
    check.on_device(pairs_y, "row_pairs", device);
    check.on_device(pairs_x, "col_pairs", device);
    check.not_null(pairs_y, "row_pairs");
    check.not_null(pairs_x, "col_pairs");
  }
  check.on_device(input, "input", device);
  check.on_device(weight, "weight", device);
  check.on_device(out, "out", device);
  check.not_null(input, "input");
  check.not_null(weight, "weight");
  check.not_null(out, "out");
}

// The weight (or, transposed, the pairs tables) must match the plans' groups and taps.
inline void check_weight_matches(const ArgCheck& check, const TensorRef& weight, const TensorRef& pairs_y,
                                 const TensorRef& pairs_x, const AxisPlan& rows, const AxisPlan& cols) {
  if (pairs_y.numel() == 0) {
    check_plans_match_weight(check, "weight", weight, 0, rows, cols);
    return;
  }
  VK_CHECK(pairs_y.sizes[0] == rows.groups() && pairs_y.sizes[1] == rows.taps_per_output() &&
               pairs_x.sizes[0] == cols.groups() && pairs_x.sizes[1] == cols.taps_per_output(),
           ErrorKind::Value, check.function(), ": arguments 'row_pairs'/'col_pairs' must have shapes [",
           rows.groups(), ", ", rows.taps_per_output(), ", 2] and [", cols.groups(), ", ", cols.taps_per_output(),
           ", 2], got ", pairs_y.shape_string(), " and ", pairs_x.shape_string());
}

// Host-side validation of the pairs tables: (phase, tap) within the forward weight's phases and support,
// or (-1, -1).
inline void validate_pairs(const ArgCheck& check, const char* name, const TensorRef& pairs, index_t phases,
                           index_t support) {
  const auto view = make_view<const std::int64_t, 3>(pairs);
  for (index_t g = 0; g < pairs.sizes[0]; ++g)
    for (index_t t = 0; t < pairs.sizes[1]; ++t) {
      const index_t p = view(g, t, 0), k = view(g, t, 1);
      const bool padding = p == -1 && k == -1;
      VK_CHECK(padding || (p >= 0 && p < phases && k >= 0 && k < support), ErrorKind::Value, check.function(),
               ": argument '", name, "' entry [", g, ", ", t, "] = (", p, ", ", k, ") is outside [0, ", phases,
               ") x [0, ", support, ") and not (-1, -1)");
    }
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
  if (grad_weight.numel() > 0) check.contiguous(grad_weight, "grad_weight");
  check.on_device(grad, "grad", device);
  check.on_device(input, "input", device);
  check.on_device(grad_weight, "grad_weight", device);
  check.not_null(grad, "grad");
  check.not_null(input, "input");
  check.not_null(grad_weight, "grad_weight");
}

}  // namespace vk::cc_conv
