// CPU kernels of the weight-space PCA family (see pca_project.h for the math).
//
// Fused project: D is cut into a fixed number of chunks (independent of the thread count, so the
// result does not depend on it); a task walks its chunk four basis rows at a time, converts them
// to the accumulation type once, and adds z[b, d] * V[d, :] to a [B, K] partial sum for all B
// rows; the partials are then summed in chunk order. Fused reconstruct: threads split D; each
// basis row is converted once and dotted with the B coefficient rows (16 independent lanes, so
// it vectorizes), then scaled, shifted and stored. Both read the basis exactly once in its
// storage dtype. Standardize / destandardize are row-chunked element-wise loops.
#include "pca_project_ops.h"

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../common/dtype.h"
#include "../common/parallel.h"
#include "pca_project.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && __GNUC__ >= 12
#define VK_PCA_HAVE_FLOAT16 1
#else
#define VK_PCA_HAVE_FLOAT16 0
#endif

namespace vk::pca {
namespace {

constexpr index_t kDepth = 4;           // basis rows folded into one pass over the partial sums
constexpr index_t kMaxChunks = 64;      // fused project: D chunks (fixed, thread-independent)
constexpr index_t kMinChunk = 1024;     // fused project: smallest D chunk
constexpr index_t kColumnBlock = 4096;  // element-wise kernels: columns per work item

// ------------------------------------------------------------------ vectorized leaves

template <typename A>
VK_FORCE_INLINE A dot_impl(const A* a, const A* b, index_t n) {
  constexpr int kLanes = 16;
  A lanes[kLanes] = {};
  index_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lanes[j] += a[i + j] * b[i + j];
  A tail = A(0);
  for (; i < n; ++i) tail += a[i] * b[i];
  for (int width = kLanes / 2; width > 0; width /= 2)
    for (int j = 0; j < width; ++j) lanes[j] += lanes[j + width];
  return lanes[0] + tail;
}

VK_CPU_MULTIVERSION float dot_f32(const float* a, const float* b, index_t n) { return dot_impl(a, b, n); }
VK_CPU_MULTIVERSION double dot_f64(const double* a, const double* b, index_t n) { return dot_impl(a, b, n); }
inline float dot(const float* a, const float* b, index_t n) { return dot_f32(a, b, n); }
inline double dot(const double* a, const double* b, index_t n) { return dot_f64(a, b, n); }

// acc[r * width + i] += sum_{j < depth} z[r * kDepth + j] * v[j * width + i] for r < rows.
template <typename A>
VK_FORCE_INLINE void accumulate_impl(A* acc, index_t rows, index_t width, const A* z, const A* v, index_t depth) {
  for (index_t r = 0; r < rows; ++r) {
    A* row = acc + r * width;
    const A* zr = z + r * kDepth;
    if (depth == kDepth) {
      const A z0 = zr[0], z1 = zr[1], z2 = zr[2], z3 = zr[3];
      const A *v0 = v, *v1 = v + width, *v2 = v + 2 * width, *v3 = v + 3 * width;
      for (index_t i = 0; i < width; ++i) row[i] = row[i] + z0 * v0[i] + z1 * v1[i] + z2 * v2[i] + z3 * v3[i];
    } else {
      for (index_t j = 0; j < depth; ++j) {
        const A zj = zr[j];
        const A* vj = v + j * width;
        for (index_t i = 0; i < width; ++i) row[i] += zj * vj[i];
      }
    }
  }
}

VK_CPU_MULTIVERSION void accumulate_f32(float* acc, index_t rows, index_t width, const float* z, const float* v,
                                        index_t depth) {
  accumulate_impl(acc, rows, width, z, v, depth);
}
VK_CPU_MULTIVERSION void accumulate_f64(double* acc, index_t rows, index_t width, const double* z, const double* v,
                                        index_t depth) {
  accumulate_impl(acc, rows, width, z, v, depth);
}
inline void accumulate(float* acc, index_t rows, index_t width, const float* z, const float* v, index_t depth) {
  accumulate_f32(acc, rows, width, z, v, depth);
}
inline void accumulate(double* acc, index_t rows, index_t width, const double* z, const double* v, index_t depth) {
  accumulate_f64(acc, rows, width, z, v, depth);
}

// Contiguous conversions of 16-bit storage to float and back (F16C / AVX-512 through the clones).
VK_CPU_MULTIVERSION void load_f16_contiguous(const f16* source, index_t n, float* target) {
#if VK_PCA_HAVE_FLOAT16
  for (index_t i = 0; i < n; ++i) {
    _Float16 half;
    std::memcpy(&half, source + i, sizeof(half));
    target[i] = static_cast<float>(half);
  }
#else
  for (index_t i = 0; i < n; ++i) target[i] = to_float(source[i]);
#endif
}

VK_CPU_MULTIVERSION void load_bf16_contiguous(const bf16* source, index_t n, float* target) {
  for (index_t i = 0; i < n; ++i) target[i] = bits_float(static_cast<std::uint32_t>(source[i].bits) << 16);
}

VK_CPU_MULTIVERSION void store_f16_contiguous(const float* source, index_t n, f16* target) {
#if VK_PCA_HAVE_FLOAT16
  for (index_t i = 0; i < n; ++i) {
    const _Float16 half = static_cast<_Float16>(source[i]);
    std::memcpy(target + i, &half, sizeof(half));
  }
#else
  for (index_t i = 0; i < n; ++i) target[i] = to_f16(source[i]);
#endif
}

VK_CPU_MULTIVERSION void store_bf16_contiguous(const float* source, index_t n, bf16* target) {
  for (index_t i = 0; i < n; ++i) target[i] = to_bf16(source[i]);
}

// target[i] = element i of a strided row as the accumulation type.
template <typename T, typename A = acc_t<T>>
void load_row(const T* source, index_t stride, index_t n, A* target) {
  if (stride == 1) {
    if constexpr (std::is_same_v<T, f16>) return load_f16_contiguous(source, n, target);
    if constexpr (std::is_same_v<T, bf16>) return load_bf16_contiguous(source, n, target);
    if constexpr (std::is_same_v<T, A>) {
      std::memcpy(target, source, static_cast<std::size_t>(n) * sizeof(A));
      return;
    }
  }
  for (index_t i = 0; i < n; ++i) target[i] = Scalar<T>::load(source[i * stride]);
}

// Element i of a strided row = source[i] stored as O.
template <typename O, typename A>
void store_row(const A* source, index_t n, O* target, index_t stride) {
  if (stride == 1) {
    if constexpr (std::is_same_v<O, f16>) return store_f16_contiguous(source, n, target);
    if constexpr (std::is_same_v<O, bf16>) return store_bf16_contiguous(source, n, target);
  }
  for (index_t i = 0; i < n; ++i) target[i * stride] = static_cast<O>(Scalar<O>::store(source[i]));
}

// values[i] = standardize(values[i], shift[i], scale[i]), or destandardize(values[i], scale[i], shift[i])
// when `inverse` (the branch is outside the loop, so both loops vectorize).
template <typename A>
VK_FORCE_INLINE void affine_impl(A* values, const A* shift, const A* scale, index_t n, bool inverse) {
  if (inverse) {
    for (index_t i = 0; i < n; ++i) values[i] = destandardize(values[i], scale[i], shift[i]);
  } else {
    for (index_t i = 0; i < n; ++i) values[i] = standardize(values[i], shift[i], scale[i]);
  }
}
VK_CPU_MULTIVERSION void affine_f32(float* values, const float* shift, const float* scale, index_t n, bool inverse) {
  affine_impl(values, shift, scale, n, inverse);
}
VK_CPU_MULTIVERSION void affine_f64(double* values, const double* shift, const double* scale, index_t n,
                                    bool inverse) {
  affine_impl(values, shift, scale, n, inverse);
}
inline void affine(float* v, const float* shift, const float* scale, index_t n, bool inverse) {
  affine_f32(v, shift, scale, n, inverse);
}
inline void affine(double* v, const double* shift, const double* scale, index_t n, bool inverse) {
  affine_f64(v, shift, scale, n, inverse);
}

// shift as a dense [D] array (zeros when absent).
template <typename A>
const A* shift_values(const TensorRef& shift, index_t dims, std::vector<A>& zeros) {
  if (has_shift(shift)) return static_cast<const A*>(shift.data);
  zeros.assign(static_cast<std::size_t>(dims), A(0));
  return zeros.data();
}

// ------------------------------------------------------------------ fused project

template <typename TX, typename T>
void project_fused_typed(const TensorRef& x_ref, const TensorRef& shift_ref, const TensorRef& scale_ref,
                         const TensorRef& basis_ref, const TensorRef& out_ref) {
  using A = acc_t<T>;
  const auto x = make_view<const TX, 2>(x_ref);         // [B, D]
  const auto basis = make_view<const T, 2>(basis_ref);  // [D, K]
  A* out = static_cast<A*>(out_ref.data);               // [B, K] contiguous
  const index_t rows = x.size[0], dims = x.size[1], width = basis.size[1];
  if (rows == 0 || width == 0) return;
  std::vector<A> zeros;
  const A* shift = shift_values<A>(shift_ref, dims, zeros);  // [D]
  const A* scale = static_cast<const A*>(scale_ref.data);    // [D]

  const index_t chunk = ceil_div(std::max(kMinChunk, ceil_div(dims, kMaxChunks)), kDepth) * kDepth;
  const index_t chunks = ceil_div(dims, chunk);
  std::vector<A> partial(static_cast<std::size_t>(chunks * rows * width));  // [chunks, B, K]
  parallel_for_dynamic(0, chunks, 1, [&](index_t lo, index_t hi) {
    std::vector<A> v(static_cast<std::size_t>(kDepth * width));  // [kDepth, K]
    A z[kFusedMaxRows * kDepth];                                 // [B, kDepth]
    for (index_t c = lo; c < hi; ++c) {
      A* acc = partial.data() + c * rows * width;  // [B, K]
      std::fill(acc, acc + rows * width, A(0));
      const index_t end = std::min(dims, (c + 1) * chunk);
      for (index_t d0 = c * chunk; d0 < end; d0 += kDepth) {
        const index_t depth = std::min(kDepth, end - d0);
        for (index_t j = 0; j < depth; ++j) {
          load_row(basis.row(d0 + j), basis.stride[1], width, v.data() + j * width);
          for (index_t b = 0; b < rows; ++b)
            z[b * kDepth + j] = standardize(Scalar<TX>::load(x(b, d0 + j)), shift[d0 + j], scale[d0 + j]);
        }
        accumulate(acc, rows, width, z, v.data(), depth);
      }
    }
  });
  // Sum the chunk partials in chunk order (deterministic).
  parallel_for(0, rows * width, 4096, [&](index_t lo, index_t hi) {
    for (index_t i = lo; i < hi; ++i) {
      A total = A(0);
      for (index_t c = 0; c < chunks; ++c) total += partial[static_cast<std::size_t>(c * rows * width + i)];
      out[i] = total;
    }
  });
}

// ------------------------------------------------------------------ fused reconstruct

template <typename T, typename O>
void reconstruct_fused_typed(const TensorRef& coeffs_ref, const TensorRef& basis_ref, const TensorRef& scale_ref,
                             const TensorRef& shift_ref, const TensorRef& out_ref) {
  using A = acc_t<T>;
  const A* coeffs = static_cast<const A*>(coeffs_ref.data);  // [B, K] contiguous
  const auto basis = make_view<const T, 2>(basis_ref);       // [D, K]
  const auto out = make_view<O, 2>(out_ref);                 // [B, D]
  const index_t rows = coeffs_ref.sizes[0], width = basis.size[1], dims = basis.size[0];
  if (rows == 0 || dims == 0) return;
  std::vector<A> zeros;
  const A* shift = shift_values<A>(shift_ref, dims, zeros);
  const A* scale = static_cast<const A*>(scale_ref.data);
  parallel_for(0, dims, 64, [&](index_t lo, index_t hi) {
    std::vector<A> v(static_cast<std::size_t>(width));  // [K]
    for (index_t d = lo; d < hi; ++d) {
      const A* row = nullptr;
      if constexpr (std::is_same_v<T, A>) {
        if (basis.stride[1] == 1) row = basis.row(d);
      }
      if (row == nullptr) {
        load_row(basis.row(d), basis.stride[1], width, v.data());
        row = v.data();
      }
      for (index_t b = 0; b < rows; ++b) {
        const A value = destandardize(dot(coeffs + b * width, row, width), scale[d], shift[d]);
        out(b, d) = static_cast<O>(Scalar<O>::store(value));
      }
    }
  });
}

// ------------------------------------------------------------------ element-wise kernels

// out = standardize(in) (inverse = false) or destandardize(in) (inverse = true), row by row in
// chunks of kColumnBlock columns: load (dequantize) into a buffer, affine update, store (round).
template <typename In, typename Out, typename A>
void affine_rows(const TensorRef& in_ref, const TensorRef& shift_ref, const TensorRef& scale_ref,
                 const TensorRef& out_ref, bool inverse) {
  const auto in = make_view<const In, 2>(in_ref);  // [B, D]
  const auto out = make_view<Out, 2>(out_ref);     // [B, D] (may alias in: element-wise)
  const index_t rows = in.size[0], dims = in.size[1];
  if (rows == 0 || dims == 0) return;
  std::vector<A> zeros;
  const A* shift = shift_values<A>(shift_ref, dims, zeros);
  const A* scale = static_cast<const A*>(scale_ref.data);
  const index_t blocks = ceil_div(dims, kColumnBlock);
  parallel_for(0, rows * blocks, 1, [&](index_t lo, index_t hi) {
    std::vector<A> buffer(static_cast<std::size_t>(std::min(dims, kColumnBlock)));
    for (index_t item = lo; item < hi; ++item) {
      const index_t b = item / blocks, d0 = (item % blocks) * kColumnBlock;
      const index_t n = std::min(kColumnBlock, dims - d0);
      load_row(&in(b, d0), in.stride[1], n, buffer.data());
      affine(buffer.data(), shift + d0, scale + d0, n, inverse);
      store_row(buffer.data(), n, &out(b, d0), out.stride[1]);
    }
  });
}

}  // namespace

void pca_project_fused_cpu(VK_PCA_PROJECT_FUSED_ARGS) {
  const ArgCheck check("vision_kernels.pca_project");
  check_project_arguments(check, x, shift, scale, basis, out, kCpuDevice);
  VK_DISPATCH_FLOATING(basis.dtype, check.function(), [&] {
    using A = acc_t<scalar_t>;
    if (x.dtype == basis.dtype) {
      project_fused_typed<scalar_t, scalar_t>(x, shift, scale, basis, out);
    } else {
      project_fused_typed<A, scalar_t>(x, shift, scale, basis, out);
    }
  });
}

void pca_reconstruct_fused_cpu(VK_PCA_RECONSTRUCT_FUSED_ARGS) {
  const ArgCheck check("vision_kernels.pca_reconstruct");
  check_reconstruct_arguments(check, coeffs, basis, scale, shift, out, kCpuDevice);
  VK_DISPATCH_FLOATING(basis.dtype, check.function(), [&] {
    using A = acc_t<scalar_t>;
    if (out.dtype == basis.dtype) {
      reconstruct_fused_typed<scalar_t, scalar_t>(coeffs, basis, scale, shift, out);
    } else {
      reconstruct_fused_typed<scalar_t, A>(coeffs, basis, scale, shift, out);
    }
  });
}

void pca_standardize_cpu(VK_PCA_STANDARDIZE_ARGS) {
  const ArgCheck check("vision_kernels.pca_standardize");
  check_standardize_arguments(check, x, shift, scale, out, kCpuDevice);
  VK_DISPATCH_FLOATING(x.dtype, check.function(), [&] {
    using A = acc_t<scalar_t>;
    affine_rows<scalar_t, A, A>(x, shift, scale, out, false);
  });
}

void pca_destandardize_cpu(VK_PCA_DESTANDARDIZE_ARGS) {
  const ArgCheck check("vision_kernels.pca_destandardize");
  check_destandardize_arguments(check, accumulated, scale, shift, out, kCpuDevice);
  VK_DISPATCH_FLOATING(out.dtype, check.function(), [&] {
    using A = acc_t<scalar_t>;
    affine_rows<A, scalar_t, A>(accumulated, shift, scale, out, true);
  });
}

}  // namespace vk::pca
