// Space-time patches: geometry, the exact arithmetic and the argument checks shared by the exact search
// (search.h), voting (vote.h) and PatchMatch (match.h), on the CPU and in CUDA kernels.
//
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

// alpha: NaN (plain search) or finite > 0. Validated by the op (vision_kernels/ops/patch_nn); this only
// keeps a direct native call from producing a meaningless search.
inline void check_alpha(const ArgCheck& check, double alpha) {
  VK_CHECK(std::isnan(alpha) || (alpha > 0 && std::isfinite(alpha)), ErrorKind::Value, check.function(),
           ": argument 'alpha' must be NaN (plain) or a finite number > 0, got ", alpha);
}

}  // namespace vk::patch_nn
