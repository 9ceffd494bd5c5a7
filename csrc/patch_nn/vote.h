// Voting (GPNN's fold step): the geometry shared by the CPU loop and the CUDA kernel, and its checks.
#pragma once

#include "patch.h"

namespace vk::patch_nn {

// ---------------------------------------------------------------- voting

// patch_vote: out[t, y, x, c] = reduction over the query positions p = (t, y, x) - (dt, dy, dx) in
// the query grid with index[p] >= 0 of the value v = values[key(index[p]) + (dt, dy, dx), c]:
//   mean:     sum w v / sum w with w = weight[p]                (weight 1 without weights)
//   gaussian: the same with w = weight[p] * g(dt, dy, dx),
//             g = exp(-(dt - ct)^2 / (2 sigma_t^2) - ((dy - cy)^2 + (dx - cx)^2) / (2 sigma_s^2)),
//             (ct, cy, cx) the patch centre ((pt - 1) / 2, ...)
//   median:   the lower median of the v (weights ignored)
// Contributions are visited in increasing (dt, dy, dx); pixels no patch covers get `fill`.
enum class Reduction : int { Mean = 0, Gaussian = 1, Median = 2 };

struct VoteGeometry {
  index_t pt, ph, pw, channels;
  index_t grid_t, grid_h, grid_w;  // query grid (the index array)
  double sigma_t, sigma_s;

  // Weight of the patch offset (dt, dy, dx) for Gaussian voting.
  VK_HOST_DEVICE double offset_weight(index_t dt, index_t dy, index_t dx) const {
    const double ct = 0.5 * static_cast<double>(pt - 1), cy = 0.5 * static_cast<double>(ph - 1),
                 cx = 0.5 * static_cast<double>(pw - 1);
    const double at = static_cast<double>(dt) - ct;
    const double ay = static_cast<double>(dy) - cy;
    const double ax = static_cast<double>(dx) - cx;
    return exp(-(at * at) / (2.0 * sigma_t * sigma_t) - (ay * ay + ax * ax) / (2.0 * sigma_s * sigma_s));
  }
};

// Calls visit(p, dt, dy, dx) for every query position p covering output pixel (t, y, x), in
// increasing (dt, dy, dx).
template <typename Visit>
VK_HOST_DEVICE VK_FORCE_INLINE void for_each_cover(const VoteGeometry& g, index_t t, index_t y, index_t x,
                                                   Visit&& visit) {
  for (index_t dt = 0; dt < g.pt; ++dt) {
    const index_t qt = t - dt;
    if (qt < 0 || qt >= g.grid_t) continue;
    for (index_t dy = 0; dy < g.ph; ++dy) {
      const index_t qy = y - dy;
      if (qy < 0 || qy >= g.grid_h) continue;
      for (index_t dx = 0; dx < g.pw; ++dx) {
        const index_t qx = x - dx;
        if (qx < 0 || qx >= g.grid_w) continue;
        visit((qt * g.grid_h + qy) * g.grid_w + qx, dt, dy, dx);
      }
    }
  }
}

// Checks both entry points of patch_vote run.
inline void check_vote_arguments(const ArgCheck& check, const TensorRef& values, const TensorRef& index,
                                 const TensorRef& weights, index_t pt, index_t ph, index_t pw, index_t reduction,
                                 double sigma_t, double sigma_s, const TensorRef& out, int device) {
  check.rank(values, "values", 4, "[T, H, W, C]");
  check.floating(values, "values");
  check_patch_size(check, values, "values", pt, ph, pw);
  check.rank(index, "index", 3, "[T', H', W'] (the query patch grid)");
  check.dtype(index, "index", {DType::Int64});
  check.rank(weights, "weights", 3, "[T', H', W']");
  check.dtype(weights, "weights", {values.dtype == DType::Float64 ? DType::Float64 : DType::Float32});
  for (int d = 0; d < 3; ++d) check.size(weights, "weights", d, index.sizes[d], "the query patch grid");
  check.rank(out, "out", 4, "[T, H, W, C]");
  check.same_dtype(values, "values", out, "out");
  check.size(out, "out", 0, index.sizes[0] + pt - 1, "T' + pt - 1");
  check.size(out, "out", 1, index.sizes[1] + ph - 1, "H' + ph - 1");
  check.size(out, "out", 2, index.sizes[2] + pw - 1, "W' + pw - 1");
  check.size(out, "out", 3, values.sizes[3], "C");
  VK_CHECK(reduction >= 0 && reduction <= 2, ErrorKind::Value, check.function(),
           ": argument 'reduction' must be 0 (mean), 1 (gaussian) or 2 (median), got ", reduction);
  VK_CHECK(sigma_t > 0 && sigma_s > 0, ErrorKind::Value, check.function(), ": argument 'sigma' must be > 0, got (",
           sigma_t, ", ", sigma_s, ")");
  check_devices(check, {&values, &index, &weights, &out}, device);
}

}  // namespace vk::patch_nn
