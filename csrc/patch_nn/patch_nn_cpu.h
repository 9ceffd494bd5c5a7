#pragma once

#include <cstdint>

#include "../common/tensor.h"

namespace vk::patch_nn {

// Exact patch nearest neighbours (see patch_nn.h for the arithmetic and the tie rule).
// queries [Tq, Hq, Wq, C], keys [Tk, Hk, Wk, C] (same floating dtype, any strides);
// query_mask / key_mask: bool over the patch grids (any strides); alpha: NaN for plain search.
// out_index: int64 [Tq', Hq', Wq'] flat key index (-1 for masked queries);
// out_distance: D = ssd / n as float32 (float64 for float64 inputs), +inf for masked queries.
void patch_nn_cpu(const TensorRef& queries, const TensorRef& keys, const TensorRef& query_mask,
                  const TensorRef& key_mask, std::int64_t pt, std::int64_t ph, std::int64_t pw, double alpha,
                  const TensorRef& out_index, const TensorRef& out_distance);

// Voting: out[t, y, x, c] = reduction over the query patches covering (t, y, x) of the value
// patch they chose (see vote.h). values [Tv, Hv, Wv, C]; index int64 [Tq', Hq', Wq'] (-1: none);
// weights: float [Tq', Hq', Wq'] per-query weights (stride 0 for none); out [T, H, W, C].
void patch_vote_cpu(const TensorRef& values, const TensorRef& index, const TensorRef& weights, std::int64_t pt,
                    std::int64_t ph, std::int64_t pw, std::int64_t reduction, double sigma_t, double sigma_s,
                    double fill, const TensorRef& out);

// PatchMatch: approximate nearest neighbours by propagation and random search (patch_nn.h).
// key_den: float64 den(k) over the key grid for the normalized score (empty for plain search);
// init_index: int64 first guesses over the query grid (-1: none; stride 0 allowed).
// out_index: int64 flat key indices (-1 for masked queries); out_ssd: float64 ssd of the choice.
void patch_match_cpu(const TensorRef& queries, const TensorRef& keys, const TensorRef& query_mask,
                     const TensorRef& key_mask, const TensorRef& key_den, std::int64_t pt, std::int64_t ph,
                     std::int64_t pw, std::int64_t iterations, std::uint64_t seed, const TensorRef& init_index,
                     const TensorRef& out_index, const TensorRef& out_ssd);

}  // namespace vk::patch_nn
