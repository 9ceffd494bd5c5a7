// CPU kernel of the exact patch search: GEMM-form screening fused with the running best, then exact
// re-scoring of the keys the screen cannot rule out (search.h explains why that is exact).
//
// Keys are visited in blocks of about 1 MiB of packed values: each block is packed once into
// panels of NR keys laid out [depth][NR] (implicit im2col: read straight from the strided input),
// then the threads share it, each taking blocks of queries (packed [depth][MR] per micro-panel)
// and running the screening micro-kernel over every (query micro-panel, key panel) pair. Per query
// the state is the best score, its ssd, its key, and the screening threshold derived from them.
// Extra memory: O(Nq + Nk) state plus the packed key block and per-thread query blocks.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "../common/dtype.h"
#include "../common/parallel.h"
#include "search.h"
#include "patch_nn_ops.h"
#include "patch_set_cpu.h"
#include "screen_cpu.h"

namespace vk::patch_nn {
namespace {

constexpr index_t kKeyBlockBytes = index_t(1) << 20;  // packed key values visited together
constexpr index_t kPanelsPerQueryBlock = 16;          // query micro-panels handled per work item

// A 64-byte aligned array of trivially copyable values.
template <typename S>
class AlignedArray {
 public:
  explicit AlignedArray(index_t count) : storage_(static_cast<std::size_t>(count) + 64 / sizeof(S)) {
    auto address = reinterpret_cast<std::uintptr_t>(storage_.data());
    data_ = reinterpret_cast<S*>((address + 63) & ~std::uintptr_t(63));
  }
  S* data() { return data_; }
  S& operator[](index_t i) { return data_[i]; }

 private:
  std::vector<S> storage_;
  S* data_;
};

// packed[e * width + j] = patch (first + j) of `set` in screening precision, element e in patch
// order, zero for j >= count; norms[j] = sum_e packed^2 in float64 (exact products for float).
template <typename T, typename S>
void pack_patches(const PatchSet<T>& set, index_t first, index_t count, index_t width, S* packed, double* norms) {
  const PatchLayout& l = set.layout;
  for (index_t j = 0; j < width; ++j) {
    if (j >= count) {
      for (index_t e = 0; e < l.depth(); ++e) packed[e * width + j] = S(0);
      if (norms) norms[j] = 0.0;
      continue;
    }
    const T* patch = set.patch(first + j);
    double norm = 0.0;
    index_t e = 0;
    for (index_t dt = 0; dt < l.pt; ++dt)
      for (index_t dy = 0; dy < l.ph; ++dy) {
        const T* row = patch + dt * l.stride_t + dy * l.stride_h;
        for (index_t dx = 0; dx < l.pw; ++dx)
          for (index_t c = 0; c < l.channels; ++c, ++e) {
            const S v = static_cast<S>(Scalar<T>::load(row[dx * l.stride_w + c * l.stride_c]));
            packed[e * width + j] = v;
            norm += static_cast<double>(v) * static_cast<double>(v);
          }
      }
    if (norms) norms[j] = norm;
  }
}

// Search state of the queries, and the search itself.
struct SearchResult {
  std::vector<double> score;  // ssd (plain) or S (normalized) of the best key
  std::vector<double> ssd;    // ssd of the best key
  std::vector<index_t> key;   // position of the best key in the key set
};

template <typename T, typename S>
class ExactSearch {
 public:
  // key_den, key_weight: den(k) and w(k) per key of `keys` for the normalized search, nullptr for
  // the plain search.
  ExactSearch(const PatchSet<T>& queries, const PatchSet<T>& keys, const double* key_den, const double* key_weight)
      : q_(queries),
        k_(keys),
        den_(key_den),
        weight_(key_weight),
        depth_(queries.layout.depth()),
        bounds_(ScreenBounds::make<S>(queries.layout.depth())) {}

  // seeds[i]: a first key for query i (any valid position in the key set).
  SearchResult run(const std::vector<index_t>& seeds) {
    const index_t nq = q_.size();
    SearchResult result;
    result.score.assign(static_cast<std::size_t>(nq), 0.0);
    result.ssd.assign(static_cast<std::size_t>(nq), 0.0);
    result.key.assign(static_cast<std::size_t>(nq), 0);
    query_norm_.assign(static_cast<std::size_t>(nq), 0.0);
    query_term_.assign(static_cast<std::size_t>(nq), 0.0);
    parallel_for(0, nq, 256, [&](index_t lo, index_t hi) {
      for (index_t i = lo; i < hi; ++i) {
        query_norm_[i] = patch_norm(q_.patch(i), q_.layout);
        query_term_[i] = bounds_.query_term(query_norm_[i]);
        const index_t j = seeds[i];
        const double ssd = patch_ssd(q_.patch(i), q_.layout, k_.patch(j), k_.layout, INFINITY);
        result.ssd[i] = ssd;
        result.score[i] = den_ ? normalized_score(ssd, weight_[j]) : ssd;
        result.key[i] = j;
      }
    });
    result_ = &result;
    const ScreenKernel<S> kernel = screen_kernel();
    const index_t nr = kernel.nr;
    const index_t block = std::max<index_t>(1, kKeyBlockBytes / (depth_ * nr * index_t(sizeof(S)))) * nr;
    const index_t nk = k_.size();
    AlignedArray<S> packed(block * depth_);
    AlignedArray<S> offsets(block), weights(block);
    std::vector<double> norms(static_cast<std::size_t>(block));
    for (index_t first = 0; first < nk; first += block) {
      const index_t count = std::min(block, nk - first);
      const index_t panels = ceil_div(count, nr);
      parallel_for(0, panels, 4, [&](index_t lo, index_t hi) {
        for (index_t p = lo; p < hi; ++p) {
          const index_t in_panel = std::min(nr, count - p * nr);
          pack_patches<T, S>(k_, first + p * nr, in_panel, nr, packed.data() + p * nr * depth_, &norms[p * nr]);
          for (index_t c = 0; c < nr; ++c) {
            const index_t j = p * nr + c;
            const bool real = c < in_panel;
            offsets[j] = real ? bounds_.key_offset<S>(norms[j]) : std::numeric_limits<S>::infinity();
            weights[j] = (real && den_) ? ScreenBounds::key_weight<S>(weight_[first + j]) : S(1);
          }
        }
      });
      const KeyBlock b{first, count, panels, packed.data(), offsets.data(), weights.data(), norms.data()};
      const index_t rows_per_item = kernel.mr * kPanelsPerQueryBlock;
      parallel_for_dynamic(0, ceil_div(nq, rows_per_item), 1, [&](index_t lo, index_t hi) {
        QueryBuffers buffers(kernel, depth_);
        for (index_t item = lo; item < hi; ++item) screen_query_block(kernel, b, item * rows_per_item, buffers);
      });
    }
    result_ = nullptr;
    return result;
  }

 private:
  static constexpr index_t kPending = 8;  // candidates a query keeps before re-scoring them

  struct KeyBlock {
    index_t first, count, panels;
    const S* packed;
    const S* offsets;
    const S* weights;
    const double* norms;  // |k|^2 in float64
  };
  // Per work item: packed queries, their screening terms and thresholds, and the pending candidates
  // of every query row (keys that passed the screen, not re-scored yet).
  struct QueryBuffers {
    QueryBuffers(const ScreenKernel<S>& kernel, index_t depth)
        : packed(kPanelsPerQueryBlock * kernel.mr * depth),
          term(static_cast<std::size_t>(kPanelsPerQueryBlock * kernel.mr)),
          threshold(term.size()),
          values(static_cast<std::size_t>(kernel.mr * kernel.nr)),
          masks(static_cast<std::size_t>(kernel.mr)),
          pending_key(term.size() * kPending),
          pending_value(term.size() * kPending),
          pending_count(term.size(), 0) {}
    AlignedArray<S> packed;
    std::vector<S> term, threshold, values;
    std::vector<std::uint64_t> masks;
    std::vector<index_t> pending_key;
    std::vector<S> pending_value;
    std::vector<int> pending_count;
  };

  static ScreenKernel<S> screen_kernel() {
    if constexpr (std::is_same_v<S, float>) {
      return float_screen_kernel();
    } else {
      return double_screen_kernel();
    }
  }

  // Screening threshold of query i against a score that some key certainly reaches.
  S threshold_for(index_t i, double score) const {
    return den_ ? bounds_.weighted_threshold<S>(score) : bounds_.plain_threshold<S>(score, query_term_[i]);
  }

  // The value the threshold is compared with: v (plain) or z (normalized), as the micro-kernel does.
  S screened(S v, S term, const KeyBlock& b, index_t j) const {
    return den_ ? (v + term) * b.weights[j - b.first] : v;
  }

  // Screen queries [first, first + mr * kPanelsPerQueryBlock) against every panel of the key block.
  void screen_query_block(const ScreenKernel<S>& kernel, const KeyBlock& b, index_t first, QueryBuffers& buf) {
    const index_t mr = kernel.mr, nr = kernel.nr, nq = q_.size();
    const index_t rows = std::min(mr * kPanelsPerQueryBlock, nq - first);
    const index_t micro_panels = ceil_div(rows, mr);
    for (index_t m = 0; m < micro_panels; ++m) {
      const index_t in_panel = std::min(mr, rows - m * mr);
      pack_patches<T, S>(q_, first + m * mr, in_panel, mr, buf.packed.data() + m * mr * depth_, nullptr);
      for (index_t r = 0; r < mr; ++r) {
        const index_t i = first + m * mr + r;
        const bool real = r < in_panel;
        buf.term[m * mr + r] = real ? round_down<S>(query_term_[i]) : S(0);
        buf.threshold[m * mr + r] = real ? threshold_for(i, result_->score[i]) : -std::numeric_limits<S>::infinity();
      }
    }
    const TileFunction<S> tile = den_ ? kernel.weighted : kernel.plain;
    for (index_t p = 0; p < b.panels; ++p) {
      for (index_t m = 0; m < micro_panels; ++m) {
        const ScreenTile<S> t{buf.packed.data() + m * mr * depth_,
                              b.packed + p * nr * depth_,
                              depth_,
                              b.offsets + p * nr,
                              b.weights + p * nr,
                              buf.term.data() + m * mr,
                              buf.threshold.data() + m * mr,
                              buf.values.data(),
                              buf.masks.data()};
        if (tile(t)) collect_tile(kernel, b, p, m * mr, first, buf);
      }
    }
    for (index_t row = 0; row < rows; ++row) flush(b, row, first + row, buf);
  }

  // Keys of a tile that passed the screen become pending candidates of their query; each one
  // tightens the query's threshold through a rigorous upper bound of its score, so most later keys
  // are ruled out without any exact re-scoring.
  void collect_tile(const ScreenKernel<S>& kernel, const KeyBlock& b, index_t p, index_t first_row,
                    index_t first_query, QueryBuffers& buf) {
    for (index_t r = 0; r < kernel.mr; ++r) {
      std::uint64_t mask = buf.masks[r];
      const index_t row = first_row + r, i = first_query + first_row + r;
      while (mask) {
        const index_t c = __builtin_ctzll(mask);
        mask &= mask - 1;
        const index_t j = b.first + p * kernel.nr + c;
        if (j >= b.first + b.count) break;
        const S v = buf.values[r * kernel.nr + c];
        if (screened(v, buf.term[row], b, j) > buf.threshold[row]) continue;  // ruled out meanwhile
        if (buf.pending_count[row] == kPending) {
          flush(b, row, i, buf);
          if (screened(v, buf.term[row], b, j) > buf.threshold[row]) continue;
        }
        const int slot = buf.pending_count[row]++;
        buf.pending_key[row * kPending + slot] = j;
        buf.pending_value[row * kPending + slot] = v;
        double upper = bounds_.upper_ssd(static_cast<double>(v), query_norm_[i], b.norms[j - b.first]);
        if (den_) upper = upper * weight_[j] * (1.0 + 0x1p-50);
        buf.threshold[row] = std::min(buf.threshold[row], threshold_for(i, upper));
      }
    }
  }

  // Exact re-scoring of a query's pending candidates (smallest screening value first), against
  // its best; resets the threshold to the one of the exact best.
  void flush(const KeyBlock& b, index_t row, index_t i, QueryBuffers& buf) {
    const int count = buf.pending_count[row];
    if (count == 0) return;
    index_t* keys = &buf.pending_key[row * kPending];
    S* values = &buf.pending_value[row * kPending];
    for (int a = 1; a < count; ++a)  // insertion sort by value: the likely winner first
      for (int z = a; z > 0 && values[z] < values[z - 1]; --z) {
        std::swap(values[z], values[z - 1]);
        std::swap(keys[z], keys[z - 1]);
      }
    SearchResult& res = *result_;
    const S threshold = buf.threshold[row];
    for (int e = 0; e < count; ++e) {
      const index_t j = keys[e];
      if (screened(values[e], buf.term[row], b, j) > threshold) continue;  // cannot beat another candidate
      const double den = den_ ? den_[j] : 0.0;
      const double stop = stop_bound(res.score[i], den, den_ != nullptr);
      const double ssd = patch_ssd(q_.patch(i), q_.layout, k_.patch(j), k_.layout, stop);
      if (ssd > stop) continue;
      const double score = den_ ? normalized_score(ssd, weight_[j]) : ssd;
      if (better(score, j, res.score[i], res.key[i])) {
        res.score[i] = score;
        res.ssd[i] = ssd;
        res.key[i] = j;
      }
    }
    buf.pending_count[row] = 0;
    buf.threshold[row] = threshold_for(i, res.score[i]);
  }

  const PatchSet<T>& q_;
  const PatchSet<T>& k_;
  const double* den_;
  const double* weight_;
  index_t depth_;
  ScreenBounds bounds_;
  std::vector<double> query_norm_;
  std::vector<double> query_term_;
  SearchResult* result_ = nullptr;
};

// Seeds: the valid key nearest (in flat order) to each query's own position.
template <typename T>
std::vector<index_t> position_seeds(const PatchSet<T>& queries, const PatchSet<T>& keys) {
  std::vector<index_t> seeds(static_cast<std::size_t>(queries.size()));
  for (index_t i = 0; i < queries.size(); ++i)
    seeds[i] = keys.nearest(same_position(queries.layout, queries.flat[i], keys.layout));
  return seeds;
}

template <typename T, typename S>
SearchResult search_typed(const PatchSet<T>& q, const PatchSet<T>& k, double alpha) {
  std::vector<double> den, weight;
  if (!std::isnan(alpha)) {
    // Pass 1: m(k) = min over queries of ssd(q, k), an exact search with the roles swapped.
    const SearchResult minima = ExactSearch<T, S>(k, q, nullptr, nullptr).run(position_seeds(k, q));
    const double alpha_n = mul_rn(alpha, static_cast<double>(q.layout.depth()));
    den.resize(minima.score.size());
    weight.resize(den.size());
    for (std::size_t j = 0; j < den.size(); ++j) {
      den[j] = normalizer(alpha_n, minima.score[j]);
      weight[j] = key_reciprocal(den[j]);
    }
  }
  const bool normalized = !den.empty();
  return ExactSearch<T, S>(q, k, normalized ? den.data() : nullptr, normalized ? weight.data() : nullptr)
      .run(position_seeds(q, k));
}

template <typename T>
void patch_nn_typed(const ArgCheck& check, const TensorRef& queries, const TensorRef& keys,
                    const TensorRef& query_mask, const TensorRef& key_mask, index_t pt, index_t ph, index_t pw,
                    double alpha, bool wide, const TensorRef& out_index, const TensorRef& out_distance) {
  const PatchLayout lq = make_layout(queries, pt, ph, pw);
  const PatchLayout lk = make_layout(keys, pt, ph, pw);
  const PatchSet<T> q = make_patch_set<T>(queries, query_mask, lq);
  const PatchSet<T> k = make_patch_set<T>(keys, key_mask, lk);
  VK_CHECK(q.size() > 0 || lq.grid_size() == 0, ErrorKind::Value, check.function(),
           ": argument 'query_mask' must select at least one query position, got all False");
  VK_CHECK(k.size() > 0, ErrorKind::Value, check.function(),
           ": argument 'key_mask' must select at least one key position, got all False");
  auto* index = static_cast<std::int64_t*>(out_index.data);
  const index_t grid = lq.grid_size();
  std::fill(index, index + grid, std::int64_t(-1));
  auto store_distance = [&](index_t flat, double value) {
    if (out_distance.dtype == DType::Float64)
      static_cast<double*>(out_distance.data)[flat] = value;
    else
      static_cast<float*>(out_distance.data)[flat] = static_cast<float>(value);
  };
  for (index_t f = 0; f < grid; ++f) store_distance(f, std::numeric_limits<double>::infinity());
  if (q.size() == 0) return;

  const SearchResult best = (wide || std::is_same_v<T, double>) ? search_typed<T, double>(q, k, alpha) : search_typed<T, float>(q, k, alpha);
  const double n = static_cast<double>(lq.depth());
  for (index_t i = 0; i < q.size(); ++i) {
    index[q.flat[i]] = k.flat[best.key[i]];
    store_distance(q.flat[i], div_rn(best.ssd[i], n));
  }
}

}  // namespace

void patch_nn_cpu(VK_PATCH_NN_ARGS) {
  const ArgCheck check("vision_kernels.patch_nn");
  check_patch_nn_arguments(check, queries, keys, query_mask, key_mask, pt, ph, pw, out_index, out_distance,
                           kCpuDevice);
  check_alpha(check, alpha);
  VK_DISPATCH_FLOATING(queries.dtype, check.function(), [&] {
    patch_nn_typed<scalar_t>(check, queries, keys, query_mask, key_mask, pt, ph, pw, alpha, wide, out_index,
                             out_distance);
  });
}

}  // namespace vk::patch_nn
