// CUDA kernels for attention_decomposition (equation in attention_decomp.h).
//
// Per token: a 16 x 16 thread block computes a 64-token x 64-column tile of one output block
// (b, lk, hk), 4 x 4 per thread. For each (layer, head) pair of the block it stages 16-deep
// slices of the weighted values scale * A_i * v_i (64 tokens) and of M[l, h] (64 columns) in
// shared memory as accumulation values and accumulates their product, so a block's pairs are
// summed in registers and each output element is written once.
// Summed over tokens: a block of 128 threads owns 128 columns of one output block; per pair the
// threads first form w = sum_i scale A_i v_i [Dh] in shared memory, then each thread adds
// w @ M[l, h] for its column.
#include <algorithm>

#include "../common/cuda_utils.h"
#include "../common/dtype.h"
#include "attention_decomp.h"
#include "attention_decomp_ops.h"

// Full unrolling keeps the per-thread accumulator tiles in registers (nvcc only).
#if defined(__CUDACC__)
#define VK_AD_UNROLL _Pragma("unroll")
#else
#define VK_AD_UNROLL
#endif

namespace vk::attention_decomp {
namespace {

constexpr int kTile = 64;     // tokens and columns per block tile
constexpr int kDepth = 16;    // head-dimension slice staged per step
constexpr int kThreads = 16;  // threads per block side
constexpr int kPerThread = kTile / kThreads;
constexpr int kPooledThreads = 128;

struct LayerList {
  int count;
  int index[kMaxSelectedLayers];
};

template <typename T>
struct Inputs {
  View<const T, 5> values;  // [B, L, N, H, Dh]
  View<const T, 4> attn;    // [B, L, H, N]
  View<const T, 4> folded;  // [L, H, Dh, E]
  View<const T, 1> scale;   // [B]
  View<const T, 3> offset;  // [B, L, E], valid when has_offset
  bool has_offset;
};

// terms_per_layer * sum over the block's layers of offset[b, l, e].
template <typename T>
__device__ acc_t<T> block_offset(const Inputs<T>& in, const LayerList& layers, const Plan& plan, index_t b, index_t lk,
                                 index_t e) {
  using A = acc_t<T>;
  if (!in.has_offset) return A(0);
  const index_t first = plan.keep_layers ? lk : 0;
  const index_t last = plan.keep_layers ? lk + 1 : plan.selected;
  A sum = A(0);
  for (index_t s = first; s < last; ++s) sum += Scalar<T>::load(in.offset(b, layers.index[s], e));
  return scaled_offset(sum, plan.terms_per_layer());
}

template <typename T, typename O>
__global__ void __launch_bounds__(kThreads * kThreads, 1)
    per_token_kernel(Inputs<T> in, LayerList layers, Plan plan, View<O, 5> out, index_t row_tiles) {
  using A = acc_t<T>;
  __shared__ A value_slice[kDepth][kTile];   // [d][token in tile]
  __shared__ A folded_slice[kDepth][kTile];  // [d][column in tile]
  const index_t block = static_cast<index_t>(blockIdx.x) / row_tiles;
  const index_t row0 = (static_cast<index_t>(blockIdx.x) % row_tiles) * kTile;
  const index_t col0 = static_cast<index_t>(blockIdx.y) * kTile;
  index_t b, lk, hk;
  plan.block(block, b, lk, hk);
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int thread = ty * kThreads + tx;
  const A scale = Scalar<T>::load(in.scale(b));

  A acc[kPerThread][kPerThread];
  VK_AD_UNROLL for (int r = 0; r < kPerThread; ++r)
    VK_AD_UNROLL for (int c = 0; c < kPerThread; ++c) acc[r][c] = A(0);

  const index_t pairs = plan.pairs_per_block();
  for (index_t p = 0; p < pairs; ++p) {
    index_t s, h;
    plan.pair(lk, hk, p, s, h);
    const index_t l = layers.index[s];
    // Base pointers of this pair's rows (fewer live index registers than 5-d view lookups).
    const T* value_rows = &in.values(b, l, 0, h, 0);
    const T* attn_row = &in.attn(b, l, h, 0);
    const T* folded_rows = &in.folded(l, h, 0, 0);
    for (index_t d0 = 0; d0 < plan.head_dim; d0 += kDepth) {
      for (int e = thread; e < kTile * kDepth; e += kThreads * kThreads) {
        const int r = e / kDepth, d = e % kDepth;  // consecutive threads: consecutive d of one token
        const index_t token = row0 + r, feature = d0 + d;
        A value = A(0);
        if (token < plan.tokens && feature < plan.head_dim)
          value = term_weight(scale, Scalar<T>::load(attn_row[token * in.attn.stride[3]])) *
                  Scalar<T>::load(value_rows[token * in.values.stride[2] + feature * in.values.stride[4]]);
        value_slice[d][r] = value;
        const int fd = e / kTile, fc = e % kTile;  // consecutive threads: consecutive columns of one row
        const index_t column = col0 + fc, folded_row = d0 + fd;
        folded_slice[fd][fc] = (column < plan.embed && folded_row < plan.head_dim)
                                   ? Scalar<T>::load(folded_rows[folded_row * in.folded.stride[2] +
                                                                 column * in.folded.stride[3]])
                                   : A(0);
      }
      __syncthreads();
      VK_AD_UNROLL for (int d = 0; d < kDepth; ++d) {
        A weighted[kPerThread], folded[kPerThread];
        VK_AD_UNROLL for (int r = 0; r < kPerThread; ++r) weighted[r] = value_slice[d][ty + r * kThreads];
        VK_AD_UNROLL for (int c = 0; c < kPerThread; ++c) folded[c] = folded_slice[d][tx + c * kThreads];
        VK_AD_UNROLL for (int r = 0; r < kPerThread; ++r)
          VK_AD_UNROLL for (int c = 0; c < kPerThread; ++c) acc[r][c] = accumulate_term(acc[r][c], weighted[r], folded[c]);
      }
      __syncthreads();
    }
  }
  VK_AD_UNROLL for (int c = 0; c < kPerThread; ++c) {
    const index_t column = col0 + tx + c * kThreads;
    if (column >= plan.embed) continue;
    const A offset = block_offset(in, layers, plan, b, lk, column);
    VK_AD_UNROLL for (int r = 0; r < kPerThread; ++r) {
      const index_t token = row0 + ty + r * kThreads;
      if (token < plan.tokens) out(b, lk, hk, token, column) = Scalar<O>::store(acc[r][c] + offset);
    }
  }
}

template <typename T, typename O>
__global__ void __launch_bounds__(kPooledThreads)
    summed_tokens_kernel(Inputs<T> in, LayerList layers, Plan plan, View<O, 5> out) {
  using A = acc_t<T>;
  VK_EXTERN_SHARED(A, weighted);  // [Dh]: sum_i scale A_i v_i of the current pair
  const index_t block = blockIdx.x;
  const index_t column = static_cast<index_t>(blockIdx.y) * kPooledThreads + threadIdx.x;
  index_t b, lk, hk;
  plan.block(block, b, lk, hk);
  const A scale = Scalar<T>::load(in.scale(b));
  A acc = A(0);
  const index_t pairs = plan.pairs_per_block();
  for (index_t p = 0; p < pairs; ++p) {
    index_t s, h;
    plan.pair(lk, hk, p, s, h);
    const index_t l = layers.index[s];
    for (index_t d = threadIdx.x; d < plan.head_dim; d += kPooledThreads) {
      A sum = A(0);
      for (index_t i = 0; i < plan.tokens; ++i)
        sum = accumulate_term(sum, term_weight(scale, Scalar<T>::load(in.attn(b, l, h, i))),
                              Scalar<T>::load(in.values(b, l, i, h, d)));
      weighted[d] = sum;
    }
    __syncthreads();
    if (column < plan.embed)
      for (index_t d = 0; d < plan.head_dim; ++d)
        acc = accumulate_term(acc, weighted[d], Scalar<T>::load(in.folded(l, h, d, column)));
    __syncthreads();
  }
  if (column < plan.embed)
    out(b, lk, hk, 0, column) = Scalar<O>::store(acc + block_offset(in, layers, plan, b, lk, column));
}

template <typename T, typename O>
void launch(const TensorRef& values, const TensorRef& attn, const TensorRef& folded, const TensorRef& scale,
            const TensorRef* offset, const std::vector<index_t>& layer_list, const Plan& plan, const TensorRef& out,
            cudaStream_t stream, const std::string& function) {
  if (out.numel() == 0) return;
  Inputs<T> in;
  in.values = make_view<const T, 5>(values);
  in.attn = make_view<const T, 4>(attn);
  in.folded = make_view<const T, 4>(folded);
  in.scale = make_view<const T, 1>(scale);
  in.has_offset = offset != nullptr;
  in.offset = in.has_offset ? make_view<const T, 3>(*offset) : View<const T, 3>{};
  LayerList layers{};
  layers.count = static_cast<int>(layer_list.size());
  for (std::size_t k = 0; k < layer_list.size(); ++k) layers.index[k] = static_cast<int>(layer_list[k]);
  const auto out_view = make_view<O, 5>(out);
  constexpr index_t kMaxGridX = 2147483647, kMaxGridY = 65535;
  if (plan.keep_tokens) {
    const index_t row_tiles = ceil_div(plan.tokens, kTile), column_tiles = ceil_div(plan.embed, kTile);
    VK_CHECK(plan.blocks() * row_tiles <= kMaxGridX && column_tiles <= kMaxGridY, ErrorKind::Value, function,
             ": output too large for one launch (", plan.blocks() * row_tiles, " x ", column_tiles, " tiles)");
    const dim3 grid(static_cast<unsigned>(plan.blocks() * row_tiles), static_cast<unsigned>(column_tiles));
    const dim3 block(kThreads, kThreads);
    auto kernel = &per_token_kernel<T, O>;
    VK_LAUNCH(kernel, grid, block, 0, stream, in, layers, plan, out_view, row_tiles);
  } else {
    const index_t column_tiles = ceil_div(plan.embed, kPooledThreads);
    const std::size_t shared = static_cast<std::size_t>(plan.head_dim) * sizeof(acc_t<T>);
    VK_CHECK(plan.blocks() <= kMaxGridX && column_tiles <= kMaxGridY, ErrorKind::Value, function,
             ": output too large for one launch (", plan.blocks(), " x ", column_tiles, " blocks)");
    VK_CHECK(shared <= 48 * 1024, ErrorKind::Value, function, ": argument 'values' head size ", plan.head_dim,
             " needs more than 48 KiB of shared memory");
    const dim3 grid(static_cast<unsigned>(plan.blocks()), static_cast<unsigned>(column_tiles));
    auto kernel = &summed_tokens_kernel<T, O>;
    VK_LAUNCH(kernel, grid, dim3(kPooledThreads), shared, stream, in, layers, plan, out_view);
  }
}

}  // namespace

void attention_decomposition_cuda(VK_ATTENTION_DECOMPOSITION_ARGS, std::uintptr_t stream) {
  const TensorRef* offset_ref = offset ? &*offset : nullptr;
  const ArgCheck check("vision_kernels.attention_decomposition");
  check_attention_decomposition_arguments(check, values, attn, folded, scale, offset_ref, layers, keep_layers, keep_heads,
                                          keep_tokens, out, values.device);
  const Plan plan = make_plan(values, layers, keep_layers, keep_heads, keep_tokens, folded.sizes[3]);
  VK_DISPATCH_FLOATING(values.dtype, check.function(), [&] {
    using input_t = scalar_t;
    VK_DISPATCH_FLOATING(out.dtype, check.function(), [&] {
      launch<input_t, scalar_t>(values, attn, folded, scale, offset_ref, layers, plan, out, as_stream(stream),
                                check.function());
    });
  });
  check_launch(check.function().c_str());
}

}  // namespace vk::attention_decomp
