// Native entry points of the patch_nn family (exact search, voting, PatchMatch), declared once for both
// devices: one argument list per op, the CUDA twin adds its workspace and the stream last. Bound by
// bind_cpu.cpp / bind_cuda.cpp with VK_BIND_OP; called by vision_kernels/ops/patch_nn/ with prepare's
// native arguments. Every argument is validated by prepare; the checks here only protect memory.
#pragma once

#include <cstdint>

#include "../common/tensor.h"

namespace vk::patch_nn {

// Exact patch nearest neighbours (search.h). queries [Tq, Hq, Wq, C], keys [Tk, Hk, Wk, C] (same floating
// dtype, any strides); query_mask / key_mask: bool over the patch grids (any strides); alpha: NaN for the
// plain search, else finite > 0; wide: screen in float64 (decided by the op: float64 inputs or values too
// large for float32 screening). out_index: int64 [Tq', Hq', Wq'] flat key index (-1 for masked queries);
// out_distance: D = ssd / n as float32 (float64 for float64 inputs), +inf for masked queries.
#define VK_PATCH_NN_ARGS                                                                                        \
  const TensorRef &queries, const TensorRef &keys, const TensorRef &query_mask, const TensorRef &key_mask,      \
      std::int64_t pt, std::int64_t ph, std::int64_t pw, double alpha, bool wide, const TensorRef &out_index,    \
      const TensorRef &out_distance

void patch_nn_cpu(VK_PATCH_NN_ARGS);
// Workspace: workspace_f64 float64 [7 (Nq + Nk)], workspace_f32 float32 [2 (Nq + Nk)], workspace_i64 int64
// [Nq + Nk] (Nq, Nk: grid sizes), contiguous on the inputs' device.
void patch_nn_cuda(VK_PATCH_NN_ARGS, const TensorRef &workspace_f64, const TensorRef &workspace_f32,
                   const TensorRef &workspace_i64, std::uintptr_t stream);

// Voting (vote.h): out[t, y, x, c] = reduction over the query patches covering (t, y, x) of the value patch
// they chose. values [Tv, Hv, Wv, C]; index int64 [Tq', Hq', Wq'] (-1: none); weights: float [Tq', Hq', Wq']
// per-query weights (stride 0 for none); reduction 0 mean, 1 gaussian, 2 median; out [T, H, W, C].
#define VK_PATCH_VOTE_ARGS                                                                                      \
  const TensorRef &values, const TensorRef &index, const TensorRef &weights, std::int64_t pt, std::int64_t ph,  \
      std::int64_t pw, std::int64_t reduction, double sigma_t, double sigma_s, double fill, const TensorRef &out

void patch_vote_cpu(VK_PATCH_VOTE_ARGS);
void patch_vote_cuda(VK_PATCH_VOTE_ARGS, std::uintptr_t stream);

// PatchMatch (match.h): approximate nearest neighbours by propagation and random search. key_den: float64
// den(k) over the key grid for the normalized score (empty for the plain search); init_index: int64 first
// guesses over the query grid (-1: none; stride 0 allowed). out_index: int64 flat key indices (-1 for
// masked queries); out_ssd: float64 ssd of the choice.
#define VK_PATCH_MATCH_ARGS                                                                                     \
  const TensorRef &queries, const TensorRef &keys, const TensorRef &query_mask, const TensorRef &key_mask,      \
      const TensorRef &key_den, std::int64_t pt, std::int64_t ph, std::int64_t pw, std::int64_t iterations,     \
      std::uint64_t seed, const TensorRef &init_index, const TensorRef &out_index, const TensorRef &out_ssd

void patch_match_cpu(VK_PATCH_MATCH_ARGS);
// Workspace: state_keys int64 [2, Nq], state_scores float64 [4, Nq], key_weight float64 [Nk] (w(k) = 1 /
// den(k); unused for the plain search).
void patch_match_cuda(VK_PATCH_MATCH_ARGS, const TensorRef &state_keys, const TensorRef &state_scores,
                      const TensorRef &key_weight, std::uintptr_t stream);

}  // namespace vk::patch_nn
