// PatchMatch: the generator, the candidate steps shared by the CPU loop and the CUDA kernels, and the
// checks of patch_match's entry points.
#pragma once

#include "patch.h"

namespace vk::patch_nn {

// ---------------------------------------------------------------- PatchMatch

// A counter-based generator (SplitMix64 finalizers over the seed and counters): the same stream on
// the CPU, in CUDA kernels and in the PyTorch reference, whatever the threads and their schedule.
VK_HOST_DEVICE VK_FORCE_INLINE std::uint64_t mix64(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
VK_HOST_DEVICE VK_FORCE_INLINE std::uint64_t random_bits(std::uint64_t seed, index_t stream, index_t a, index_t b) {
  return mix64(mix64(mix64(seed ^ static_cast<std::uint64_t>(stream)) ^ static_cast<std::uint64_t>(a)) ^
               static_cast<std::uint64_t>(b));
}
// Uniform integer in [lo, hi] from the top 31 bits (span < 2^31).
VK_HOST_DEVICE VK_FORCE_INLINE index_t uniform_in(std::uint64_t bits, index_t lo, index_t hi) {
  return lo + grid_mod(static_cast<index_t>(bits >> 33), hi - lo + 1);
}

struct MatchState {
  index_t key;   // flat key index, -1 when none yet
  double score;  // ssd, or ssd / den(key) for the normalized search
  double ssd;
};

// Everything one PatchMatch step reads. key_den, key_weight: den(k) and w(k) over the key grid
// (nullptr: plain search).
template <typename T>
struct MatchInputs {
  const T* queries;
  const T* keys;
  PatchLayout lq, lk;
  GridMask query_mask, key_mask;
  const double* key_den;
  const double* key_weight;
  std::uint64_t seed;
};

// Consider key `key` (flat) for the query whose patch starts at q: keep it if it is better.
template <typename T>
VK_HOST_DEVICE VK_FORCE_INLINE void match_consider(const MatchInputs<T>& in, const T* q, index_t key,
                                                   MatchState& best) {
  if (!in.key_mask(key)) return;
  const double den = in.key_den ? in.key_den[key] : 0.0;
  const double stop = stop_bound(best.score, den, in.key_den != nullptr);
  const double ssd = patch_ssd(q, in.lq, in.keys + in.lk.offset(key), in.lk, stop);
  if (ssd > stop) return;
  const double score = in.key_den ? normalized_score(ssd, in.key_weight[key]) : ssd;
  if (better(score, key, best.score, best.key)) best = MatchState{key, score, ssd};
}

// Propagation step of iteration `iteration` (0-based): the propagation looks at neighbours 1 and
// `jump` away along t, y and x, jump = 16, 8, 4, 2, 1, 16, 8, ... (long jumps carry good matches
// across the grid in a few synchronous steps, as in jump flooding).
VK_HOST_DEVICE VK_FORCE_INLINE index_t match_jump(index_t iteration) {
  return index_t(16) >> (iteration % 5);
}

// First state of query `q` (flat): the initial guess `init` (-1: none) and 4 random keys (and the
// first valid key after a random start when none of those is valid).
template <typename T>
VK_DEVICE_INLINE VK_HOST_DEVICE MatchState match_init(const MatchInputs<T>& in, index_t q, index_t init) {
  MatchState best{-1, INFINITY, INFINITY};
  if (!in.query_mask(q)) return best;
  const T* qp = in.queries + in.lq.offset(q);
  const index_t keys = in.lk.grid_size();
  if (init >= 0 && init < keys) match_consider(in, qp, init, best);
  for (index_t trial = 0; trial < 4; ++trial)
    match_consider(in, qp, uniform_in(random_bits(in.seed, 0, q, trial), 0, keys - 1), best);
  // Sparse key masks: scan on from a random start to the first valid key, so every query has one.
  const index_t start = uniform_in(random_bits(in.seed, 0, q, 4), 0, keys - 1);
  for (index_t i = 0; best.key < 0 && i < keys; ++i) match_consider(in, qp, grid_mod(start + i, keys), best);
  return best;
}

// One synchronous (Jacobi) PatchMatch step of query `q`: propagation from the neighbours' keys of
// the previous step (old_key over the query grid), then random search around the best with radii
// halving from the key grid's extent to 1. The result depends only on the previous step's state.
template <typename T>
VK_DEVICE_INLINE VK_HOST_DEVICE MatchState match_step(const MatchInputs<T>& in, const index_t* old_key, index_t q,
                                                      index_t iteration, MatchState best) {
  if (!in.query_mask(q)) return best;
  const PatchLayout& lq = in.lq;
  const PatchLayout& lk = in.lk;
  const T* qp = in.queries + lq.offset(q);
  const index_t qpos[3] = {grid_div(q, lq.grid_h * lq.grid_w), grid_mod(grid_div(q, lq.grid_w), lq.grid_h),
                           grid_mod(q, lq.grid_w)};
  const index_t qext[3] = {lq.grid_t, lq.grid_h, lq.grid_w};
  const index_t kext[3] = {lk.grid_t, lk.grid_h, lk.grid_w};
  const index_t qstride[3] = {lq.grid_h * lq.grid_w, lq.grid_w, 1};
  const index_t kstride[3] = {lk.grid_h * lk.grid_w, lk.grid_w, 1};
  const index_t jump = match_jump(iteration);
  for (int axis = 0; axis < 3; ++axis) {
    for (int which = 0; which < 2; ++which) {
      const index_t distance = which == 0 ? jump : 1;
      if (which == 1 && jump == 1) break;
      for (int sign = -1; sign <= 1; sign += 2) {
        const index_t n = qpos[axis] + sign * distance;
        if (n < 0 || n >= qext[axis]) continue;
        const index_t neighbour = q + (n - qpos[axis]) * qstride[axis];
        const index_t nk = old_key[neighbour];
        if (nk < 0 || !in.query_mask(neighbour)) continue;
        const index_t kpos = grid_mod(grid_div(nk, kstride[axis]), kext[axis]) - sign * distance;
        if (kpos < 0 || kpos >= kext[axis]) continue;
        match_consider(in, qp, nk - sign * distance * kstride[axis], best);
      }
    }
  }
  if (best.key < 0) return best;
  index_t radius = kext[0] > kext[1] ? kext[0] : kext[1];
  radius = radius > kext[2] ? radius : kext[2];
  for (index_t trial = 0; radius >= 1; radius /= 2, ++trial) {
    index_t candidate = 0;
    for (int axis = 0; axis < 3; ++axis) {
      const index_t centre = grid_mod(grid_div(best.key, kstride[axis]), kext[axis]);
      const index_t lo = centre - radius < 0 ? 0 : centre - radius;
      const index_t hi = centre + radius >= kext[axis] ? kext[axis] - 1 : centre + radius;
      candidate += uniform_in(random_bits(in.seed, iteration + 1, q, 3 * trial + axis), lo, hi) * kstride[axis];
    }
    match_consider(in, qp, candidate, best);
  }
  return best;
}

// Checks both entry points of patch_match run.
inline void check_patch_match_arguments(const ArgCheck& check, const TensorRef& queries, const TensorRef& keys,
                                        const TensorRef& query_mask, const TensorRef& key_mask,
                                        const TensorRef& key_den, index_t pt, index_t ph, index_t pw,
                                        index_t iterations, const TensorRef& init_index, const TensorRef& out_index,
                                        const TensorRef& out_ssd, int device) {
  check_search_inputs(check, queries, keys, query_mask, key_mask, pt, ph, pw);
  const PatchLayout lq = make_layout(queries, pt, ph, pw);
  const PatchLayout lk = make_layout(keys, pt, ph, pw);
  VK_CHECK(lk.grid_t < (index_t(1) << 31) && lk.grid_h < (index_t(1) << 31) && lk.grid_w < (index_t(1) << 31),
           ErrorKind::Value, check.function(), ": argument 'keys' has a patch grid dimension of 2^31 or more");
  check_grid_tensor(check, init_index, "init", lq, "(the query patch grid)");
  check.dtype(init_index, "init", {DType::Int64});
  if (key_den.numel() > 0) {
    check_grid_tensor(check, key_den, "key_den", lk, "(the key patch grid)");
    check.dtype(key_den, "key_den", {DType::Float64});
    check.contiguous(key_den, "key_den");
  }
  VK_CHECK(iterations >= 0, ErrorKind::Value, check.function(), ": argument 'iterations' must be >= 0, got ",
           iterations);
  check_grid_tensor(check, out_index, "out_index", lq, "(the query patch grid)");
  check_grid_tensor(check, out_ssd, "out_ssd", lq, "(the query patch grid)");
  check.dtype(out_index, "out_index", {DType::Int64});
  check.dtype(out_ssd, "out_ssd", {DType::Float64});
  check.contiguous(out_index, "out_index");
  check.contiguous(out_ssd, "out_ssd");
  check_devices(check, {&queries, &keys, &query_mask, &key_mask, &init_index, &out_index, &out_ssd}, device);
}

}  // namespace vk::patch_nn
