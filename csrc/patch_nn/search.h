// Exact patch search: the rigorous screening bounds and the checks of patch_nn's entry points.
//
// Screening (the fast path): ||q - k||^2 = |q|^2 + |k|^2 - 2 q.k with q.k from a float32 GEMM
// (float64 for float64 inputs). ScreenBounds below turns the worst-case rounding error of that
// form into a rigorous lower bound of ssd, so a key is skipped only when it provably cannot beat
// the current best; every other key is re-scored in the exact arithmetic above.
#pragma once

#include "patch.h"

namespace vk::patch_nn {

// ---------------------------------------------------------------- rigorous screening bounds

template <typename S>
struct Precision;
template <>
struct Precision<float> {
  static constexpr double unit = 0x1p-24;      // unit roundoff
  static constexpr double smallest = 0x1p-126; // smallest normal (covers flush-to-zero too)
};
template <>
struct Precision<double> {
  static constexpr double unit = 0x1p-53;
  static constexpr double smallest = 0x1p-1022;
};

VK_HOST_DEVICE inline double gamma_factor(double steps, double unit) { return steps * unit / (1.0 - steps * unit); }

// Round a float64 value down/up to the screening type S.
template <typename S>
VK_HOST_DEVICE inline S round_down(double x) {
  if constexpr (std::is_same_v<S, double>) {
    return x;
  } else {
    float f = static_cast<float>(x);
    if (static_cast<double>(f) > x) f = nextafterf(f, -INFINITY);
    return f;
  }
}
template <typename S>
VK_HOST_DEVICE inline S round_up(double x) {
  if constexpr (std::is_same_v<S, double>) {
    return x;
  } else {
    float f = static_cast<float>(x);
    if (static_cast<double>(f) < x) f = nextafterf(f, INFINITY);
    return f;
  }
}

// Error analysis of the screening value, for a dot product g = fl(q.k) accumulated in S over
// `depth` terms (any order, fused or not: |g - q.k| <= gamma_{depth+1} sum |q_d k_d|):
//   af(k) = round_down((1 - c_key) |k|^2_lo)                 per key
//   v     = fl(af(k) - 2 g)                                  one rounding (an FMA)
//   then  ssd_real(q, k) >= v + (1 - c_query) |q|^2 - eta,   with |q|^2, |k|^2 computed in float64
// (because 2 sum|q_d k_d| <= |q|^2 + |k|^2), and the exact arithmetic satisfies
//   ssd(q, k) >= ssd_real(q, k) (1 - delta).
// Skipping k when v > threshold(...) is therefore exact: k cannot beat the current best.
struct ScreenBounds {
  double c_key;     // relative slack on |k|^2
  double c_query;   // relative slack on |q|^2
  double eta;       // absolute slack: underflow of products and sums
  double delta;     // relative error of the exact (float64) ssd against the real value
  double norm_lo;   // |x|^2 computed in float64 (and scaled) is at least the real value times norm_lo
  double unit;      // unit roundoff of S

  template <typename S>
  VK_HOST_DEVICE static ScreenBounds make(index_t depth) {
    ScreenBounds b;
    b.unit = Precision<S>::unit;
    const double gamma = gamma_factor(static_cast<double>(depth + 1), b.unit);
    b.c_key = gamma + 3.0 * b.unit;
    b.c_query = gamma + 2.0 * b.unit;
    b.eta = 4.0 * static_cast<double>(depth + 4) * Precision<S>::smallest;
    b.delta = gamma_factor(static_cast<double>(depth + 3), 0x1p-53);
    b.norm_lo = 1.0 - gamma_factor(static_cast<double>(2 * depth + 8), 0x1p-53);
    return b;
  }

  // af(k) from |k|^2 computed in float64.
  template <typename S>
  VK_HOST_DEVICE S key_offset(double key_norm) const {
    return round_down<S>(key_norm * norm_lo * (1.0 - c_key));
  }
  // The per-query lower-bound term (1 - c_query) |q|^2 - eta, in float64.
  VK_HOST_DEVICE double query_term(double query_norm) const { return query_norm * norm_lo * (1.0 - c_query) - eta; }

  // Plain search: skip k when v > threshold, i.e. ssd(q, k) > best_ssd is certain.
  template <typename S>
  VK_HOST_DEVICE S plain_threshold(double best_ssd, double query_term_value) const {
    if (!(best_ssd < INFINITY)) return static_cast<S>(INFINITY);
    const double t = best_ssd * (1.0 + 2.0 * delta + 0x1p-50) - query_term_value +
                     0x1p-50 * (best_ssd + std::fabs(query_term_value));
    return round_up<S>(t);
  }
  // Normalized search: with z = fl(fl(v + round_down(query_term)) * round_down(w(k))), skip k when
  // z > threshold, i.e. S(q, k) = fl(ssd * w(k)) > best_score is certain.
  template <typename S>
  VK_HOST_DEVICE S weighted_threshold(double best_score) const {
    if (!(best_score < INFINITY)) return static_cast<S>(INFINITY);
    const double t = best_score * (1.0 + 3.0 * unit + 2.0 * delta + 0x1p-50);
    const S r = round_up<S>(t);
    // z saturates at the largest finite value: never skip against thresholds that high.
    return (static_cast<double>(r) >= 0.25 * static_cast<double>(std::numeric_limits<S>::max()))
               ? static_cast<S>(INFINITY)
               : r;
  }
  // Upper bound of ssd(q, k) from the screening value v of a plain search (the same analysis run the
  // other way): ssd(q, k) <= (v + (1 + c_key) |q|^2 + 3 c_key |k|^2 + eta) (1 + delta), with the
  // float64 norms inflated by their own rounding. Lets a candidate tighten the threshold before it
  // is re-scored exactly.
  VK_HOST_DEVICE double upper_ssd(double v, double query_norm, double key_norm) const {
    const double inflate = 1.0 + 2.0 * (1.0 - norm_lo);
    const double bound = v + query_norm * inflate * (1.0 + c_key) + 3.0 * c_key * key_norm * inflate + eta;
    return bound * (1.0 + delta) * (1.0 + 0x1p-50) + 0x1p-1000;
  }

  template <typename S>
  VK_HOST_DEVICE static S key_weight(double weight) {
    return round_down<S>(weight);
  }
};

// Checks both entry points of patch_nn run (the Python layer runs the same ones first).
inline void check_patch_nn_arguments(const ArgCheck& check, const TensorRef& queries, const TensorRef& keys,
                                     const TensorRef& query_mask, const TensorRef& key_mask, index_t pt, index_t ph,
                                     index_t pw, const TensorRef& out_index, const TensorRef& out_distance,
                                     int device) {
  check_search_inputs(check, queries, keys, query_mask, key_mask, pt, ph, pw);
  const PatchLayout lq = make_layout(queries, pt, ph, pw);
  check_grid_tensor(check, out_index, "out_index", lq, "(the query patch grid)");
  check_grid_tensor(check, out_distance, "out_distance", lq, "(the query patch grid)");
  check.dtype(out_index, "out_index", {DType::Int64});
  check.dtype(out_distance, "out_distance", {queries.dtype == DType::Float64 ? DType::Float64 : DType::Float32});
  check_devices(check, {&queries, &keys, &query_mask, &key_mask, &out_index, &out_distance}, device);
  check.contiguous(out_index, "out_index");
  check.contiguous(out_distance, "out_distance");
}

}  // namespace vk::patch_nn
