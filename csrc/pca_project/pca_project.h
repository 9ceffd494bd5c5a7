// Weight-space PCA (weights2weights): the arithmetic shared by the CPU loops and the CUDA kernels.
//
//   project:      c[b, k] = sum_d (x[b, d] - shift[d]) * scale[d] * V[d, k]      x: [B, D], V: [D, K]
//   reconstruct:  w[b, d] = scale[d] * sum_k c[b, k] * V[d, k] + shift[d]        c: [B, K]
//
// With shift = mean and scale = 1 / std these are the projection onto and the reconstruction
// from the first K principal components of the standardized weights; the op layer also uses them
// with shift = 0 for the gradients (scale = std or 1 / std). x and V share one storage dtype T
// (float32, float64, float16, bfloat16); shift, scale, c and every accumulation use A = acc_t<T>
// (float64 for float64 storage, float32 otherwise).
//
// Four entry points per device:
//   pca_project_fused      small batches (B <= kFusedMaxRows): one pass over V, standardizing x
//                          on the fly; memory bound, so reading V once in its storage dtype wins
//   pca_reconstruct_fused  small batches: one pass over V, epilogue scale/shift/cast fused
//   pca_standardize        blocked path for large batches: z = (x - shift) * scale into A, per
//                          block of columns, fed to the vendor GEMM by the op layer
//   pca_destandardize      blocked path epilogue: out = store(acc * scale + shift)
#pragma once

#include "../common/checks.h"
#include "../common/defs.h"
#include "../common/dtype.h"
#include "../common/tensor.h"

namespace vk::pca {

// Largest batch the fused kernels take (the CUDA kernels keep one accumulator per row in registers).
constexpr index_t kFusedMaxRows = 16;

template <typename A>
VK_HOST_DEVICE VK_FORCE_INLINE A standardize(A value, A shift, A scale) {
  return (value - shift) * scale;
}

template <typename A>
VK_HOST_DEVICE VK_FORCE_INLINE A destandardize(A accumulated, A scale, A shift) {
  return accumulated * scale + shift;
}

inline DType accumulation_dtype(DType storage) {
  return storage == DType::Float64 ? DType::Float64 : DType::Float32;
}

inline bool has_shift(const TensorRef& shift) { return shift.numel() > 0; }

// shift: [D] or [0] (no shift), scale: [D], both in the accumulation dtype of `storage`.
inline void check_shift_scale(const ArgCheck& check, const TensorRef& shift, const TensorRef& scale, index_t dims,
                              DType storage, int device) {
  const DType accumulate = accumulation_dtype(storage);
  check.rank(shift, "shift", 1, "[D] or [0]");
  check.rank(scale, "scale", 1, "[D]");
  check.dtype(shift, "shift", {accumulate});
  check.dtype(scale, "scale", {accumulate});
  if (has_shift(shift)) check.size(shift, "shift", 0, dims, "D, the weight dimension");
  check.size(scale, "scale", 0, dims, "D, the weight dimension");
  check.on_device(shift, "shift", device);
  check.on_device(scale, "scale", device);
  check.not_null(shift, "shift");
  check.not_null(scale, "scale");
}

inline void check_output_dtype(const ArgCheck& check, const TensorRef& out, DType storage) {
  if (accumulation_dtype(storage) == storage) {
    check.dtype(out, "out", {storage});
  } else {
    check.dtype(out, "out", {storage, accumulation_dtype(storage)});
  }
}

// x: [B, D] (B <= kFusedMaxRows) in the storage dtype of basis or its accumulation dtype,
// basis: [D, K], out: [B, K] contiguous in the accumulation dtype.
inline void check_project_arguments(const ArgCheck& check, const TensorRef& x, const TensorRef& shift,
                                    const TensorRef& scale, const TensorRef& basis, const TensorRef& out,
                                    int device) {
  check.rank(x, "x", 2, "[B, D]");
  check.rank(basis, "basis", 2, "[D, K]");
  check.rank(out, "out", 2, "[B, K]");
  check.floating(basis, "basis");
  if (accumulation_dtype(basis.dtype) == basis.dtype) {
    check.dtype(x, "x", {basis.dtype});
  } else {
    check.dtype(x, "x", {basis.dtype, accumulation_dtype(basis.dtype)});
  }
  check.dtype(out, "out", {accumulation_dtype(basis.dtype)});
  check.size(basis, "basis", 0, x.sizes[1], "D, the width of x");
  check.size(out, "out", 0, x.sizes[0], "B");
  check.size(out, "out", 1, basis.sizes[1], "K");
  VK_CHECK(x.sizes[0] <= kFusedMaxRows, ErrorKind::Value, check.function(), ": argument 'x' must have at most ",
           kFusedMaxRows, " rows for the fused kernel, got shape ", x.shape_string());
  check.contiguous(out, "out");
  check_shift_scale(check, shift, scale, x.sizes[1], basis.dtype, device);
  check.on_device(x, "x", device);
  check.on_device(basis, "basis", device);
  check.on_device(out, "out", device);
  check.not_null(x, "x");
  check.not_null(basis, "basis");
  check.not_null(out, "out");
}

// coeffs: [B, K] contiguous in the accumulation dtype (B <= kFusedMaxRows), basis: [D, K],
// out: [B, D] in the storage dtype or the accumulation dtype.
inline void check_reconstruct_arguments(const ArgCheck& check, const TensorRef& coeffs, const TensorRef& basis,
                                        const TensorRef& scale, const TensorRef& shift, const TensorRef& out,
                                        int device) {
  check.rank(coeffs, "coeffs", 2, "[B, K]");
  check.rank(basis, "basis", 2, "[D, K]");
  check.rank(out, "out", 2, "[B, D]");
  check.floating(basis, "basis");
  check.dtype(coeffs, "coeffs", {accumulation_dtype(basis.dtype)});
  check_output_dtype(check, out, basis.dtype);
  check.size(coeffs, "coeffs", 1, basis.sizes[1], "K, the number of components of basis");
  check.size(out, "out", 0, coeffs.sizes[0], "B");
  check.size(out, "out", 1, basis.sizes[0], "D");
  VK_CHECK(coeffs.sizes[0] <= kFusedMaxRows, ErrorKind::Value, check.function(),
           ": argument 'coeffs' must have at most ", kFusedMaxRows, " rows for the fused kernel, got shape ",
           coeffs.shape_string());
  check.contiguous(coeffs, "coeffs");
  check_shift_scale(check, shift, scale, basis.sizes[0], basis.dtype, device);
  check.on_device(coeffs, "coeffs", device);
  check.on_device(basis, "basis", device);
  check.on_device(out, "out", device);
  check.not_null(coeffs, "coeffs");
  check.not_null(basis, "basis");
  check.not_null(out, "out");
}

// x: [B, D] storage dtype, out: [B, D] accumulation dtype (any strides).
inline void check_standardize_arguments(const ArgCheck& check, const TensorRef& x, const TensorRef& shift,
                                        const TensorRef& scale, const TensorRef& out, int device) {
  check.rank(x, "x", 2, "[B, D]");
  check.rank(out, "out", 2, "[B, D]");
  check.floating(x, "x");
  check.dtype(out, "out", {accumulation_dtype(x.dtype)});
  check.size(out, "out", 0, x.sizes[0], "B");
  check.size(out, "out", 1, x.sizes[1], "D");
  check_shift_scale(check, shift, scale, x.sizes[1], x.dtype, device);
  check.on_device(x, "x", device);
  check.on_device(out, "out", device);
  check.not_null(x, "x");
  check.not_null(out, "out");
}

// accumulated: [B, D] float32 or float64; out: [B, D] in a storage dtype whose accumulation dtype
// is that of `accumulated` (float32 -> float32/float16/bfloat16, float64 -> float64). `out` may be
// `accumulated` itself: the update is element-wise.
inline void check_destandardize_arguments(const ArgCheck& check, const TensorRef& accumulated,
                                          const TensorRef& scale, const TensorRef& shift, const TensorRef& out,
                                          int device) {
  check.rank(accumulated, "accumulated", 2, "[B, D]");
  check.rank(out, "out", 2, "[B, D]");
  check.dtype(accumulated, "accumulated", {DType::Float32, DType::Float64});
  if (accumulated.dtype == DType::Float64) {
    check.dtype(out, "out", {DType::Float64});
  } else {
    check.dtype(out, "out", {DType::Float32, DType::Float16, DType::BFloat16});
  }
  check.size(out, "out", 0, accumulated.sizes[0], "B");
  check.size(out, "out", 1, accumulated.sizes[1], "D");
  check_shift_scale(check, shift, scale, accumulated.sizes[1], accumulated.dtype, device);
  check.on_device(accumulated, "accumulated", device);
  check.on_device(out, "out", device);
  check.not_null(accumulated, "accumulated");
  check.not_null(out, "out");
}

}  // namespace vk::pca
