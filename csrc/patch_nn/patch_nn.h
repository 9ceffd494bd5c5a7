// Space-time patch nearest neighbours: the arithmetic shared by the CPU loops and the CUDA kernels.
//
// Inputs are [T, H, W, C] arrays (an image is T = 1) read through their strides; a patch of size
// (pt, ph, pw) at grid position (t, y, x) holds the n = pt * ph * pw * C values
// x[t + dt, y + dy, x + dx, c] in the order (dt, dy, dx, c). Patch positions form the grid
// [T - pt + 1, H - ph + 1, W - pw + 1] and are numbered row-major (the "flat index").
//
// The exact arithmetic (what "equal to the reference" means):
//   ssd(q, k) = sum over the n elements, in patch order, of (q_e - k_e)^2, every element converted
//               to float64 (exactly), each subtraction, square and addition rounded to float64
//               (never fused), accumulated left to right from 0.
//   D(q, k)   = ssd(q, k) / n (float64), the mean squared difference reported as the distance.
//   alpha = None: best(q) = argmin over valid keys of ssd(q, k).
//   alpha > 0:    m(k) = min over valid queries of ssd(q, k); den(k) = (alpha * n) + m(k);
//                 w(k) = 1 / den(k); S(q, k) = ssd(q, k) * w(k) (each step rounded to float64, in
//                 that order); best(q) = argmin over valid keys of S(q, k) ~ D / (alpha + min_q D).
//   Ties: the lowest flat key index wins.
//
// Screening (the fast path): ||q - k||^2 = |q|^2 + |k|^2 - 2 q.k with q.k from a float32 GEMM
// (float64 for float64 inputs). ScreenBounds below turns the worst-case rounding error of that
// form into a rigorous lower bound of ssd, so a key is skipped only when it provably cannot beat
// the current best; every other key is re-scored in the exact arithmetic above.
#pragma once

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>
#include <type_traits>

#include "../common/checks.h"
#include "../common/defs.h"
#include "../common/dtype.h"
#include "../common/tensor.h"

// The exact arithmetic must never be contracted into fused multiply-adds. GCC contracts by default
// (also with -std=c++17), so host functions computing it carry this attribute; device code uses the
// explicitly rounded intrinsics (__dadd_rn, ...), which nvcc never fuses.
#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define VK_NO_CONTRACT __attribute__((optimize("fp-contract=off")))
#else
#define VK_NO_CONTRACT
#endif

// Device functions are force-inlined: an out-of-line call makes ptxas save registers to local memory.
#if defined(__CUDACC__)
#define VK_DEVICE_INLINE __forceinline__
#else
#define VK_DEVICE_INLINE
#endif

namespace vk::patch_nn {

// ---------------------------------------------------------------- geometry

// Quotient and remainder of grid coordinates. Device code divides in 32 bits (a 64-bit division is
// a slow subroutine on GPUs that costs register spills); the CUDA entry points check that every
// patch grid has fewer than 2^31 positions. Host code divides in 64 bits.
VK_HOST_DEVICE VK_FORCE_INLINE index_t grid_div(index_t a, index_t b) {
#if defined(__CUDA_ARCH__)
  return static_cast<index_t>(static_cast<unsigned>(a) / static_cast<unsigned>(b));
#else
  return a / b;
#endif
}
VK_HOST_DEVICE VK_FORCE_INLINE index_t grid_mod(index_t a, index_t b) {
#if defined(__CUDA_ARCH__)
  return static_cast<index_t>(static_cast<unsigned>(a) % static_cast<unsigned>(b));
#else
  return a % b;
#endif
}
constexpr index_t kMaxCudaGrid = (index_t(1) << 31) - 1;

// How one [T, H, W, C] input is read patch by patch: patch size, channels, element strides, grid.
struct PatchLayout {
  index_t pt, ph, pw, channels;
  index_t stride_t, stride_h, stride_w, stride_c;  // element strides of the input
  index_t grid_t, grid_h, grid_w;                  // number of patch positions along t, y, x

  VK_HOST_DEVICE index_t grid_size() const { return grid_t * grid_h * grid_w; }
  VK_HOST_DEVICE index_t depth() const { return pt * ph * pw * channels; }
  // Element offset of the first value of the patch at flat grid index `flat`.
  VK_HOST_DEVICE index_t offset(index_t flat) const {
    const index_t x = grid_mod(flat, grid_w);
    const index_t rest = grid_div(flat, grid_w);
    return grid_div(rest, grid_h) * stride_t + grid_mod(rest, grid_h) * stride_h + x * stride_w;
  }
};

// Element offset, relative to the patch start, of element e (in patch order (dt, dy, dx, c)).
VK_HOST_DEVICE inline index_t element_offset(const PatchLayout& l, int e) {
  const int channels = static_cast<int>(l.channels), pw = static_cast<int>(l.pw), ph = static_cast<int>(l.ph);
  const int c = e % channels;
  int rest = e / channels;
  const int dx = rest % pw;
  rest /= pw;
  const int dy = rest % ph;
  const int dt = rest / ph;
  return dt * l.stride_t + dy * l.stride_h + dx * l.stride_w + c * l.stride_c;
}

inline PatchLayout make_layout(const TensorRef& t, index_t pt, index_t ph, index_t pw) {
  PatchLayout l;
  l.pt = pt;
  l.ph = ph;
  l.pw = pw;
  l.channels = t.sizes[3];
  l.stride_t = t.strides[0];
  l.stride_h = t.strides[1];
  l.stride_w = t.strides[2];
  l.stride_c = t.strides[3];
  l.grid_t = t.sizes[0] - pt + 1;
  l.grid_h = t.sizes[1] - ph + 1;
  l.grid_w = t.sizes[2] - pw + 1;
  return l;
}

// ---------------------------------------------------------------- exact arithmetic

VK_HOST_DEVICE VK_FORCE_INLINE double sub_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
VK_HOST_DEVICE VK_FORCE_INLINE double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
VK_HOST_DEVICE VK_FORCE_INLINE double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
VK_HOST_DEVICE VK_FORCE_INLINE double div_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}

template <typename T>
VK_HOST_DEVICE VK_FORCE_INLINE double load_exact(T v) {
  return static_cast<double>(Scalar<T>::load(v));  // float16/bfloat16/float32 -> float64 is exact
}

// ssd(q, k) in the exact arithmetic, q and k pointing at the first element of each patch. Stops
// early, returning a partial sum > stop, once the sum exceeds `stop` (partial sums never decrease,
// so the full sum would exceed it too); pass +inf to always get the full sum.
template <typename T>
VK_NO_CONTRACT VK_DEVICE_INLINE VK_HOST_DEVICE double patch_ssd(const T* q, const PatchLayout& lq, const T* k,
                                                                const PatchLayout& lk, double stop) {
  double sum = 0.0;
  for (index_t dt = 0; dt < lq.pt; ++dt) {
    for (index_t dy = 0; dy < lq.ph; ++dy) {
      const T* q_row = q + dt * lq.stride_t + dy * lq.stride_h;
      const T* k_row = k + dt * lk.stride_t + dy * lk.stride_h;
      for (index_t dx = 0; dx < lq.pw; ++dx) {
        for (index_t c = 0; c < lq.channels; ++c) {
          const double d = sub_rn(load_exact(q_row[dx * lq.stride_w + c * lq.stride_c]),
                                  load_exact(k_row[dx * lk.stride_w + c * lk.stride_c]));
          sum = add_rn(sum, mul_rn(d, d));
        }
      }
      if (sum > stop) return sum;
    }
  }
  return sum;
}

// Flat index in `to`'s grid of the position (t, y, x) of flat index `flat` in `from`'s grid, clamped
// into `to`'s grid: the natural first guess when both grids cover the same scene.
VK_HOST_DEVICE inline index_t same_position(const PatchLayout& from, index_t flat, const PatchLayout& to) {
  const index_t x = grid_mod(flat, from.grid_w);
  const index_t y = grid_mod(grid_div(flat, from.grid_w), from.grid_h);
  const index_t t = grid_div(flat, from.grid_w * from.grid_h);
  const index_t tt = t < to.grid_t - 1 ? t : to.grid_t - 1;
  const index_t yy = y < to.grid_h - 1 ? y : to.grid_h - 1;
  const index_t xx = x < to.grid_w - 1 ? x : to.grid_w - 1;
  return (tt * to.grid_h + yy) * to.grid_w + xx;
}

// |patch|^2 in float64 (any rounding: the screening bounds allow for it).
template <typename T>
VK_DEVICE_INLINE VK_HOST_DEVICE double patch_norm(const T* patch, const PatchLayout& l) {
  double norm = 0.0;
  for (index_t dt = 0; dt < l.pt; ++dt)
    for (index_t dy = 0; dy < l.ph; ++dy)
      for (index_t dx = 0; dx < l.pw; ++dx)
        for (index_t c = 0; c < l.channels; ++c) {
          const double v = load_exact(patch[dt * l.stride_t + dy * l.stride_h + dx * l.stride_w + c * l.stride_c]);
          norm += v * v;
        }
  return norm;
}

// The tie rule of every search: a lower score wins, equal scores go to the lower key index.
VK_HOST_DEVICE VK_FORCE_INLINE bool better(double score, index_t index, double best_score, index_t best_index) {
  return score < best_score || (score == best_score && index < best_index);
}

// den(k) = alpha * n + m(k), w(k) = 1 / den(k) and S = ssd * w(k), rounded as the reference does.
// (Multiplying by a per-key reciprocal keeps divisions, slow subroutines on GPUs, out of the loops.)
VK_HOST_DEVICE VK_FORCE_INLINE double normalizer(double alpha_n, double key_min) { return add_rn(alpha_n, key_min); }
VK_HOST_DEVICE VK_FORCE_INLINE double key_reciprocal(double den) { return div_rn(1.0, den); }
VK_HOST_DEVICE VK_FORCE_INLINE double normalized_score(double ssd, double weight) { return mul_rn(ssd, weight); }

// Bound for the early stop of patch_ssd: a sum above it cannot give a score <= best_score
// (for the normalized score, ssd > best * den * (1 + 2^-50) implies fl(ssd * w) > best).
VK_HOST_DEVICE inline double stop_bound(double best_score, double den, bool weighted) {
  if (!weighted) return best_score;
  const double bound = best_score * den * (1.0 + 0x1p-50);
  return bound == bound ? bound : std::numeric_limits<double>::infinity();
}

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

// ---------------------------------------------------------------- voting

// patch_vote: out[t, y, x, c] = reduction over the query positions p = (t, y, x) - (dt, dy, dx) in
// the query grid with index[p] >= 0 of the value v = values[key(index[p]) + (dt, dy, dx), c]:
//   mean:     sum w v / sum w with w = weight[p]                (weight 1 without weights)
//   gaussian: the same with w = weight[p] * g(dt, dy, dx),
//             g = exp(-(dt - ct)^2 / (2 sigma_t^2) - ((dy - cy)^2 + (dx - cx)^2) / (2 sigma_s^2)),
//             (ct, cy, cx) the patch centre ((pt - 1) / 2, ...)
//   median:   the lower median of the v (weights ignored)
// Contributions are visited in increasing (dt, dy, dx); pixels no patch covers get `fill`.
enum class Reduction : int { Mean = 0, Gaussian = 1, Median = 2 };

struct VoteGeometry {
  index_t pt, ph, pw, channels;
  index_t grid_t, grid_h, grid_w;  // query grid (the index array)
  double sigma_t, sigma_s;

  // Weight of the patch offset (dt, dy, dx) for Gaussian voting.
  VK_HOST_DEVICE double offset_weight(index_t dt, index_t dy, index_t dx) const {
    const double ct = 0.5 * static_cast<double>(pt - 1), cy = 0.5 * static_cast<double>(ph - 1),
                 cx = 0.5 * static_cast<double>(pw - 1);
    const double at = static_cast<double>(dt) - ct;
    const double ay = static_cast<double>(dy) - cy;
    const double ax = static_cast<double>(dx) - cx;
    return exp(-(at * at) / (2.0 * sigma_t * sigma_t) - (ay * ay + ax * ax) / (2.0 * sigma_s * sigma_s));
  }
};

// Calls visit(p, dt, dy, dx) for every query position p covering output pixel (t, y, x), in
// increasing (dt, dy, dx).
template <typename Visit>
VK_HOST_DEVICE VK_FORCE_INLINE void for_each_cover(const VoteGeometry& g, index_t t, index_t y, index_t x,
                                                   Visit&& visit) {
  for (index_t dt = 0; dt < g.pt; ++dt) {
    const index_t qt = t - dt;
    if (qt < 0 || qt >= g.grid_t) continue;
    for (index_t dy = 0; dy < g.ph; ++dy) {
      const index_t qy = y - dy;
      if (qy < 0 || qy >= g.grid_h) continue;
      for (index_t dx = 0; dx < g.pw; ++dx) {
        const index_t qx = x - dx;
        if (qx < 0 || qx >= g.grid_w) continue;
        visit((qt * g.grid_h + qy) * g.grid_w + qx, dt, dy, dx);
      }
    }
  }
}

// ---------------------------------------------------------------- PatchMatch

// A counter-based generator (SplitMix64 finalizers over the seed and counters): the same stream on
// the CPU, in CUDA kernels and in the PyTorch reference, whatever the threads and their schedule.
VK_HOST_DEVICE VK_FORCE_INLINE std::uint64_t mix64(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
VK_HOST_DEVICE VK_FORCE_INLINE std::uint64_t random_bits(std::uint64_t seed, index_t stream, index_t a, index_t b) {
  return mix64(mix64(mix64(seed ^ static_cast<std::uint64_t>(stream)) ^ static_cast<std::uint64_t>(a)) ^
               static_cast<std::uint64_t>(b));
}
// Uniform integer in [lo, hi] from the top 31 bits (span < 2^31).
VK_HOST_DEVICE VK_FORCE_INLINE index_t uniform_in(std::uint64_t bits, index_t lo, index_t hi) {
  return lo + grid_mod(static_cast<index_t>(bits >> 33), hi - lo + 1);
}

// A boolean mask over a patch grid, read through its strides.
struct GridMask {
  const std::uint8_t* data;
  index_t stride_t, stride_h, stride_w;
  index_t grid_h, grid_w;
  VK_HOST_DEVICE bool operator()(index_t flat) const {
    const index_t x = grid_mod(flat, grid_w), rest = grid_div(flat, grid_w);
    return data[grid_div(rest, grid_h) * stride_t + grid_mod(rest, grid_h) * stride_h + x * stride_w] != 0;
  }
};
inline GridMask make_grid_mask(const TensorRef& mask) {
  return {static_cast<const std::uint8_t*>(mask.data), mask.strides[0], mask.strides[1], mask.strides[2],
          mask.sizes[1], mask.sizes[2]};
}

struct MatchState {
  index_t key;   // flat key index, -1 when none yet
  double score;  // ssd, or ssd / den(key) for the normalized search
  double ssd;
};

// Everything one PatchMatch step reads. key_den, key_weight: den(k) and w(k) over the key grid
// (nullptr: plain search).
template <typename T>
struct MatchInputs {
  const T* queries;
  const T* keys;
  PatchLayout lq, lk;
  GridMask query_mask, key_mask;
  const double* key_den;
  const double* key_weight;
  std::uint64_t seed;
};

// Consider key `key` (flat) for the query whose patch starts at q: keep it if it is better.
template <typename T>
VK_HOST_DEVICE VK_FORCE_INLINE void match_consider(const MatchInputs<T>& in, const T* q, index_t key,
                                                   MatchState& best) {
  if (!in.key_mask(key)) return;
  const double den = in.key_den ? in.key_den[key] : 0.0;
  const double stop = stop_bound(best.score, den, in.key_den != nullptr);
  const double ssd = patch_ssd(q, in.lq, in.keys + in.lk.offset(key), in.lk, stop);
  if (ssd > stop) return;
  const double score = in.key_den ? normalized_score(ssd, in.key_weight[key]) : ssd;
  if (better(score, key, best.score, best.key)) best = MatchState{key, score, ssd};
}

// Propagation step of iteration `iteration` (0-based): the propagation looks at neighbours 1 and
// `jump` away along t, y and x, jump = 16, 8, 4, 2, 1, 16, 8, ... (long jumps carry good matches
// across the grid in a few synchronous steps, as in jump flooding).
VK_HOST_DEVICE VK_FORCE_INLINE index_t match_jump(index_t iteration) {
  return index_t(16) >> (iteration % 5);
}

// First state of query `q` (flat): the initial guess `init` (-1: none) and 4 random keys (and the
// first valid key after a random start when none of those is valid).
template <typename T>
VK_DEVICE_INLINE VK_HOST_DEVICE MatchState match_init(const MatchInputs<T>& in, index_t q, index_t init) {
  MatchState best{-1, INFINITY, INFINITY};
  if (!in.query_mask(q)) return best;
  const T* qp = in.queries + in.lq.offset(q);
  const index_t keys = in.lk.grid_size();
  if (init >= 0 && init < keys) match_consider(in, qp, init, best);
  for (index_t trial = 0; trial < 4; ++trial)
    match_consider(in, qp, uniform_in(random_bits(in.seed, 0, q, trial), 0, keys - 1), best);
  // Sparse key masks: scan on from a random start to the first valid key, so every query has one.
  const index_t start = uniform_in(random_bits(in.seed, 0, q, 4), 0, keys - 1);
  for (index_t i = 0; best.key < 0 && i < keys; ++i) match_consider(in, qp, grid_mod(start + i, keys), best);
  return best;
}

// One synchronous (Jacobi) PatchMatch step of query `q`: propagation from the neighbours' keys of
// the previous step (old_key over the query grid), then random search around the best with radii
// halving from the key grid's extent to 1. The result depends only on the previous step's state.
template <typename T>
VK_DEVICE_INLINE VK_HOST_DEVICE MatchState match_step(const MatchInputs<T>& in, const index_t* old_key, index_t q,
                                                      index_t iteration, MatchState best) {
  if (!in.query_mask(q)) return best;
  const PatchLayout& lq = in.lq;
  const PatchLayout& lk = in.lk;
  const T* qp = in.queries + lq.offset(q);
  const index_t qpos[3] = {grid_div(q, lq.grid_h * lq.grid_w), grid_mod(grid_div(q, lq.grid_w), lq.grid_h),
                           grid_mod(q, lq.grid_w)};
  const index_t qext[3] = {lq.grid_t, lq.grid_h, lq.grid_w};
  const index_t kext[3] = {lk.grid_t, lk.grid_h, lk.grid_w};
  const index_t qstride[3] = {lq.grid_h * lq.grid_w, lq.grid_w, 1};
  const index_t kstride[3] = {lk.grid_h * lk.grid_w, lk.grid_w, 1};
  const index_t jump = match_jump(iteration);
  for (int axis = 0; axis < 3; ++axis) {
    for (int which = 0; which < 2; ++which) {
      const index_t distance = which == 0 ? jump : 1;
      if (which == 1 && jump == 1) break;
      for (int sign = -1; sign <= 1; sign += 2) {
        const index_t n = qpos[axis] + sign * distance;
        if (n < 0 || n >= qext[axis]) continue;
        const index_t neighbour = q + (n - qpos[axis]) * qstride[axis];
        const index_t nk = old_key[neighbour];
        if (nk < 0 || !in.query_mask(neighbour)) continue;
        const index_t kpos = grid_mod(grid_div(nk, kstride[axis]), kext[axis]) - sign * distance;
        if (kpos < 0 || kpos >= kext[axis]) continue;
        match_consider(in, qp, nk - sign * distance * kstride[axis], best);
      }
    }
  }
  if (best.key < 0) return best;
  index_t radius = kext[0] > kext[1] ? kext[0] : kext[1];
  radius = radius > kext[2] ? radius : kext[2];
  for (index_t trial = 0; radius >= 1; radius /= 2, ++trial) {
    index_t candidate = 0;
    for (int axis = 0; axis < 3; ++axis) {
      const index_t centre = grid_mod(grid_div(best.key, kstride[axis]), kext[axis]);
      const index_t lo = centre - radius < 0 ? 0 : centre - radius;
      const index_t hi = centre + radius >= kext[axis] ? kext[axis] - 1 : centre + radius;
      candidate += uniform_in(random_bits(in.seed, iteration + 1, q, 3 * trial + axis), lo, hi) * kstride[axis];
    }
    match_consider(in, qp, candidate, best);
  }
  return best;
}

// ---------------------------------------------------------------- argument checks

constexpr index_t kMaxDepth = index_t(1) << 20;  // patch elements; keeps the error bounds meaningful

inline void check_patch_size(const ArgCheck& check, const TensorRef& t, const char* name, index_t pt, index_t ph,
                             index_t pw) {
  VK_CHECK(pt >= 1 && ph >= 1 && pw >= 1, ErrorKind::Value, check.function(),
           ": argument 'patch_size' must be positive, got (", pt, ", ", ph, ", ", pw, ")");
  VK_CHECK(pt <= t.sizes[0] && ph <= t.sizes[1] && pw <= t.sizes[2], ErrorKind::Value, check.function(),
           ": argument 'patch_size' (", pt, ", ", ph, ", ", pw, ") must fit in '", name, "' of shape ",
           t.shape_string(), " [T, H, W, C]");
  VK_CHECK(pt * ph * pw * t.sizes[3] <= kMaxDepth, ErrorKind::Value, check.function(),
           ": argument 'patch_size' gives patches of ", pt * ph * pw * t.sizes[3], " values, more than ", kMaxDepth);
}

inline void check_grid_tensor(const ArgCheck& check, const TensorRef& t, const char* name, const PatchLayout& l,
                              const char* layout) {
  check.rank(t, name, 3, layout);
  VK_CHECK(t.sizes[0] == l.grid_t && t.sizes[1] == l.grid_h && t.sizes[2] == l.grid_w, ErrorKind::Value,
           check.function(), ": argument '", name, "' must have shape [", l.grid_t, ", ", l.grid_h, ", ", l.grid_w,
           "] ", layout, ", got ", t.shape_string());
}

// CUDA kernels index patch grids with 32-bit coordinates.
inline void check_cuda_grid(const ArgCheck& check, const PatchLayout& l, const char* name) {
  VK_CHECK(l.grid_size() <= kMaxCudaGrid, ErrorKind::Value, check.function(), ": argument '", name,
           "' has ", l.grid_size(), " patch positions; CUDA kernels support fewer than 2^31");
}

inline void check_devices(const ArgCheck& check, std::initializer_list<const TensorRef*> tensors, int device) {
  for (const TensorRef* t : tensors)
    VK_CHECK(t->device == device, ErrorKind::Value, check.function(), ": every tensor must be on ",
             device == kCpuDevice ? std::string("cpu") : "cuda:" + std::to_string(device), ", got ",
             t->device_string());
}

// The inputs every search takes: queries and keys [T, H, W, C] of one floating dtype and channel
// count, a patch size that fits both, and bool masks over both patch grids.
inline void check_search_inputs(const ArgCheck& check, const TensorRef& queries, const TensorRef& keys,
                                const TensorRef& query_mask, const TensorRef& key_mask, index_t pt, index_t ph,
                                index_t pw) {
  check.rank(queries, "queries", 4, "[T, H, W, C]");
  check.rank(keys, "keys", 4, "[T, H, W, C]");
  check.floating(queries, "queries");
  check.same_dtype(queries, "queries", keys, "keys");
  check.size(keys, "keys", 3, queries.sizes[3], "C, the channels of queries");
  check.at_least(queries, "queries", 3, 1, "C, the channels");
  check_patch_size(check, queries, "queries", pt, ph, pw);
  check_patch_size(check, keys, "keys", pt, ph, pw);
  check_grid_tensor(check, query_mask, "query_mask", make_layout(queries, pt, ph, pw), "(the query patch grid)");
  check_grid_tensor(check, key_mask, "key_mask", make_layout(keys, pt, ph, pw), "(the key patch grid)");
  check.dtype(query_mask, "query_mask", {DType::Bool});
  check.dtype(key_mask, "key_mask", {DType::Bool});
  check.not_null(queries, "queries");
  check.not_null(keys, "keys");
}

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

// Checks both entry points of patch_vote run.
inline void check_vote_arguments(const ArgCheck& check, const TensorRef& values, const TensorRef& index,
                                 const TensorRef& weights, index_t pt, index_t ph, index_t pw, index_t reduction,
                                 double sigma_t, double sigma_s, const TensorRef& out, int device) {
  check.rank(values, "values", 4, "[T, H, W, C]");
  check.floating(values, "values");
  check_patch_size(check, values, "values", pt, ph, pw);
  check.rank(index, "index", 3, "[T', H', W'] (the query patch grid)");
  check.dtype(index, "index", {DType::Int64});
  check.rank(weights, "weights", 3, "[T', H', W']");
  check.dtype(weights, "weights", {values.dtype == DType::Float64 ? DType::Float64 : DType::Float32});
  for (int d = 0; d < 3; ++d) check.size(weights, "weights", d, index.sizes[d], "the query patch grid");
  check.rank(out, "out", 4, "[T, H, W, C]");
  check.same_dtype(values, "values", out, "out");
  check.size(out, "out", 0, index.sizes[0] + pt - 1, "T' + pt - 1");
  check.size(out, "out", 1, index.sizes[1] + ph - 1, "H' + ph - 1");
  check.size(out, "out", 2, index.sizes[2] + pw - 1, "W' + pw - 1");
  check.size(out, "out", 3, values.sizes[3], "C");
  VK_CHECK(reduction >= 0 && reduction <= 2, ErrorKind::Value, check.function(),
           ": argument 'reduction' must be 0 (mean), 1 (gaussian) or 2 (median), got ", reduction);
  VK_CHECK(sigma_t > 0 && sigma_s > 0, ErrorKind::Value, check.function(), ": argument 'sigma' must be > 0, got (",
           sigma_t, ", ", sigma_s, ")");
  check_devices(check, {&values, &index, &weights, &out}, device);
}

// Checks both entry points of patch_match run.
inline void check_patch_match_arguments(const ArgCheck& check, const TensorRef& queries, const TensorRef& keys,
                                        const TensorRef& query_mask, const TensorRef& key_mask,
                                        const TensorRef& key_den, index_t pt, index_t ph, index_t pw,
                                        index_t iterations, const TensorRef& init_index, const TensorRef& out_index,
                                        const TensorRef& out_ssd, int device) {
  check_search_inputs(check, queries, keys, query_mask, key_mask, pt, ph, pw);
  const PatchLayout lq = make_layout(queries, pt, ph, pw);
  const PatchLayout lk = make_layout(keys, pt, ph, pw);
  VK_CHECK(lk.grid_t < (index_t(1) << 31) && lk.grid_h < (index_t(1) << 31) && lk.grid_w < (index_t(1) << 31),
           ErrorKind::Value, check.function(), ": argument 'keys' has a patch grid dimension of 2^31 or more");
  check_grid_tensor(check, init_index, "init", lq, "(the query patch grid)");
  check.dtype(init_index, "init", {DType::Int64});
  if (key_den.numel() > 0) {
    check_grid_tensor(check, key_den, "key_den", lk, "(the key patch grid)");
    check.dtype(key_den, "key_den", {DType::Float64});
    check.contiguous(key_den, "key_den");
  }
  VK_CHECK(iterations >= 0, ErrorKind::Value, check.function(), ": argument 'iterations' must be >= 0, got ",
           iterations);
  check_grid_tensor(check, out_index, "out_index", lq, "(the query patch grid)");
  check_grid_tensor(check, out_ssd, "out_ssd", lq, "(the query patch grid)");
  check.dtype(out_index, "out_index", {DType::Int64});
  check.dtype(out_ssd, "out_ssd", {DType::Float64});
  check.contiguous(out_index, "out_index");
  check.contiguous(out_ssd, "out_ssd");
  check_devices(check, {&queries, &keys, &query_mask, &key_mask, &init_index, &out_index, &out_ssd}, device);
}

}  // namespace vk::patch_nn
