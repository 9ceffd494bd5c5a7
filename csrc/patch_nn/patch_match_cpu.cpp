// CPU kernel of PatchMatch (the algorithm is in match.h): synchronous steps,
// parallel over queries, each reading only the previous step's keys, so results do not depend on
// the thread count and equal the CUDA kernel's.
#include <vector>

#include "../common/parallel.h"
#include "match.h"
#include "patch_nn_ops.h"

namespace vk::patch_nn {
namespace {

template <typename T>
void patch_match_typed(const TensorRef& queries, const TensorRef& keys, const TensorRef& query_mask,
                       const TensorRef& key_mask, const TensorRef& key_den, index_t pt, index_t ph, index_t pw,
                       index_t iterations, std::uint64_t seed, const TensorRef& init_index,
                       const TensorRef& out_index, const TensorRef& out_ssd) {
  const double* den = key_den.numel() > 0 ? static_cast<const double*>(key_den.data) : nullptr;
  std::vector<double> weight(den ? static_cast<std::size_t>(key_den.numel()) : 0);
  for (std::size_t j = 0; j < weight.size(); ++j) weight[j] = key_reciprocal(den[j]);
  MatchInputs<T> in{static_cast<const T*>(queries.data),
                    static_cast<const T*>(keys.data),
                    make_layout(queries, pt, ph, pw),
                    make_layout(keys, pt, ph, pw),
                    make_grid_mask(query_mask),
                    make_grid_mask(key_mask),
                    den,
                    den ? weight.data() : nullptr,
                    seed};
  const index_t nq = in.lq.grid_size();
  const auto init = make_view<const std::int64_t, 3>(init_index);
  std::vector<MatchState> state(static_cast<std::size_t>(nq));
  std::vector<index_t> old_key(static_cast<std::size_t>(nq));
  parallel_for(0, nq, 64, [&](index_t lo, index_t hi) {
    for (index_t q = lo; q < hi; ++q) {
      const index_t gh = in.lq.grid_h, gw = in.lq.grid_w;
      const index_t guess = init(q / (gh * gw), (q / gw) % gh, q % gw);
      state[q] = match_init(in, q, guess);
    }
  });
  for (index_t iteration = 0; iteration < iterations; ++iteration) {
    for (index_t q = 0; q < nq; ++q) old_key[q] = state[q].key;
    parallel_for(0, nq, 64, [&](index_t lo, index_t hi) {
      for (index_t q = lo; q < hi; ++q) state[q] = match_step(in, old_key.data(), q, iteration, state[q]);
    });
  }
  auto* index = static_cast<std::int64_t*>(out_index.data);
  auto* ssd = static_cast<double*>(out_ssd.data);
  for (index_t q = 0; q < nq; ++q) {
    index[q] = state[q].key;
    ssd[q] = state[q].ssd;
  }
}

}  // namespace

void patch_match_cpu(VK_PATCH_MATCH_ARGS) {
  const ArgCheck check("vision_kernels.patch_match");
  check_patch_match_arguments(check, queries, keys, query_mask, key_mask, key_den, pt, ph, pw, iterations,
                              init_index, out_index, out_ssd, kCpuDevice);
  VK_DISPATCH_FLOATING(queries.dtype, check.function(), [&] {
    patch_match_typed<scalar_t>(queries, keys, query_mask, key_mask, key_den, pt, ph, pw, iterations, seed,
                                init_index, out_index, out_ssd);
  });
}

}  // namespace vk::patch_nn
