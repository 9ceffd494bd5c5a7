// CPU kernel for second_order_effects.
//
// The token weights w[b, p, t] = scale[b] A[b, l_s, h, t] / std[b, l_s, t] are formed once ([B, P, N]).
// Each thread then takes blocks of kBlock neurons: it forms the block's coefficients for every image,
// coef[b, p, j] = sum_t w[b, p, t] act[b, t, n_j], vectorized over the block's neurons, and for each neuron
// of the block multiplies the [B, P] coefficients by the neuron's [P, E] direction rows (read in place when
// they are contiguous float/double rows with a uniform pair stride, else converted once per neuron) with a
// register-blocked kRows x kCols micro-kernel over the pair axis. A neuron's direction panel is reused by
// every image of the batch while it is in L1, so the directions are read once per call.
// Extra memory: the token weights (B x P x N) plus, per thread, one block's coefficients (B x P x kBlock),
// one image's activations (N x kBlock) and one neuron's converted rows (P x E) for half or strided inputs.
#include <algorithm>
#include <type_traits>
#include <vector>

#include "../common/dtype.h"
#include "../common/parallel.h"
#include "second_order.h"
#include "second_order_ops.h"

namespace vk::second_order {
namespace {

constexpr index_t kBlock = 16;  // neurons per work item (the coefficient vector width)
constexpr index_t kRows = 4;    // images per micro-tile
constexpr index_t kCols = 32;   // embedding columns per micro-tile

// coef[p * kBlock + j] = sum_t w[p * tokens + t] * act[t * kBlock + j] for every pair p of one image.
template <typename A>
VK_FORCE_INLINE void block_coefficients(const A* w, const A* act, index_t pairs, index_t tokens, A* coef) {
  for (index_t p = 0; p < pairs; ++p) {
    A sums[kBlock] = {};
    const A* weights = w + p * tokens;
    for (index_t t = 0; t < tokens; ++t) {
      const A weight = weights[t];
      const A* neurons = act + t * kBlock;
      for (index_t j = 0; j < kBlock; ++j) sums[j] = accumulate(sums[j], weight, neurons[j]);
    }
    for (index_t j = 0; j < kBlock; ++j) coef[p * kBlock + j] = sums[j];
  }
}

VK_CPU_MULTIVERSION void block_coefficients_f32(const float* w, const float* act, index_t pairs, index_t tokens,
                                                float* coef) {
  block_coefficients(w, act, pairs, tokens, coef);
}
VK_CPU_MULTIVERSION void block_coefficients_f64(const double* w, const double* act, index_t pairs, index_t tokens,
                                                double* coef) {
  block_coefficients(w, act, pairs, tokens, coef);
}
inline void run_block_coefficients(const float* w, const float* act, index_t pairs, index_t tokens, float* coef) {
  block_coefficients_f32(w, act, pairs, tokens, coef);
}
inline void run_block_coefficients(const double* w, const double* act, index_t pairs, index_t tokens, double* coef) {
  block_coefficients_f64(w, act, pairs, tokens, coef);
}

// effect[r][c] = sum_p coef[p][r] * rows[p * row_stride + c]: kRows images x kCols columns of one neuron.
template <typename A>
VK_FORCE_INLINE void effect_tile(const A* coef, const A* rows, index_t row_stride, index_t pairs, A* effect) {
  A acc[kRows][kCols] = {};
  for (index_t p = 0; p < pairs; ++p) {
    const A* direction = rows + p * row_stride;
    const A* weights = coef + p * kRows;
    for (index_t r = 0; r < kRows; ++r)
      for (index_t c = 0; c < kCols; ++c) acc[r][c] = accumulate(acc[r][c], weights[r], direction[c]);
  }
  for (index_t r = 0; r < kRows; ++r)
    for (index_t c = 0; c < kCols; ++c) effect[r * kCols + c] = acc[r][c];
}

VK_CPU_MULTIVERSION void effect_tile_f32(const float* coef, const float* rows, index_t row_stride, index_t pairs,
                                         float* effect) {
  effect_tile(coef, rows, row_stride, pairs, effect);
}
VK_CPU_MULTIVERSION void effect_tile_f64(const double* coef, const double* rows, index_t row_stride, index_t pairs,
                                         double* effect) {
  effect_tile(coef, rows, row_stride, pairs, effect);
}
inline void run_effect_tile(const float* coef, const float* rows, index_t row_stride, index_t pairs, float* effect) {
  effect_tile_f32(coef, rows, row_stride, pairs, effect);
}
inline void run_effect_tile(const double* coef, const double* rows, index_t row_stride, index_t pairs,
                            double* effect) {
  effect_tile_f64(coef, rows, row_stride, pairs, effect);
}

template <typename T>
class SecondOrder {
 public:
  using A = acc_t<T>;

  SecondOrder(const TensorRef& attn, const TensorRef& ln_std, const TensorRef& activations,
              const TensorRef& directions, const TensorRef& scale, const TensorRef* offset,
              const std::vector<index_t>& layers, const Shape& shape)
      : attn_(make_view<const T, 4>(attn)),
        std_(make_view<const T, 3>(ln_std)),
        act_(make_view<const T, 3>(activations)),
        dir_(make_view<const T, 4>(directions)),
        scale_(make_view<const T, 1>(scale)),
        has_offset_(offset != nullptr),
        layers_(layers),
        shape_(shape) {
    if (has_offset_) offset_ = make_view<const T, 2>(*offset);
    // Direction rows of a neuron are read in place when p -> row is one stride and E is unit-strided.
    pair_stride_ = shape_.heads > 1 ? dir_.stride[1] : dir_.stride[0];
    const bool uniform = shape_.selected <= 1 || shape_.heads == 1 || dir_.stride[0] == shape_.heads * dir_.stride[1];
    direct_ = std::is_same_v<T, A> && uniform && (dir_.stride[3] == 1 || shape_.embed <= 1);
  }

  template <typename O>
  void run(const View<O, 3>& out) const {
    const index_t batch = shape_.batch, pairs = shape_.pairs(), tokens = shape_.tokens;
    const index_t neurons = shape_.neurons, embed = shape_.embed;
    std::vector<A> weights(static_cast<std::size_t>(batch * pairs * tokens));  // [B][P][N]
    token_weights(weights.data());
    const index_t row_blocks = ceil_div(batch, kRows), panels = ceil_div(embed, kCols);
    parallel_for(0, ceil_div(neurons, kBlock), 1, [&](index_t lo, index_t hi) {
      std::vector<A> act(static_cast<std::size_t>(tokens * kBlock));           // one image: [t][j]
      std::vector<A> coef(static_cast<std::size_t>(batch * pairs * kBlock));   // [b][p][j]
      std::vector<A> packed(static_cast<std::size_t>(row_blocks * pairs * kRows));  // one neuron: [rb][p][r]
      std::vector<A> converted(direct_ ? 0 : static_cast<std::size_t>(pairs * embed));  // [p][e]
      std::vector<A> padded(static_cast<std::size_t>(pairs * kCols));  // the last, partial column panel
      A effect[kRows * kCols];
      for (index_t block = lo; block < hi; ++block) {
        const index_t first = block * kBlock, count = std::min(kBlock, neurons - first);
        for (index_t b = 0; b < batch; ++b) {
          for (index_t t = 0; t < tokens; ++t)
            for (index_t j = 0; j < kBlock; ++j)
              act[t * kBlock + j] = j < count ? Scalar<T>::load(act_(b, t, first + j)) : A(0);
          run_block_coefficients(weights.data() + b * pairs * tokens, act.data(), pairs, tokens,
                                 coef.data() + b * pairs * kBlock);
        }
        for (index_t j = 0; j < count; ++j) {
          const index_t n = first + j;
          for (index_t rb = 0; rb < row_blocks; ++rb)
            for (index_t p = 0; p < pairs; ++p)
              for (index_t r = 0; r < kRows; ++r) {
                const index_t b = rb * kRows + r;
                packed[(rb * pairs + p) * kRows + r] = b < batch ? coef[(b * pairs + p) * kBlock + j] : A(0);
              }
          index_t row_stride = embed;
          const A* rows = direction_rows(n, converted.data(), row_stride);
          for (index_t panel = 0; panel < panels; ++panel) {
            const index_t c0 = panel * kCols, cols = std::min(kCols, embed - c0);
            const A* panel_rows = rows + c0;
            index_t panel_stride = row_stride;
            if (cols < kCols) {  // never read past the end of a row
              for (index_t p = 0; p < pairs; ++p)
                for (index_t c = 0; c < kCols; ++c) padded[p * kCols + c] = c < cols ? panel_rows[p * row_stride + c] : A(0);
              panel_rows = padded.data();
              panel_stride = kCols;
            }
            for (index_t rb = 0; rb < row_blocks; ++rb) {
              run_effect_tile(packed.data() + rb * pairs * kRows, panel_rows, panel_stride, pairs, effect);
              const index_t rows_here = std::min(kRows, batch - rb * kRows);
              for (index_t r = 0; r < rows_here; ++r) {
                const index_t b = rb * kRows + r;
                O* dst = &out(b, n, c0);
                for (index_t c = 0; c < cols; ++c) dst[c] = Scalar<O>::store(effect[r * kCols + c] + offset(b, c0 + c));
              }
            }
          }
        }
      }
    });
  }

 private:
  // weights[(b * P + p) * N + t] = scale[b] * A[b, l_s, h, t] / std[b, l_s, t] for pair p = (s, h).
  void token_weights(A* weights) const {
    const index_t pairs = shape_.pairs(), tokens = shape_.tokens, heads = shape_.heads;
    parallel_for(0, shape_.batch, 1, [&](index_t lo, index_t hi) {
      for (index_t b = lo; b < hi; ++b) {
        const A scale = Scalar<T>::load(scale_(b));
        for (index_t p = 0; p < pairs; ++p) {
          const index_t l = layers_[p / heads], h = p % heads;
          A* row = weights + (b * pairs + p) * tokens;
          for (index_t t = 0; t < tokens; ++t)
            row[t] = scale * token_weight(Scalar<T>::load(attn_(b, l, h, t)), Scalar<T>::load(std_(b, l, t)));
        }
      }
    });
  }

  // Neuron n's direction rows: row p at rows + p * row_stride, E contiguous accumulation values.
  const A* direction_rows(index_t n, A* converted, index_t& row_stride) const {
    if (shape_.pairs() == 0) return converted;
    if (direct_) {
      row_stride = pair_stride_;
      return reinterpret_cast<const A*>(&dir_(0, 0, n, 0));
    }
    const index_t heads = shape_.heads, embed = shape_.embed;
    for (index_t p = 0; p < shape_.pairs(); ++p)
      for (index_t e = 0; e < embed; ++e) converted[p * embed + e] = Scalar<T>::load(dir_(p / heads, p % heads, n, e));
    row_stride = embed;
    return converted;
  }

  A offset(index_t b, index_t e) const { return has_offset_ ? Scalar<T>::load(offset_(b, e)) : A(0); }

  View<const T, 4> attn_;
  View<const T, 3> std_;
  View<const T, 3> act_;
  View<const T, 4> dir_;
  View<const T, 1> scale_;
  View<const T, 2> offset_{};
  bool has_offset_;
  const std::vector<index_t>& layers_;
  Shape shape_;
  index_t pair_stride_ = 0;
  bool direct_ = false;
};

template <typename T, typename O>
void run_typed(const TensorRef& attn, const TensorRef& ln_std, const TensorRef& activations,
               const TensorRef& directions, const TensorRef& scale, const TensorRef* offset,
               const std::vector<index_t>& layers, const Shape& shape, const TensorRef& out) {
  if (out.numel() == 0) return;
  const SecondOrder<T> kernel(attn, ln_std, activations, directions, scale, offset, layers, shape);
  kernel.run(make_view<O, 3>(out));
}

}  // namespace

void second_order_effects_cpu(VK_SECOND_ORDER_EFFECTS_ARGS) {
  const TensorRef* offset_ref = offset ? &*offset : nullptr;
  const ArgCheck check("vision_kernels.second_order_effects");
  check_second_order_arguments(check, attn, ln_std, activations, directions, scale, offset_ref, layers, out, kCpuDevice);
  const Shape shape = make_shape(attn, activations, directions, layers);
  VK_DISPATCH_FLOATING(attn.dtype, check.function(), [&] {
    using input_t = scalar_t;
    VK_DISPATCH_FLOATING(out.dtype, check.function(), [&] {
      run_typed<input_t, scalar_t>(attn, ln_std, activations, directions, scale, offset_ref, layers, shape, out);
    });
  });
}

}  // namespace vk::second_order
