// CUDA kernel for sq_l2_distance: a 16 x 16 thread block computes a 64 x 64 tile of the output,
// 4 x 4 per thread, staging 16-deep slices of the 64 x rows and 64 y rows in shared memory as
// the accumulation type. Column tiles beyond gridDim.y's limit are covered by repeated launches.
#include <algorithm>

#include "../common/cuda_utils.h"
#include "../common/dtype.h"
#include "distance.h"
#include "distance_ops.h"

namespace vk::distance {
namespace {

constexpr int kTile = 64;      // output rows and columns per block
constexpr int kDepth = 16;     // feature slice staged per step
constexpr int kThreads = 16;   // threads per block side
constexpr int kPerThread = kTile / kThreads;

template <typename T>
__global__ void __launch_bounds__(kThreads * kThreads)
    sq_l2_kernel(View<const T, 2> x, View<const T, 2> y, View<T, 2> out, index_t column_tile_offset) {
  using A = acc_t<T>;
  __shared__ A x_slice[kDepth][kTile];  // [d][row in tile]
  __shared__ A y_slice[kDepth][kTile];  // [d][column in tile]
  const index_t n = x.size[0], m = y.size[0], depth = x.size[1];
  const index_t row0 = static_cast<index_t>(blockIdx.x) * kTile;
  const index_t col0 = (static_cast<index_t>(blockIdx.y) + column_tile_offset) * kTile;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int thread = ty * kThreads + tx;

  A acc[kPerThread][kPerThread];
  for (int a = 0; a < kPerThread; ++a)
    for (int b = 0; b < kPerThread; ++b) acc[a][b] = A(0);

  for (index_t d0 = 0; d0 < depth; d0 += kDepth) {
    for (int e = thread; e < kTile * kDepth; e += kThreads * kThreads) {
      const int r = e / kDepth, d = e % kDepth;
      const index_t feature = d0 + d;
      const bool in_depth = feature < depth;
      x_slice[d][r] = (in_depth && row0 + r < n) ? Scalar<T>::load(x(row0 + r, feature)) : A(0);
      y_slice[d][r] = (in_depth && col0 + r < m) ? Scalar<T>::load(y(col0 + r, feature)) : A(0);
    }
    __syncthreads();
    for (int d = 0; d < kDepth; ++d) {
      A xv[kPerThread], yv[kPerThread];
      for (int a = 0; a < kPerThread; ++a) xv[a] = x_slice[d][ty + a * kThreads];
      for (int b = 0; b < kPerThread; ++b) yv[b] = y_slice[d][tx + b * kThreads];
      for (int a = 0; a < kPerThread; ++a)
        for (int b = 0; b < kPerThread; ++b) acc[a][b] = accumulate_squared_difference(acc[a][b], xv[a], yv[b]);
    }
    __syncthreads();
  }
  for (int a = 0; a < kPerThread; ++a) {
    const index_t i = row0 + ty + a * kThreads;
    if (i >= n) continue;
    for (int b = 0; b < kPerThread; ++b) {
      const index_t j = col0 + tx + b * kThreads;
      if (j < m) out(i, j) = Scalar<T>::store(acc[a][b]);
    }
  }
}

template <typename T>
void launch_sq_l2(const TensorRef& x, const TensorRef& y, const TensorRef& out, cudaStream_t stream) {
  const index_t n = x.sizes[0], m = y.sizes[0];
  if (n == 0 || m == 0) return;
  constexpr index_t kMaxGridY = 65535;
  const index_t row_tiles = ceil_div(n, kTile), column_tiles = ceil_div(m, kTile);
  auto kernel = &sq_l2_kernel<T>;
  for (index_t first = 0; first < column_tiles; first += kMaxGridY) {
    const dim3 grid(static_cast<unsigned>(row_tiles), static_cast<unsigned>(std::min(kMaxGridY, column_tiles - first)));
    const dim3 block(kThreads, kThreads);
    VK_LAUNCH(kernel, grid, block, 0, stream, make_view<const T, 2>(x), make_view<const T, 2>(y),
              make_view<T, 2>(out), first);
  }
}

}  // namespace

void sq_l2_distance_cuda(VK_SQ_L2_DISTANCE_ARGS, std::uintptr_t stream) {
  const ArgCheck check("vision_kernels.sq_l2_distance");
  check_sq_l2_arguments(check, x, y, out, x.device);
  VK_DISPATCH_FLOATING(x.dtype, check.function(), [&] { launch_sq_l2<scalar_t>(x, y, out, as_stream(stream)); });
  check_launch(check.function().c_str());
}

}  // namespace vk::distance
