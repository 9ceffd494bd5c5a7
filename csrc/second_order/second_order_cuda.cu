// CUDA kernels for second_order_effects, two launches:
//
// 1. coefficients_kernel: a block of 128 threads owns 128 neurons of one (image, pair); it stages the
//    pair's token weights scale * A / std in shared memory, 128 tokens at a time, and each thread sums
//    them against its neuron's activations (consecutive threads read consecutive neurons). The result
//    goes to the caller's workspace coef [B, P, Nn].
// 2. effects_kernel: a 16 x 16 thread block computes a 32-image x 64-column tile of one neuron's effects,
//    2 x 4 per thread, staging 16-deep slices of the coefficients and of the neuron's direction rows in
//    shared memory and accumulating their product over the pairs; the offset is added on the way out.
#include <algorithm>

#include "../common/cuda_utils.h"
#include "../common/dtype.h"
#include "second_order.h"
#include "second_order_ops.h"

#if defined(__CUDACC__)
#define VK_SO_UNROLL _Pragma("unroll")
#else
#define VK_SO_UNROLL
#endif

namespace vk::second_order {
namespace {

constexpr int kCoefThreads = 128;  // neurons (and staged tokens) per coefficient block
constexpr int kImages = 32;        // images per effect tile
constexpr int kColumns = 64;       // embedding columns per effect tile
constexpr int kDepth = 16;         // pairs staged per step
constexpr int kSide = 16;          // threads per block side of the effect kernel
constexpr int kRowsPerThread = kImages / kSide;
constexpr int kColsPerThread = kColumns / kSide;

struct LayerList {
  int index[kMaxLayers];
};

template <typename T>
__global__ void __launch_bounds__(kCoefThreads)
    coefficients_kernel(View<const T, 4> attn, View<const T, 3> ln_std, View<const T, 3> act, View<const T, 1> scale,
                        LayerList layers, Shape shape, View<acc_t<T>, 3> coef, index_t image_offset) {
  using A = acc_t<T>;
  __shared__ A weights[kCoefThreads];
  const index_t b = static_cast<index_t>(blockIdx.z) + image_offset;
  const index_t p = blockIdx.y;
  const index_t l = layers.index[p / shape.heads], h = p % shape.heads;
  const index_t n = static_cast<index_t>(blockIdx.x) * kCoefThreads + threadIdx.x;
  const A image_scale = Scalar<T>::load(scale(b));
  A sum = A(0);
  for (index_t t0 = 0; t0 < shape.tokens; t0 += kCoefThreads) {
    const index_t t = t0 + threadIdx.x;
    weights[threadIdx.x] =
        t < shape.tokens
            ? image_scale * token_weight(Scalar<T>::load(attn(b, l, h, t)), Scalar<T>::load(ln_std(b, l, t)))
            : A(0);
    __syncthreads();
    const index_t count = std::min<index_t>(kCoefThreads, shape.tokens - t0);
    if (n < shape.neurons)
      for (index_t k = 0; k < count; ++k) sum = accumulate(sum, weights[k], Scalar<T>::load(act(b, t0 + k, n)));
    __syncthreads();
  }
  if (n < shape.neurons) coef(b, p, n) = sum;
}

template <typename T, typename O>
__global__ void __launch_bounds__(kSide * kSide)
    effects_kernel(View<const acc_t<T>, 3> coef, View<const T, 4> directions, View<const T, 2> offset,
                   bool has_offset, Shape shape, View<O, 3> out, index_t image_tiles) {
  using A = acc_t<T>;
  __shared__ A coef_slice[kDepth][kImages];        // [pair][image in tile]
  __shared__ A direction_slice[kDepth][kColumns];  // [pair][column in tile]
  const index_t n = static_cast<index_t>(blockIdx.x) / image_tiles;
  const index_t b0 = (static_cast<index_t>(blockIdx.x) % image_tiles) * kImages;
  const index_t c0 = static_cast<index_t>(blockIdx.y) * kColumns;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int thread = ty * kSide + tx;
  const index_t pairs = shape.pairs();

  A acc[kRowsPerThread][kColsPerThread];
  VK_SO_UNROLL for (int r = 0; r < kRowsPerThread; ++r)
    VK_SO_UNROLL for (int c = 0; c < kColsPerThread; ++c) acc[r][c] = A(0);

  for (index_t p0 = 0; p0 < pairs; p0 += kDepth) {
    for (int e = thread; e < kDepth * kImages; e += kSide * kSide) {
      const int d = e / kImages, r = e % kImages;  // consecutive threads: consecutive images
      const index_t p = p0 + d, b = b0 + r;
      coef_slice[d][r] = (p < pairs && b < shape.batch) ? coef(b, p, n) : A(0);
    }
    for (int e = thread; e < kDepth * kColumns; e += kSide * kSide) {
      const int d = e / kColumns, c = e % kColumns;  // consecutive threads: consecutive columns of one row
      const index_t p = p0 + d, column = c0 + c;
      direction_slice[d][c] = (p < pairs && column < shape.embed)
                                  ? Scalar<T>::load(directions(p / shape.heads, p % shape.heads, n, column))
                                  : A(0);
    }
    __syncthreads();
    VK_SO_UNROLL for (int d = 0; d < kDepth; ++d) {
      A weights[kRowsPerThread], rows[kColsPerThread];
      VK_SO_UNROLL for (int r = 0; r < kRowsPerThread; ++r) weights[r] = coef_slice[d][ty + r * kSide];
      VK_SO_UNROLL for (int c = 0; c < kColsPerThread; ++c) rows[c] = direction_slice[d][tx + c * kSide];
      VK_SO_UNROLL for (int r = 0; r < kRowsPerThread; ++r)
        VK_SO_UNROLL for (int c = 0; c < kColsPerThread; ++c) acc[r][c] = accumulate(acc[r][c], weights[r], rows[c]);
    }
    __syncthreads();
  }
  VK_SO_UNROLL for (int r = 0; r < kRowsPerThread; ++r) {
    const index_t b = b0 + ty + r * kSide;
    if (b >= shape.batch) continue;
    VK_SO_UNROLL for (int c = 0; c < kColsPerThread; ++c) {
      const index_t column = c0 + tx + c * kSide;
      if (column >= shape.embed) continue;
      const A shift = has_offset ? Scalar<T>::load(offset(b, column)) : A(0);
      out(b, n, column) = Scalar<O>::store(acc[r][c] + shift);
    }
  }
}

template <typename T, typename O>
void launch(const TensorRef& attn, const TensorRef& ln_std, const TensorRef& activations, const TensorRef& directions,
            const TensorRef& scale, const TensorRef* offset, const std::vector<index_t>& layer_list,
            const Shape& shape, const TensorRef& workspace, const TensorRef& out, cudaStream_t stream,
            const std::string& function) {
  using A = acc_t<T>;
  if (out.numel() == 0) return;
  LayerList layers{};
  for (std::size_t k = 0; k < layer_list.size(); ++k) layers.index[k] = static_cast<int>(layer_list[k]);
  constexpr index_t kMaxGridX = 2147483647, kMaxGridYZ = 65535;
  const index_t pairs = shape.pairs();
  if (pairs > 0) {
    const index_t neuron_tiles = ceil_div(shape.neurons, kCoefThreads);
    VK_CHECK(pairs <= kMaxGridYZ, ErrorKind::Value, function, ": too many (layer, head) pairs for one launch (",
             pairs, ")");
    auto kernel = &coefficients_kernel<T>;
    for (index_t first = 0; first < shape.batch; first += kMaxGridYZ) {
      const dim3 grid(static_cast<unsigned>(neuron_tiles), static_cast<unsigned>(pairs),
                      static_cast<unsigned>(std::min(kMaxGridYZ, shape.batch - first)));
      VK_LAUNCH(kernel, grid, dim3(kCoefThreads), 0, stream, make_view<const T, 4>(attn),
                make_view<const T, 3>(ln_std), make_view<const T, 3>(activations), make_view<const T, 1>(scale),
                layers, shape, make_view<A, 3>(workspace), first);
    }
  }
  const index_t image_tiles = ceil_div(shape.batch, kImages), column_tiles = ceil_div(shape.embed, kColumns);
  VK_CHECK(shape.neurons * image_tiles <= kMaxGridX && column_tiles <= kMaxGridYZ, ErrorKind::Value, function,
           ": output too large for one launch (", shape.neurons * image_tiles, " x ", column_tiles, " tiles)");
  const dim3 grid(static_cast<unsigned>(shape.neurons * image_tiles), static_cast<unsigned>(column_tiles));
  auto kernel = &effects_kernel<T, O>;
  VK_LAUNCH(kernel, grid, dim3(kSide, kSide), 0, stream, make_view<const A, 3>(workspace),
            make_view<const T, 4>(directions), offset ? make_view<const T, 2>(*offset) : View<const T, 2>{},
            offset != nullptr, shape, make_view<O, 3>(out), image_tiles);
}

}  // namespace

void second_order_effects_cuda(VK_SECOND_ORDER_EFFECTS_ARGS, const TensorRef& workspace, std::uintptr_t stream) {
  const TensorRef* offset_ref = offset ? &*offset : nullptr;
  const ArgCheck check("vision_kernels.second_order_effects");
  check_second_order_arguments(check, attn, ln_std, activations, directions, scale, offset_ref, layers, out, attn.device);
  const Shape shape = make_shape(attn, activations, directions, layers);
  check.rank(workspace, "workspace", 3, "[B, P, Nn]");
  check.dtype(workspace, "workspace", {attn.dtype == DType::Float64 ? DType::Float64 : DType::Float32});
  check.size(workspace, "workspace", 0, shape.batch, "B");
  check.size(workspace, "workspace", 1, shape.pairs(), "P, the (layer, head) pairs");
  check.size(workspace, "workspace", 2, shape.neurons, "Nn");
  check.contiguous(workspace, "workspace");
  check.on_device(workspace, "workspace", attn.device);
  check.not_null(workspace, "workspace");
  VK_DISPATCH_FLOATING(attn.dtype, check.function(), [&] {
    using input_t = scalar_t;
    VK_DISPATCH_FLOATING(out.dtype, check.function(), [&] {
      launch<input_t, scalar_t>(attn, ln_std, activations, directions, scale, offset_ref, layers, shape, workspace, out,
                                as_stream(stream), check.function());
    });
  });
  check_launch(check.function().c_str());
}

}  // namespace vk::second_order
