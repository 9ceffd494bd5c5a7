// CUDA kernels of the weight-space PCA family (see pca_project.h for the math).
//
// Fused project (B <= 16): grid (column tiles of 128, D chunks). A block stages 32 standardized
// weight columns for all B rows in shared memory, then each thread walks those 32 basis rows for
// its column k (coalesced across the block) and keeps one accumulator per row in registers. The
// [S, B, K] partials are summed in chunk order by a second kernel. Fused reconstruct: one warp per
// weight dimension d; lanes stride over k (coalesced reads of the basis row), each lane keeps B
// partial dot products, a shuffle reduction finishes them and lane 0 applies scale, shift and the
// cast. Standardize / destandardize are grid-stride element-wise kernels for the blocked path,
// whose GEMMs run in cuBLAS through torch.
#include <algorithm>

#include "../common/cuda_utils.h"
#include "../common/dtype.h"
#include "pca_project.h"
#include "pca_project_ops.h"

// nvcc's unroll hint; the host compiler of the emulated build does not know the pragma.
#if defined(__CUDACC__)
#define VK_PCA_UNROLL _Pragma("unroll")
#else
#define VK_PCA_UNROLL
#endif

namespace vk::pca {
namespace {

constexpr int kProjectThreads = 128;   // columns k per block
constexpr int kProjectTile = 32;       // basis rows d staged per step
constexpr int kReconstructWarps = 8;   // weight dimensions d per block
constexpr int kElementThreads = 256;   // element-wise kernels
constexpr index_t kMaxElementBlocks = 4096;
constexpr unsigned kFullMask = 0xffffffffu;

template <typename A>
__device__ __forceinline__ A shift_at(const A* shift, index_t d) {
  return shift != nullptr ? shift[d] : A(0);
}

template <typename TX, typename T>
__global__ void __launch_bounds__(kProjectThreads)
    project_partial_kernel(View<const TX, 2> x, const acc_t<T>* shift, const acc_t<T>* scale, View<const T, 2> basis,
                           acc_t<T>* partial, index_t chunk) {
  using A = acc_t<T>;
  __shared__ A z[kFusedMaxRows][kProjectTile];  // standardized x[b, d0 + j]
  const index_t rows = x.size[0], dims = x.size[1], width = basis.size[1];
  const index_t k = static_cast<index_t>(blockIdx.x) * kProjectThreads + threadIdx.x;
  const index_t d_begin = static_cast<index_t>(blockIdx.y) * chunk;
  const index_t d_end = std::min(dims, d_begin + chunk);

  A acc[kFusedMaxRows];
VK_PCA_UNROLL
  for (int b = 0; b < kFusedMaxRows; ++b) acc[b] = A(0);

  for (index_t d0 = d_begin; d0 < d_end; d0 += kProjectTile) {
    for (int e = threadIdx.x; e < kFusedMaxRows * kProjectTile; e += kProjectThreads) {
      const int b = e / kProjectTile, j = e % kProjectTile;
      const index_t d = d0 + j;
      z[b][j] = (b < rows && d < d_end) ? standardize(Scalar<TX>::load(x(b, d)), shift_at(shift, d), scale[d]) : A(0);
    }
    __syncthreads();
    if (k < width) {
      const int depth = static_cast<int>(std::min<index_t>(kProjectTile, d_end - d0));
      for (int j = 0; j < depth; ++j) {
        const A v = Scalar<T>::load(basis(d0 + j, k));
VK_PCA_UNROLL
        for (int b = 0; b < kFusedMaxRows; ++b)
          if (b < rows) acc[b] += z[b][j] * v;
      }
    }
    __syncthreads();
  }
  if (k < width) {
VK_PCA_UNROLL
    for (int b = 0; b < kFusedMaxRows; ++b)
      if (b < rows) partial[(static_cast<index_t>(blockIdx.y) * rows + b) * width + k] = acc[b];
  }
}

// out[i] = sum_c partial[c * count + i] in chunk order, i < count = B * K.
template <typename A>
__global__ void __launch_bounds__(kElementThreads)
    sum_partials_kernel(const A* partial, index_t chunks, index_t count, A* out) {
  const index_t step = static_cast<index_t>(gridDim.x) * blockDim.x;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += step) {
    A total = A(0);
    for (index_t c = 0; c < chunks; ++c) total += partial[c * count + i];
    out[i] = total;
  }
}

template <typename T, typename O>
__global__ void __launch_bounds__(kReconstructWarps * 32)
    reconstruct_kernel(const acc_t<T>* coeffs, View<const T, 2> basis, const acc_t<T>* scale, const acc_t<T>* shift,
                       View<O, 2> out, index_t rows) {
  using A = acc_t<T>;
  const index_t dims = basis.size[0], width = basis.size[1];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const index_t d = static_cast<index_t>(blockIdx.x) * kReconstructWarps + warp;
  if (d >= dims) return;  // the whole warp leaves together; no block-wide barrier follows

  A acc[kFusedMaxRows];
VK_PCA_UNROLL
  for (int b = 0; b < kFusedMaxRows; ++b) acc[b] = A(0);
  for (index_t k = lane; k < width; k += 32) {
    const A v = Scalar<T>::load(basis(d, k));
VK_PCA_UNROLL
    for (int b = 0; b < kFusedMaxRows; ++b)
      if (b < rows) acc[b] += coeffs[b * width + k] * v;
  }
VK_PCA_UNROLL
  for (int b = 0; b < kFusedMaxRows; ++b) {
    if (b < rows) {
      for (int offset = 16; offset > 0; offset /= 2) acc[b] += __shfl_down_sync(kFullMask, acc[b], offset);
    }
  }
  if (lane == 0) {
VK_PCA_UNROLL
    for (int b = 0; b < kFusedMaxRows; ++b)
      if (b < rows) out(b, d) = static_cast<O>(Scalar<O>::store(destandardize(acc[b], scale[d], shift_at(shift, d))));
  }
}

template <typename T>
__global__ void __launch_bounds__(kElementThreads)
    standardize_kernel(View<const T, 2> x, const acc_t<T>* shift, const acc_t<T>* scale, View<acc_t<T>, 2> out) {
  const index_t dims = x.size[1], total = x.size[0] * dims;
  const index_t step = static_cast<index_t>(gridDim.x) * blockDim.x;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const index_t b = i / dims, d = i % dims;
    out(b, d) = standardize(Scalar<T>::load(x(b, d)), shift_at(shift, d), scale[d]);
  }
}

template <typename A, typename O>
__global__ void __launch_bounds__(kElementThreads)
    destandardize_kernel(View<const A, 2> accumulated, const A* scale, const A* shift, View<O, 2> out) {
  const index_t dims = accumulated.size[1], total = accumulated.size[0] * dims;
  const index_t step = static_cast<index_t>(gridDim.x) * blockDim.x;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const index_t b = i / dims, d = i % dims;
    out(b, d) = static_cast<O>(Scalar<O>::store(destandardize(accumulated(b, d), scale[d], shift_at(shift, d))));
  }
}

template <typename A>
const A* shift_pointer(const TensorRef& shift) {
  return has_shift(shift) ? static_cast<const A*>(shift.data) : nullptr;
}

unsigned element_blocks(index_t total) {
  return static_cast<unsigned>(std::max<index_t>(1, std::min(kMaxElementBlocks, ceil_div(total, kElementThreads))));
}

template <typename TX, typename T>
void launch_project(const TensorRef& x, const TensorRef& shift, const TensorRef& scale, const TensorRef& basis,
                    const TensorRef& partial, const TensorRef& out, cudaStream_t stream) {
  using A = acc_t<T>;
  const index_t rows = x.sizes[0], dims = x.sizes[1], width = basis.sizes[1];
  if (rows == 0 || width == 0) return;
  const index_t chunks = partial.sizes[0];
  const index_t chunk = ceil_div(ceil_div(dims, chunks), kProjectTile) * kProjectTile;
  const dim3 grid(static_cast<unsigned>(ceil_div(width, kProjectThreads)), static_cast<unsigned>(chunks));
  auto partial_kernel = &project_partial_kernel<TX, T>;
  VK_LAUNCH(partial_kernel, grid, dim3(kProjectThreads), 0, stream, make_view<const TX, 2>(x), shift_pointer<A>(shift),
            static_cast<const A*>(scale.data), make_view<const T, 2>(basis), static_cast<A*>(partial.data), chunk);
  const index_t count = rows * width;
  auto sum_kernel = &sum_partials_kernel<A>;
  VK_LAUNCH(sum_kernel, dim3(element_blocks(count)), dim3(kElementThreads), 0, stream,
            static_cast<const A*>(partial.data), chunks, count, static_cast<A*>(out.data));
}

template <typename T, typename O>
void launch_reconstruct(const TensorRef& coeffs, const TensorRef& basis, const TensorRef& scale, const TensorRef& shift,
                        const TensorRef& out, cudaStream_t stream) {
  using A = acc_t<T>;
  const index_t rows = coeffs.sizes[0], dims = basis.sizes[0];
  if (rows == 0 || dims == 0) return;
  auto kernel = &reconstruct_kernel<T, O>;
  VK_LAUNCH(kernel, dim3(static_cast<unsigned>(ceil_div(dims, kReconstructWarps))), dim3(kReconstructWarps * 32), 0,
            stream, static_cast<const A*>(coeffs.data), make_view<const T, 2>(basis), static_cast<const A*>(scale.data),
            shift_pointer<A>(shift), make_view<O, 2>(out), rows);
}

}  // namespace

void pca_project_fused_cuda(VK_PCA_PROJECT_FUSED_ARGS, const TensorRef& partial, std::uintptr_t stream) {
  const ArgCheck check("vision_kernels.pca_project");
  check_project_arguments(check, x, shift, scale, basis, out, x.device);
  check.rank(partial, "partial", 3, "[S, B, K]");
  check.dtype(partial, "partial", {accumulation_dtype(basis.dtype)});
  check.at_least(partial, "partial", 0, 1, "S, the number of D chunks");
  check.size(partial, "partial", 1, x.sizes[0], "B");
  check.size(partial, "partial", 2, basis.sizes[1], "K");
  check.contiguous(partial, "partial");
  check.on_device(partial, "partial", x.device);
  check.not_null(partial, "partial");
  VK_CHECK(partial.sizes[0] <= 65535, ErrorKind::Value, check.function(),
           ": argument 'partial' must have at most 65535 chunks, got shape ", partial.shape_string());
  VK_DISPATCH_FLOATING(basis.dtype, check.function(), [&] {
    using A = acc_t<scalar_t>;
    if (x.dtype == basis.dtype) {
      launch_project<scalar_t, scalar_t>(x, shift, scale, basis, partial, out, as_stream(stream));
    } else {
      launch_project<A, scalar_t>(x, shift, scale, basis, partial, out, as_stream(stream));
    }
  });
  check_launch(check.function().c_str());
}

void pca_reconstruct_fused_cuda(VK_PCA_RECONSTRUCT_FUSED_ARGS, std::uintptr_t stream) {
  const ArgCheck check("vision_kernels.pca_reconstruct");
  check_reconstruct_arguments(check, coeffs, basis, scale, shift, out, basis.device);
  VK_DISPATCH_FLOATING(basis.dtype, check.function(), [&] {
    using A = acc_t<scalar_t>;
    if (out.dtype == basis.dtype) {
      launch_reconstruct<scalar_t, scalar_t>(coeffs, basis, scale, shift, out, as_stream(stream));
    } else {
      launch_reconstruct<scalar_t, A>(coeffs, basis, scale, shift, out, as_stream(stream));
    }
  });
  check_launch(check.function().c_str());
}

void pca_standardize_cuda(VK_PCA_STANDARDIZE_ARGS, std::uintptr_t stream) {
  const ArgCheck check("vision_kernels.pca_standardize");
  check_standardize_arguments(check, x, shift, scale, out, x.device);
  VK_DISPATCH_FLOATING(x.dtype, check.function(), [&] {
    using A = acc_t<scalar_t>;
    const index_t total = x.sizes[0] * x.sizes[1];
    if (total == 0) return;
    auto kernel = &standardize_kernel<scalar_t>;
    VK_LAUNCH(kernel, dim3(element_blocks(total)), dim3(kElementThreads), 0, as_stream(stream),
              make_view<const scalar_t, 2>(x), shift_pointer<A>(shift), static_cast<const A*>(scale.data),
              make_view<A, 2>(out));
  });
  check_launch(check.function().c_str());
}

void pca_destandardize_cuda(VK_PCA_DESTANDARDIZE_ARGS, std::uintptr_t stream) {
  const ArgCheck check("vision_kernels.pca_destandardize");
  check_destandardize_arguments(check, accumulated, scale, shift, out, accumulated.device);
  VK_DISPATCH_FLOATING(out.dtype, check.function(), [&] {
    using A = acc_t<scalar_t>;
    const index_t total = accumulated.sizes[0] * accumulated.sizes[1];
    if (total == 0) return;
    auto kernel = &destandardize_kernel<A, scalar_t>;
    VK_LAUNCH(kernel, dim3(element_blocks(total)), dim3(kElementThreads), 0, as_stream(stream),
              make_view<const A, 2>(accumulated), static_cast<const A*>(scale.data), shift_pointer<A>(shift),
              make_view<scalar_t, 2>(out));
  });
  check_launch(check.function().c_str());
}

}  // namespace vk::pca
