// CPU kernel for sq_l2_distance: y is packed once into panels of kCols rows laid out
// [D][kCols] (any input strides and dtypes become contiguous accumulation-type values), then
// each thread takes a range of x rows, packs kRows of them at a time as [D][kRows], and a
// register-blocked micro-kernel computes the kRows x kCols block of distances, vectorized over
// the kCols panel columns. Panels are visited in groups that fit in L2 so a group is reused by
// every row block of the thread before the next group is read. Extra memory: the packed y
// (M x D accumulation values) plus kRows x D per thread.
#include "distance_ops.h"

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../common/dtype.h"
#include "../common/parallel.h"
#include "distance.h"

namespace vk::distance {
namespace {

constexpr index_t kRows = 4;                    // x rows per micro-tile
constexpr index_t kCols = 32;                   // y rows per packed panel
constexpr index_t kGroupBytes = 1 << 20;        // panel bytes visited together (L2 blocking)

// block[r * block_stride + c] = sum_d (xs[d][r] - ys[d][c])^2 for one kRows x kCols tile.
template <typename A>
VK_FORCE_INLINE void micro_tile(const A* xs, const A* ys, index_t depth, A* block, index_t block_stride) {
  A acc[kRows][kCols] = {};
  for (index_t d = 0; d < depth; ++d) {
    const A* y_row = ys + d * kCols;
    for (index_t r = 0; r < kRows; ++r) {
      const A x_value = xs[d * kRows + r];
      for (index_t c = 0; c < kCols; ++c) acc[r][c] = accumulate_squared_difference(acc[r][c], x_value, y_row[c]);
    }
  }
  for (index_t r = 0; r < kRows; ++r)
    for (index_t c = 0; c < kCols; ++c) block[r * block_stride + c] = acc[r][c];
}

VK_CPU_MULTIVERSION void micro_tile_f32(const float* xs, const float* ys, index_t depth, float* block,
                                        index_t block_stride) {
  micro_tile(xs, ys, depth, block, block_stride);
}
VK_CPU_MULTIVERSION void micro_tile_f64(const double* xs, const double* ys, index_t depth, double* block,
                                        index_t block_stride) {
  micro_tile(xs, ys, depth, block, block_stride);
}
inline void run_micro_tile(const float* xs, const float* ys, index_t depth, float* block, index_t block_stride) {
  micro_tile_f32(xs, ys, depth, block, block_stride);
}
inline void run_micro_tile(const double* xs, const double* ys, index_t depth, double* block, index_t block_stride) {
  micro_tile_f64(xs, ys, depth, block, block_stride);
}

// packed[d * width + k] = rows[first + k][d] as accumulation type, zero for rows past the end.
template <typename T, typename A = acc_t<T>>
void pack_rows(const View<const T, 2>& rows, index_t first, index_t width, A* packed) {
  const index_t count = std::min(width, rows.size[0] - first);
  const index_t depth = rows.size[1];
  for (index_t k = 0; k < width; ++k) {
    if (k < count) {
      const T* row = rows.row(first + k);
      for (index_t d = 0; d < depth; ++d) packed[d * width + k] = Scalar<T>::load(row[d * rows.stride[1]]);
    } else {
      for (index_t d = 0; d < depth; ++d) packed[d * width + k] = A(0);
    }
  }
}

template <typename T>
void sq_l2_typed(const TensorRef& x_ref, const TensorRef& y_ref, const TensorRef& out_ref) {
  using A = acc_t<T>;
  const auto x = make_view<const T, 2>(x_ref);  // [N, D]
  const auto y = make_view<const T, 2>(y_ref);  // [M, D]
  const auto out = make_view<T, 2>(out_ref);    // [N, M]
  const index_t n = x.size[0], m = y.size[0], depth = x.size[1];
  if (n == 0 || m == 0) return;

  const index_t panels = ceil_div(m, kCols);
  std::vector<A> y_packed(static_cast<std::size_t>(panels * kCols * depth));  // [panels][D][kCols]
  parallel_for(0, panels, 16, [&](index_t lo, index_t hi) {
    for (index_t p = lo; p < hi; ++p) pack_rows(y, p * kCols, kCols, y_packed.data() + p * kCols * depth);
  });

  const index_t panel_bytes = kCols * depth * static_cast<index_t>(sizeof(A));
  const index_t group = std::max<index_t>(1, kGroupBytes / panel_bytes);
  const index_t row_blocks = ceil_div(n, kRows);
  const index_t groups = ceil_div(panels, group);
  // Work item w = (panel group w / row_blocks, row block w % row_blocks): a thread's contiguous
  // range walks row blocks within one group, so the group stays in cache; when there are few
  // rows, threads split the groups instead.
  parallel_for(0, groups * row_blocks, 1, [&](index_t lo, index_t hi) {
    std::vector<A> xs(static_cast<std::size_t>(kRows * depth));  // [D][kRows]
    A tile[kRows * kCols];
    for (index_t w = lo; w < hi; ++w) {
      const index_t b = w % row_blocks;
      const index_t group_lo = (w / row_blocks) * group;
      const index_t group_hi = std::min(panels, group_lo + group);
      pack_rows(x, b * kRows, kRows, xs.data());
      const index_t rows = std::min(kRows, n - b * kRows);
      for (index_t p = group_lo; p < group_hi; ++p) {
        const index_t cols = std::min(kCols, m - p * kCols);
        const A* ys = y_packed.data() + p * kCols * depth;
        if constexpr (std::is_same_v<T, A>) {
          // Full tile of an output with unit column stride: accumulate straight into it.
          if (rows == kRows && cols == kCols && out.stride[1] == 1) {
            run_micro_tile(xs.data(), ys, depth, &out(b * kRows, p * kCols), out.stride[0]);
            continue;
          }
        }
        run_micro_tile(xs.data(), ys, depth, tile, kCols);
        for (index_t r = 0; r < rows; ++r)
          for (index_t c = 0; c < cols; ++c) out(b * kRows + r, p * kCols + c) = Scalar<T>::store(tile[r * kCols + c]);
      }
    }
  });
}

}  // namespace

void sq_l2_distance_cpu(VK_SQ_L2_DISTANCE_ARGS) {
  const ArgCheck check("vision_kernels.sq_l2_distance");
  check_sq_l2_arguments(check, x, y, out, kCpuDevice);
  VK_DISPATCH_FLOATING(x.dtype, check.function(), [&] { sq_l2_typed<scalar_t>(x, y, out); });
}

}  // namespace vk::distance
