// CUDA kernels of cc_conv (see cc_conv.h for the equations).
//
// gather_gemm: a 16 x 16 thread block computes 64 output channels x 64 output pixels, 4 x 4 per
// thread. The 64 pixels are an 8 x 8 tile of one group pair (8 output rows of row group gy times 8
// output columns of column group gx), so the whole tile uses one weight matrix. Slices of 16
// reduction indices are staged in shared memory: the weights read through WeightSource (directly, or
// for the input gradient the forward weight through the (phase, tap) pairs), the im2col values
// gathered from the input through the plans' tap tables (padding taps read zero).
//
// weight_grad: a block computes 64 output channels x 64 reduction indices of one group pair,
// reducing over one of S consecutive ranges of the group's (batch, pixel) pairs, 16 at a time, and
// writes its partial sum; the caller adds the S partial sums (deterministic, no atomics).
//
// Both kernels declare __launch_bounds__(256, 1): without the minimum of one block per SM, ptxas trimmed
// registers to fit more blocks and spilled on sm_90.
#include <algorithm>

#include "../common/cuda_utils.h"
#include "../common/dtype.h"
#include "cc_conv.h"
#include "cc_conv_cuda.h"

// Full unrolling of the fixed-size register tiles (nvcc; the host harness needs no hint).
#ifdef __CUDACC__
#define VK_CC_UNROLL _Pragma("unroll")
#else
#define VK_CC_UNROLL
#endif

namespace vk::cc_conv {
namespace {

constexpr int kTile = 64;     // output channels and pixels (or reduction indices) per block
constexpr int kDepth = 16;    // reduction slice staged per step
constexpr int kThreads = 16;  // threads per block side
constexpr int kPerThread = kTile / kThreads;
constexpr int kSide = 8;  // pixel tile: kSide rows x kSide columns
constexpr index_t kMaxGridYZ = 65535;

// Tile `tile` of an axis whose groups are cut into tiles of kSide outputs: its group and the
// position of its first output within the group.
VK_HOST_DEVICE inline void locate_tile(const AxisPlan& plan, index_t tile, index_t* group, index_t* first) {
  for (index_t g = 0; g < plan.groups(); ++g) {
    const index_t tiles = ceil_div(plan.group_size(g), kSide);
    if (tile < tiles) {
      *group = g;
      *first = tile * kSide;
      return;
    }
    tile -= tiles;
  }
  *group = -1;
  *first = 0;
}

// Number of tiles of an axis: sum over groups of ceil(size / kSide). On a GPU the offsets live on the device,
// so the launch uses an upper bound (blocks past the last tile find no group and exit); the host harness
// reads the tables directly and launches exactly the blocks needed (each emulated block is costly).
index_t tile_bound(const AxisPlan& plan) {
#ifdef VK_CUDA_EMULATION
  index_t tiles = 0;
  for (index_t g = 0; g < plan.groups(); ++g) tiles += ceil_div(plan.group_size(g), kSide);
  return std::max<index_t>(tiles, 1);
#else
  return plan.outputs() / kSide + plan.groups();
#endif
}

template <typename T>
__global__ void __launch_bounds__(kThreads * kThreads, 1)
    gather_gemm_kernel(View<const T, 4> in, WeightSource<T> weight, const T* bias, index_t bias_stride,
                       AxisPlan rows, AxisPlan cols, View<T, 4> out, index_t o_tiles, index_t batch_offset) {
  using A = acc_t<T>;
  __shared__ A w_slice[kDepth][kTile + 1];  // [k][output channel]
  __shared__ A x_slice[kDepth][kTile];      // [k][pixel]
  __shared__ index_t pixel_i[kSide], pixel_j[kSide];
  __shared__ index_t tile_group[2];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int thread = ty * kThreads + tx;
  const index_t out_channels = out.size[1];
  const index_t taps_y = rows.taps_per_output(), taps_x = cols.taps_per_output();
  const index_t depth = in.size[1] * taps_y * taps_x;
  const index_t o0 = (static_cast<index_t>(blockIdx.z) % o_tiles) * kTile;
  const index_t b = batch_offset + static_cast<index_t>(blockIdx.z) / o_tiles;

  if (thread == 0) {
    index_t gy, gx, first_y, first_x;
    locate_tile(rows, blockIdx.x, &gy, &first_y);
    locate_tile(cols, blockIdx.y, &gx, &first_x);
    tile_group[0] = gy;
    tile_group[1] = gx;
    for (int s = 0; s < kSide; ++s) {
      pixel_i[s] = (gy >= 0 && first_y + s < rows.group_size(gy)) ? rows.member(gy, first_y + s) : -1;
      pixel_j[s] = (gx >= 0 && first_x + s < cols.group_size(gx)) ? cols.member(gx, first_x + s) : -1;
    }
  }
  __syncthreads();
  const index_t gy = tile_group[0], gx = tile_group[1];
  if (gy < 0 || gx < 0) return;  // past the last tile (block-uniform)

  A acc[kPerThread][kPerThread];
  VK_CC_UNROLL for (int a = 0; a < kPerThread; ++a)
    VK_CC_UNROLL for (int c = 0; c < kPerThread; ++c) acc[a][c] = A(0);

  for (index_t k0 = 0; k0 < depth; k0 += kDepth) {
    for (int e = thread; e < kTile * kDepth; e += kThreads * kThreads) {
      const int o = e / kDepth, kw = e % kDepth;
      A w_value = A(0);
      if (o0 + o < out_channels && k0 + kw < depth) {
        const Tap tap = split_reduction(k0 + kw, taps_y, taps_x);
        w_value = weight.at(gy, gx, o0 + o, tap.channel, tap.t, tap.u);
      }
      w_slice[kw][o] = w_value;
      const int k = e / kTile, p = e % kTile;
      const index_t i = pixel_i[p / kSide], j = pixel_j[p % kSide];
      A value = A(0);
      if (k0 + k < depth && i >= 0 && j >= 0) {
        const Tap tap = split_reduction(k0 + k, taps_y, taps_x);
        value = gather(in, b, tap.channel, rows.taps(i, tap.t), cols.taps(j, tap.u));
      }
      x_slice[k][p] = value;
    }
    __syncthreads();
    VK_CC_UNROLL for (int k = 0; k < kDepth; ++k) {
      A wv[kPerThread], xv[kPerThread];
      VK_CC_UNROLL for (int a = 0; a < kPerThread; ++a) wv[a] = w_slice[k][ty + a * kThreads];
      VK_CC_UNROLL for (int c = 0; c < kPerThread; ++c) xv[c] = x_slice[k][tx + c * kThreads];
      VK_CC_UNROLL for (int a = 0; a < kPerThread; ++a)
        VK_CC_UNROLL for (int c = 0; c < kPerThread; ++c) acc[a][c] += wv[a] * xv[c];
    }
    __syncthreads();
  }
  VK_CC_UNROLL for (int a = 0; a < kPerThread; ++a) {
    const index_t o = o0 + ty + a * kThreads;
    if (o >= out_channels) continue;
    const A shift = bias ? Scalar<T>::load(bias[o * bias_stride]) : A(0);
    VK_CC_UNROLL for (int c = 0; c < kPerThread; ++c) {
      const int p = tx + c * kThreads;
      const index_t i = pixel_i[p / kSide], j = pixel_j[p % kSide];
      if (i >= 0 && j >= 0) out(b, o, i, j) = Scalar<T>::store(acc[a][c] + shift);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads * kThreads, 1)
    weight_grad_kernel(View<const T, 4> grad, View<const T, 4> in, AxisPlan rows, AxisPlan cols, acc_t<T>* partial,
                       index_t splits) {
  using A = acc_t<T>;
  __shared__ A g_slice[kDepth][kTile + 1];  // [pixel][output channel]
  __shared__ A x_slice[kDepth][kTile + 1];  // [pixel][reduction index]
  __shared__ index_t slice_b[kDepth], slice_i[kDepth], slice_j[kDepth];
  __shared__ index_t tap_channel[kTile], tap_t[kTile], tap_u[kTile];  // the block's reduction indices, split
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int thread = ty * kThreads + tx;
  const index_t batch = in.size[0], out_channels = grad.size[1];
  const index_t taps_y = rows.taps_per_output(), taps_x = cols.taps_per_output();
  const index_t depth = in.size[1] * taps_y * taps_x;
  const index_t k0 = static_cast<index_t>(blockIdx.x) * kTile, o0 = static_cast<index_t>(blockIdx.y) * kTile;
  const index_t g = static_cast<index_t>(blockIdx.z) / splits, split = static_cast<index_t>(blockIdx.z) % splits;
  const index_t groups_x = cols.groups(), gy = g / groups_x, gx = g % groups_x;
  const index_t width = cols.group_size(gx), height = rows.group_size(gy), pixels = height * width;
  const index_t total = batch * pixels, per_split = ceil_div(total, splits);
  const index_t begin = split * per_split, end = std::min(total, begin + per_split);

  // Divisions happen once per block: thread t < kDepth follows pixel r = begin + t + kDepth * step of the
  // group as (b, row, column) and advances it by kDepth per slice; threads < kTile split one reduction index.
  index_t b = 0, row = 0, column = 0;
  if (thread < kDepth && pixels > 0) {
    const index_t r = begin + thread;
    b = r / pixels;
    row = (r % pixels) / width;
    column = (r % pixels) % width;
  }
  if (thread < kTile) {
    const Tap tap = split_reduction(std::min(k0 + thread, depth - 1), taps_y, taps_x);
    tap_channel[thread] = tap.channel;
    tap_t[thread] = tap.t;
    tap_u[thread] = tap.u;
  }

  A acc[kPerThread][kPerThread];
  VK_CC_UNROLL for (int a = 0; a < kPerThread; ++a)
    VK_CC_UNROLL for (int c = 0; c < kPerThread; ++c) acc[a][c] = A(0);

  for (index_t r0 = begin; r0 < end; r0 += kDepth) {
    if (thread < kDepth) {
      const bool live = r0 + thread < end;
      slice_b[thread] = live ? b : -1;
      slice_i[thread] = live ? rows.member(gy, row) : 0;
      slice_j[thread] = live ? cols.member(gx, column) : 0;
      column += kDepth;  // advance to pixel r + kDepth
      while (column >= width && live) {
        column -= width;
        if (++row == height) {
          row = 0;
          ++b;
        }
      }
    }
    __syncthreads();
    for (int e = thread; e < kTile * kDepth; e += kThreads * kThreads) {
      const int r = e / kTile, q = e % kTile;
      const index_t pixel_b = slice_b[r], i = slice_i[r], j = slice_j[r];
      g_slice[r][q] = (pixel_b >= 0 && o0 + q < out_channels) ? Scalar<T>::load(grad(pixel_b, o0 + q, i, j)) : A(0);
      A value = A(0);
      if (pixel_b >= 0 && k0 + q < depth)
        value = gather(in, pixel_b, tap_channel[q], rows.taps(i, tap_t[q]), cols.taps(j, tap_u[q]));
      x_slice[r][q] = value;
    }
    __syncthreads();
    VK_CC_UNROLL for (int r = 0; r < kDepth; ++r) {
      A gv[kPerThread], xv[kPerThread];
      VK_CC_UNROLL for (int a = 0; a < kPerThread; ++a) gv[a] = g_slice[r][ty + a * kThreads];
      VK_CC_UNROLL for (int c = 0; c < kPerThread; ++c) xv[c] = x_slice[r][tx + c * kThreads];
      VK_CC_UNROLL for (int a = 0; a < kPerThread; ++a)
        VK_CC_UNROLL for (int c = 0; c < kPerThread; ++c) acc[a][c] += gv[a] * xv[c];
    }
  }
  A* destination = partial + (split * rows.groups() * groups_x + g) * out_channels * depth;
  VK_CC_UNROLL for (int a = 0; a < kPerThread; ++a) {
    const index_t o = o0 + ty + a * kThreads;
    if (o >= out_channels) continue;
    VK_CC_UNROLL for (int c = 0; c < kPerThread; ++c) {
      const index_t k = k0 + tx + c * kThreads;
      if (k < depth) destination[o * depth + k] = acc[a][c];
    }
  }
}

template <typename T>
void launch_gather_gemm(const TensorRef& input, const WeightSource<T>& weight, const TensorRef& bias,
                        const AxisPlan& rows, const AxisPlan& cols, const TensorRef& out, cudaStream_t stream) {
  const index_t batch = input.sizes[0], out_channels = out.sizes[1];
  if (batch == 0 || out_channels == 0 || out.sizes[2] == 0 || out.sizes[3] == 0) return;
  const index_t row_tiles = tile_bound(rows), col_tiles = tile_bound(cols);
  const index_t o_tiles = ceil_div(out_channels, kTile);
  VK_CHECK(col_tiles <= kMaxGridYZ && o_tiles <= kMaxGridYZ, ErrorKind::Value,
           "vision_kernels.cc_conv2d: output too wide for one launch (", col_tiles, " column tiles, ", o_tiles,
           " channel tiles; at most ", kMaxGridYZ, ")");
  const index_t batch_per_launch = std::max<index_t>(1, kMaxGridYZ / o_tiles);
  const T* bias_data = bias.numel() > 0 ? static_cast<const T*>(bias.data) : nullptr;
  const index_t bias_stride = bias.numel() > 0 ? bias.strides[0] : 0;
  auto kernel = &gather_gemm_kernel<T>;
  for (index_t first = 0; first < batch; first += batch_per_launch) {
    const index_t count = std::min(batch_per_launch, batch - first);
    const dim3 grid(static_cast<unsigned>(row_tiles), static_cast<unsigned>(col_tiles),
                    static_cast<unsigned>(count * o_tiles));
    const dim3 block(kThreads, kThreads);
    VK_LAUNCH(kernel, grid, block, 0, stream, make_view<const T, 4>(input), weight, bias_data, bias_stride, rows, cols,
              make_view<T, 4>(out), o_tiles, first);
  }
}

template <typename T>
void launch_weight_grad(const TensorRef& grad, const TensorRef& input, const AxisPlan& rows, const AxisPlan& cols,
                        const TensorRef& partial, cudaStream_t stream) {
  const index_t out_channels = grad.sizes[1];
  const index_t depth = input.sizes[1] * rows.taps_per_output() * cols.taps_per_output();
  const index_t splits = partial.sizes[0], groups = rows.groups() * cols.groups();
  if (out_channels == 0 || depth == 0) return;
  VK_CHECK(groups * splits <= kMaxGridYZ && ceil_div(out_channels, kTile) <= kMaxGridYZ, ErrorKind::Value,
           "vision_kernels.cc_conv2d_grad_weight: too many groups x partial sums for one launch (", groups * splits,
           ")");
  const dim3 grid(static_cast<unsigned>(ceil_div(depth, kTile)), static_cast<unsigned>(ceil_div(out_channels, kTile)),
                  static_cast<unsigned>(groups * splits));
  const dim3 block(kThreads, kThreads);
  auto kernel = &weight_grad_kernel<T>;
  VK_LAUNCH(kernel, grid, block, 0, stream, make_view<const T, 4>(grad), make_view<const T, 4>(input), rows, cols,
            static_cast<acc_t<T>*>(partial.data), splits);
}

}  // namespace

void gather_gemm_cuda(const TensorRef& input, const TensorRef& weight, const TensorRef& bias,
                      const TensorRef& row_pairs, const TensorRef& col_pairs, const TensorRef& row_taps,
                      const TensorRef& row_group, const TensorRef& row_order, const TensorRef& row_offsets,
                      const TensorRef& col_taps, const TensorRef& col_group, const TensorRef& col_order,
                      const TensorRef& col_offsets, const TensorRef& out, std::uintptr_t stream) {
  const ArgCheck check("vision_kernels.cc_conv2d");
  check_gather_gemm_arguments(check, input, weight, bias, row_pairs, col_pairs, out, input.device);
  check_plan(check, "row", row_taps, row_group, row_order, row_offsets, out.sizes[2], input.device);
  check_plan(check, "col", col_taps, col_group, col_order, col_offsets, out.sizes[3], input.device);
  const AxisPlan rows = make_plan(row_taps, row_group, row_order, row_offsets);
  const AxisPlan cols = make_plan(col_taps, col_group, col_order, col_offsets);
  check_plans_cover(check, rows, cols, out.sizes[2], out.sizes[3]);
  check_weight_matches(check, weight, row_pairs, col_pairs, rows, cols);
  VK_DISPATCH_FLOATING(input.dtype, check.function(), [&] {
    launch_gather_gemm<scalar_t>(input, make_weight_source<scalar_t>(weight, row_pairs, col_pairs), bias, rows, cols,
                                 out, as_stream(stream));
  });
  check_launch(check.function().c_str());
}

void weight_grad_cuda(const TensorRef& grad, const TensorRef& input, const TensorRef& row_taps,
                      const TensorRef& row_group, const TensorRef& row_order, const TensorRef& row_offsets,
                      const TensorRef& col_taps, const TensorRef& col_group, const TensorRef& col_order,
                      const TensorRef& col_offsets, const TensorRef& partial, std::uintptr_t stream) {
  const ArgCheck check("vision_kernels.cc_conv2d_grad_weight");
  check_weight_grad_arguments(check, grad, input, partial, input.device, true);
  check_plan(check, "row", row_taps, row_group, row_order, row_offsets, grad.sizes[2], input.device);
  check_plan(check, "col", col_taps, col_group, col_order, col_offsets, grad.sizes[3], input.device);
  const AxisPlan rows = make_plan(row_taps, row_group, row_order, row_offsets);
  const AxisPlan cols = make_plan(col_taps, col_group, col_order, col_offsets);
  check_plans_cover(check, rows, cols, grad.sizes[2], grad.sizes[3]);
  check_plans_match_weight(check, "partial", partial, 1, rows, cols);
  VK_DISPATCH_FLOATING(input.dtype, check.function(),
                       [&] { launch_weight_grad<scalar_t>(grad, input, rows, cols, partial, as_stream(stream)); });
  check_launch(check.function().c_str());
}

}  // namespace vk::cc_conv
