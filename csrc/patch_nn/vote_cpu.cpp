// CPU kernel of patch_vote (the arithmetic is in vote.h): one gather per output
// pixel over the query patches covering it, parallel over output rows; no atomics, deterministic.
#include <algorithm>
#include <cmath>
#include <vector>

#include "../common/dtype.h"
#include "../common/parallel.h"
#include "vote.h"
#include "patch_nn_ops.h"

namespace vk::patch_nn {
namespace {

template <typename T>
void vote_typed(const TensorRef& values, const TensorRef& index, const TensorRef& weights, const VoteGeometry& g,
                Reduction reduction, double fill, const TensorRef& out) {
  using A = acc_t<T>;
  const PatchLayout lv = make_layout(values, g.pt, g.ph, g.pw);
  const T* value_data = static_cast<const T*>(values.data);
  const auto idx = make_view<const std::int64_t, 3>(index);
  const auto w = make_view<const A, 3>(weights);
  const auto o = make_view<T, 4>(out);
  const index_t value_grid = lv.grid_size();
  const index_t rows = o.size[0] * o.size[1], width = o.size[2], channels = g.channels;
  std::vector<A> offset_weight(static_cast<std::size_t>(g.pt * g.ph * g.pw), A(1));
  if (reduction == Reduction::Gaussian)
    for (index_t dt = 0; dt < g.pt; ++dt)
      for (index_t dy = 0; dy < g.ph; ++dy)
        for (index_t dx = 0; dx < g.pw; ++dx)
          offset_weight[(dt * g.ph + dy) * g.pw + dx] = static_cast<A>(g.offset_weight(dt, dy, dx));

  parallel_for(0, rows, 4, [&](index_t lo, index_t hi) {
    std::vector<A> sum(static_cast<std::size_t>(channels));
    std::vector<A> samples;
    for (index_t row = lo; row < hi; ++row) {
      const index_t t = row / o.size[1], y = row % o.size[1];
      for (index_t x = 0; x < width; ++x) {
        // Value patch pointers of every covering query, in increasing offset order.
        std::fill(sum.begin(), sum.end(), A(0));
        A total = 0;
        index_t count = 0;
        samples.clear();
        for_each_cover(g, t, y, x, [&](index_t p, index_t dt, index_t dy, index_t dx) {
          const std::int64_t key = idx(p / (g.grid_h * g.grid_w), (p / g.grid_w) % g.grid_h, p % g.grid_w);
          if (key < 0) return;
          VK_CHECK(key < value_grid, ErrorKind::Index, "vision_kernels.patch_vote: argument 'index' must hold flat",
                   " indices into the value patch grid of ", value_grid, " positions (or -1), got ", key);
          const T* v = value_data + lv.offset(key) + dt * lv.stride_t + dy * lv.stride_h + dx * lv.stride_w;
          ++count;
          if (reduction == Reduction::Median) {
            for (index_t c = 0; c < channels; ++c) samples.push_back(Scalar<T>::load(v[c * lv.stride_c]));
            return;
          }
          const A weight = w(p / (g.grid_h * g.grid_w), (p / g.grid_w) % g.grid_h, p % g.grid_w) *
                           offset_weight[(dt * g.ph + dy) * g.pw + dx];
          total += weight;
          for (index_t c = 0; c < channels; ++c) sum[c] += weight * Scalar<T>::load(v[c * lv.stride_c]);
        });
        for (index_t c = 0; c < channels; ++c) {
          A result = static_cast<A>(fill);
          if (count > 0 && reduction == Reduction::Median) {
            // samples holds count x channels values: gather channel c, take the lower median.
            std::vector<A> column(static_cast<std::size_t>(count));
            for (index_t i = 0; i < count; ++i) column[i] = samples[i * channels + c];
            auto middle = column.begin() + (count - 1) / 2;
            std::nth_element(column.begin(), middle, column.end());
            result = *middle;
          } else if (count > 0 && total > A(0)) {
            result = sum[c] / total;
          }
          o(t, y, x, c) = Scalar<T>::store(result);
        }
      }
    }
  });
}

}  // namespace

void patch_vote_cpu(VK_PATCH_VOTE_ARGS) {
  const ArgCheck check("vision_kernels.patch_vote");
  check_vote_arguments(check, values, index, weights, pt, ph, pw, reduction, sigma_t, sigma_s, out, kCpuDevice);
  const VoteGeometry g{pt, ph, pw, values.sizes[3], index.sizes[0], index.sizes[1], index.sizes[2], sigma_t, sigma_s};
  VK_DISPATCH_FLOATING(values.dtype, check.function(), [&] {
    vote_typed<scalar_t>(values, index, weights, g, static_cast<Reduction>(reduction), fill, out);
  });
}

}  // namespace vk::patch_nn
