// CPU kernel for attention_decomposition.
//
// Per token (keep_tokens): an output block (b, lk, hk) is the [N, E] sum over its (layer, head)
// pairs of diag(scale * A) V_h [N, Dh] @ M[l, h] [Dh, E]. Each thread takes (block, range of
// kCols-wide column panels) work items and keeps their [N, range] accumulators in a buffer; pair
// by pair it packs the weighted value rows as [row block][Dh][kRows] accumulation values, and a
// register-blocked kRows x kCols micro-kernel runs each panel of M (read in place when M is
// contiguous float/double, else from a converted copy of the selected layers) over all row blocks
// while the panel is in L1. The buffer is written once to the output with its offset.
// Summed over tokens: the weighted value sum w = sum_i scale A_i v_i [Dh] of each pair is formed
// first, then accumulated as w @ M[l, h] into the block's [E] row.
// Extra memory: per thread one pair's packed values (N x Dh) and the accumulators (N x E), plus
// the converted copy of M for half-precision or strided inputs.
#include <algorithm>
#include <type_traits>
#include <vector>

#include "../common/dtype.h"
#include "../common/parallel.h"
#include "attention_decomp.h"
#include "attention_decomp_ops.h"

namespace vk::attention_decomp {
namespace {

constexpr index_t kRows = 8;   // tokens per micro-tile
constexpr index_t kCols = 32;  // embedding columns per micro-tile

// tile[r][c] += sum_d a[d][r] * b[d * b_stride + c] for one kRows x kCols tile.
template <typename A>
VK_FORCE_INLINE void micro_tile(const A* a, const A* b, index_t b_stride, index_t depth, A* tile) {
  A acc[kRows][kCols];
  for (index_t r = 0; r < kRows; ++r)
    for (index_t c = 0; c < kCols; ++c) acc[r][c] = tile[r * kCols + c];
  for (index_t d = 0; d < depth; ++d) {
    const A* b_row = b + d * b_stride;
    for (index_t r = 0; r < kRows; ++r) {
      const A weighted_value = a[d * kRows + r];
      for (index_t c = 0; c < kCols; ++c) acc[r][c] = accumulate_term(acc[r][c], weighted_value, b_row[c]);
    }
  }
  for (index_t r = 0; r < kRows; ++r)
    for (index_t c = 0; c < kCols; ++c) tile[r * kCols + c] = acc[r][c];
}

VK_CPU_MULTIVERSION void micro_tile_f32(const float* a, const float* b, index_t b_stride, index_t depth, float* tile) {
  micro_tile(a, b, b_stride, depth, tile);
}
VK_CPU_MULTIVERSION void micro_tile_f64(const double* a, const double* b, index_t b_stride, index_t depth,
                                        double* tile) {
  micro_tile(a, b, b_stride, depth, tile);
}
inline void run_micro_tile(const float* a, const float* b, index_t b_stride, index_t depth, float* tile) {
  micro_tile_f32(a, b, b_stride, depth, tile);
}
inline void run_micro_tile(const double* a, const double* b, index_t b_stride, index_t depth, double* tile) {
  micro_tile_f64(a, b, b_stride, depth, tile);
}

// out[e] = accumulate_term(out[e], alpha, row[e]) for e < n (w @ M one row at a time).
template <typename A>
VK_FORCE_INLINE void row_update(A* out, A alpha, const A* row, index_t n) {
  for (index_t e = 0; e < n; ++e) out[e] = accumulate_term(out[e], alpha, row[e]);
}
VK_CPU_MULTIVERSION void row_update_f32(float* out, float alpha, const float* row, index_t n) {
  row_update(out, alpha, row, n);
}
VK_CPU_MULTIVERSION void row_update_f64(double* out, double alpha, const double* row, index_t n) {
  row_update(out, alpha, row, n);
}
inline void run_row_update(float* out, float alpha, const float* row, index_t n) { row_update_f32(out, alpha, row, n); }
inline void run_row_update(double* out, double alpha, const double* row, index_t n) {
  row_update_f64(out, alpha, row, n);
}

template <typename T>
class Decomposition {
 public:
  using A = acc_t<T>;

  Decomposition(const TensorRef& values, const TensorRef& attn, const TensorRef& folded, const TensorRef& scale,
                const TensorRef* offset, const std::vector<index_t>& layers, const Plan& plan)
      : values_(make_view<const T, 5>(values)),
        attn_(make_view<const T, 4>(attn)),
        folded_(make_view<const T, 4>(folded)),
        scale_(make_view<const T, 1>(scale)),
        has_offset_(offset != nullptr),
        layers_(layers),
        plan_(plan) {
    if (has_offset_) offset_ = make_view<const T, 3>(*offset);
    prepare_folded();
  }

  // Row d of M[layers[s], h] as contiguous accumulation values of length E.
  const A* folded_row(index_t s, index_t h, index_t d) const {
    if (direct_) return reinterpret_cast<const A*>(&folded_(layers_[s], h, d, 0));
    return converted_.data() + ((s * plan_.heads + h) * plan_.head_dim + d) * plan_.embed;
  }

  // sum over the block's layers of offset[b, l, :] times the terms each output element sums.
  void block_offset(index_t b, index_t lk, std::vector<A>& sum) const {
    std::fill(sum.begin(), sum.end(), A(0));
    if (!has_offset_) return;
    const index_t first = plan_.keep_layers ? lk : 0;
    const index_t last = plan_.keep_layers ? lk + 1 : plan_.selected;
    for (index_t s = first; s < last; ++s)
      for (index_t e = 0; e < plan_.embed; ++e) sum[e] += Scalar<T>::load(offset_(b, layers_[s], e));
    for (index_t e = 0; e < plan_.embed; ++e) sum[e] = scaled_offset(sum[e], plan_.terms_per_layer());
  }

  A weight(index_t b, index_t l, index_t h, index_t i) const {
    return term_weight(Scalar<T>::load(scale_(b)), Scalar<T>::load(attn_(b, l, h, i)));
  }

  template <typename O>
  void per_token(const View<O, 5>& out) const {
    const index_t tokens = plan_.tokens, head_dim = plan_.head_dim, embed = plan_.embed;
    const index_t row_blocks = ceil_div(tokens, kRows), panels = ceil_div(embed, kCols);
    const index_t pairs = plan_.pairs_per_block();
    // Work item: (output block, range of column panels). Ranges split only when there are too
    // few blocks to keep every thread busy.
    index_t chunks = 1;
    while (plan_.blocks() * chunks < 4 * num_threads() && chunks < panels) chunks *= 2;
    const index_t panels_per_chunk = ceil_div(panels, chunks);
    chunks = ceil_div(panels, panels_per_chunk);
    const index_t tile = kRows * kCols;
    parallel_for(0, plan_.blocks() * chunks, 1, [&](index_t lo, index_t hi) {
      std::vector<A> packed(static_cast<std::size_t>(row_blocks * head_dim * kRows));  // [row block][Dh][kRows]
      std::vector<A> tiles(static_cast<std::size_t>(panels_per_chunk * row_blocks * tile));  // [panel][rb][r][c]
      std::vector<A> padded(static_cast<std::size_t>(head_dim * kCols));  // last, partial column panel
      std::vector<A> offsets(static_cast<std::size_t>(embed));
      for (index_t w = lo; w < hi; ++w) {
        const index_t block = w / chunks;
        const index_t first_panel = (w % chunks) * panels_per_chunk;
        const index_t last_panel = std::min(panels, first_panel + panels_per_chunk);
        index_t b, lk, hk;
        plan_.block(block, b, lk, hk);
        std::fill(tiles.begin(), tiles.end(), A(0));
        // Pair by pair: pack its weighted values once, then every (panel, row block) tile of the
        // range accumulates its Dh-deep product while the panel of M stays in L1.
        for (index_t p = 0; p < pairs; ++p) {
          index_t s, h;
          plan_.pair(lk, hk, p, s, h);
          pack_weighted_values(b, layers_[s], h, packed.data());
          for (index_t panel = first_panel; panel < last_panel; ++panel) {
            const index_t c0 = panel * kCols, cols = std::min(kCols, embed - c0);
            const A* b_panel = folded_row(s, h, 0) + c0;
            index_t b_stride = direct_ ? folded_.stride[2] : embed;
            if (cols < kCols) {  // zero-padded copy so the micro-kernel stays in bounds
              for (index_t d = 0; d < head_dim; ++d) {
                const A* row = folded_row(s, h, d) + c0;
                for (index_t c = 0; c < kCols; ++c) padded[d * kCols + c] = c < cols ? row[c] : A(0);
              }
              b_panel = padded.data();
              b_stride = kCols;
            }
            A* panel_tiles = tiles.data() + (panel - first_panel) * row_blocks * tile;
            for (index_t rb = 0; rb < row_blocks; ++rb)
              run_micro_tile(packed.data() + rb * head_dim * kRows, b_panel, b_stride, head_dim,
                             panel_tiles + rb * tile);
          }
        }
        block_offset(b, lk, offsets);
        for (index_t panel = first_panel; panel < last_panel; ++panel) {
          const index_t c0 = panel * kCols, cols = std::min(kCols, embed - c0);
          const A* panel_tiles = tiles.data() + (panel - first_panel) * row_blocks * tile;
          for (index_t i = 0; i < tokens; ++i) {
            const A* src = panel_tiles + (i / kRows) * tile + (i % kRows) * kCols;
            O* dst = &out(b, lk, hk, i, c0);
            for (index_t c = 0; c < cols; ++c) dst[c] = Scalar<O>::store(src[c] + offsets[c0 + c]);
          }
        }
      }
    });
  }

  // packed[rb][d][r] = scale[b] A[b, l, h, i] v[b, l, i, h, d] for token i = rb * kRows + r (zero past N).
  void pack_weighted_values(index_t b, index_t l, index_t h, A* packed) const {
    const index_t tokens = plan_.tokens, head_dim = plan_.head_dim;
    const index_t row_blocks = ceil_div(tokens, kRows);
    for (index_t rb = 0; rb < row_blocks; ++rb) {
      A* dst = packed + rb * head_dim * kRows;
      for (index_t r = 0; r < kRows; ++r) {
        const index_t i = rb * kRows + r;
        if (i < tokens) {
          const A wgt = weight(b, l, h, i);
          const T* row = &values_(b, l, i, h, 0);
          for (index_t d = 0; d < head_dim; ++d) dst[d * kRows + r] = wgt * Scalar<T>::load(row[d * values_.stride[4]]);
        } else {
          for (index_t d = 0; d < head_dim; ++d) dst[d * kRows + r] = A(0);
        }
      }
    }
  }

  template <typename O>
  void summed_over_tokens(const View<O, 5>& out) const {
    const index_t tokens = plan_.tokens, head_dim = plan_.head_dim, embed = plan_.embed;
    const index_t pairs = plan_.pairs_per_block();
    parallel_for(0, plan_.blocks(), 1, [&](index_t lo, index_t hi) {
      std::vector<A> weighted(static_cast<std::size_t>(head_dim));  // sum_i scale A_i v_i
      std::vector<A> row(static_cast<std::size_t>(embed));
      std::vector<A> offsets(static_cast<std::size_t>(embed));
      for (index_t block = lo; block < hi; ++block) {
        index_t b, lk, hk;
        plan_.block(block, b, lk, hk);
        block_offset(b, lk, offsets);
        std::copy(offsets.begin(), offsets.end(), row.begin());
        for (index_t p = 0; p < pairs; ++p) {
          index_t s, h;
          plan_.pair(lk, hk, p, s, h);
          const index_t l = layers_[s];
          std::fill(weighted.begin(), weighted.end(), A(0));
          for (index_t i = 0; i < tokens; ++i) {
            const A wgt = weight(b, l, h, i);
            for (index_t d = 0; d < head_dim; ++d)
              weighted[d] = accumulate_term(weighted[d], wgt, Scalar<T>::load(values_(b, l, i, h, d)));
          }
          for (index_t d = 0; d < head_dim; ++d) run_row_update(row.data(), weighted[d], folded_row(s, h, d), embed);
        }
        O* dst = &out(b, lk, hk, 0, 0);
        for (index_t e = 0; e < embed; ++e) dst[e] = Scalar<O>::store(row[e]);
      }
    });
  }

 private:
  // M is read in place when it already holds accumulation values with unit stride along E;
  // otherwise the selected layers are converted once into a contiguous [S, H, Dh, E] copy.
  void prepare_folded() {
    direct_ = std::is_same_v<T, A> && folded_.stride[3] == 1;
    if (direct_) return;
    const index_t heads = plan_.heads, head_dim = plan_.head_dim, embed = plan_.embed;
    converted_.resize(static_cast<std::size_t>(plan_.selected * heads * head_dim * embed));
    parallel_for(0, plan_.selected * heads, 1, [&](index_t lo, index_t hi) {
      for (index_t sh = lo; sh < hi; ++sh) {
        const index_t s = sh / heads, h = sh % heads;
        A* dst = converted_.data() + sh * head_dim * embed;
        for (index_t d = 0; d < head_dim; ++d)
          for (index_t e = 0; e < embed; ++e) dst[d * embed + e] = Scalar<T>::load(folded_(layers_[s], h, d, e));
      }
    });
  }

  View<const T, 5> values_;
  View<const T, 4> attn_;
  View<const T, 4> folded_;
  View<const T, 1> scale_;
  View<const T, 3> offset_{};
  bool has_offset_;
  const std::vector<index_t>& layers_;
  Plan plan_;
  bool direct_ = false;
  std::vector<A> converted_;
};

template <typename T, typename O>
void decompose_typed(const TensorRef& values, const TensorRef& attn, const TensorRef& folded, const TensorRef& scale,
                     const TensorRef* offset, const std::vector<index_t>& layers, const Plan& plan,
                     const TensorRef& out_ref) {
  if (out_ref.numel() == 0) return;
  const Decomposition<T> decomposition(values, attn, folded, scale, offset, layers, plan);
  const auto out = make_view<O, 5>(out_ref);
  if (plan.keep_tokens)
    decomposition.per_token(out);
  else
    decomposition.summed_over_tokens(out);
}

}  // namespace

void attention_decomposition_cpu(VK_ATTENTION_DECOMPOSITION_ARGS) {
  const TensorRef* offset_ref = offset ? &*offset : nullptr;
  const ArgCheck check("vision_kernels.attention_decomposition");
  check_attention_decomposition_arguments(check, values, attn, folded, scale, offset_ref, layers, keep_layers, keep_heads,
                                          keep_tokens, out, kCpuDevice);
  const Plan plan = make_plan(values, layers, keep_layers, keep_heads, keep_tokens, folded.sizes[3]);
  VK_DISPATCH_FLOATING(values.dtype, check.function(), [&] {
    using input_t = scalar_t;
    VK_DISPATCH_FLOATING(out.dtype, check.function(), [&] {
      decompose_typed<input_t, scalar_t>(values, attn, folded, scale, offset_ref, layers, plan, out);
    });
  });
}

}  // namespace vk::attention_decomp
