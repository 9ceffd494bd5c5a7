// CUDA kernels of PatchMatch: one thread per query runs match_init / match_step of match.h, one
// launch per synchronous step, ping-ponging the state so every step reads the previous one only.
#include "../common/cuda_utils.h"
#include "../common/dtype.h"
#include "match.h"
#include "patch_nn_ops.h"

namespace vk::patch_nn {
namespace {

constexpr int kBlock = 128;

struct StateBuffers {
  index_t* key;
  double* score;
  double* ssd;
};

template <typename T>
__global__ void match_init_kernel(MatchInputs<T> in, View<const std::int64_t, 3> init,
                                                            StateBuffers out) {
  const index_t q = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= in.lq.grid_size()) return;
  const index_t gh = in.lq.grid_h, gw = in.lq.grid_w;
  const MatchState s = match_init(in, q, init(grid_div(q, gh * gw), grid_mod(grid_div(q, gw), gh), grid_mod(q, gw)));
  out.key[q] = s.key;
  out.score[q] = s.score;
  out.ssd[q] = s.ssd;
}

template <typename T>
__global__ void match_step_kernel(MatchInputs<T> in, StateBuffers from, StateBuffers to,
                                                            index_t iteration) {
  const index_t q = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= in.lq.grid_size()) return;
  const MatchState s = match_step(in, from.key, q, iteration, MatchState{from.key[q], from.score[q], from.ssd[q]});
  to.key[q] = s.key;
  to.score[q] = s.score;
  to.ssd[q] = s.ssd;
}

__global__ void reciprocal_kernel(const double* den, index_t count, double* weight) {
  const index_t k = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k < count) weight[k] = key_reciprocal(den[k]);
}

__global__ void match_output_kernel(StateBuffers state, index_t count,
                                                              std::int64_t* out_index, double* out_ssd) {
  const index_t q = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= count) return;
  out_index[q] = state.key[q];
  out_ssd[q] = state.ssd[q];
}

}  // namespace

void patch_match_cuda(VK_PATCH_MATCH_ARGS, const TensorRef& state_keys, const TensorRef& state_scores,
                      const TensorRef& key_weight, std::uintptr_t stream) {
  const ArgCheck check("vision_kernels.patch_match");
  check_patch_match_arguments(check, queries, keys, query_mask, key_mask, key_den, pt, ph, pw, iterations,
                              init_index, out_index, out_ssd, queries.device);
  const PatchLayout lq = make_layout(queries, pt, ph, pw);
  const index_t nq = lq.grid_size();
  check_cuda_grid(check, lq, "queries");
  check_cuda_grid(check, make_layout(keys, pt, ph, pw), "keys");
  check.dtype(state_keys, "state_keys", {DType::Int64});
  check.dtype(state_scores, "state_scores", {DType::Float64});
  check.at_least(state_keys, "state_keys", 0, 2, "2 buffers");
  check.at_least(state_scores, "state_scores", 0, 4, "4 buffers");
  check.at_least(state_keys, "state_keys", 1, nq, "Nq");
  check.at_least(state_scores, "state_scores", 1, nq, "Nq");
  check.contiguous(state_keys, "state_keys");
  check.contiguous(state_scores, "state_scores");
  const index_t nk = make_layout(keys, pt, ph, pw).grid_size();
  const bool normalized = key_den.numel() > 0;
  if (normalized) {
    check.dtype(key_weight, "key_weight", {DType::Float64});
    check.at_least(key_weight, "key_weight", 0, nk, "Nk");
    check.contiguous(key_weight, "key_weight");
  }
  if (nq == 0) return;
  auto* keys_state = static_cast<index_t*>(state_keys.data);
  auto* scores = static_cast<double*>(state_scores.data);
  const index_t row = state_keys.sizes[1], score_row = state_scores.sizes[1];
  StateBuffers buffers[2] = {{keys_state, scores, scores + 2 * score_row},
                             {keys_state + row, scores + score_row, scores + 3 * score_row}};
  const dim3 grid(static_cast<unsigned>(ceil_div(nq, kBlock))), block(kBlock);
  cudaStream_t s = as_stream(stream);
  auto* weight = normalized ? static_cast<double*>(key_weight.data) : nullptr;
  if (normalized)
    VK_LAUNCH(reciprocal_kernel, dim3(static_cast<unsigned>(ceil_div(nk, kBlock))), dim3(kBlock), 0, s,
              static_cast<const double*>(key_den.data), nk, weight);
  VK_DISPATCH_FLOATING(queries.dtype, check.function(), [&] {
    const MatchInputs<scalar_t> in{static_cast<const scalar_t*>(queries.data),
                                   static_cast<const scalar_t*>(keys.data),
                                   lq,
                                   make_layout(keys, pt, ph, pw),
                                   make_grid_mask(query_mask),
                                   make_grid_mask(key_mask),
                                   normalized ? static_cast<const double*>(key_den.data) : nullptr,
                                   weight,
                                   seed};
    auto init_kernel = &match_init_kernel<scalar_t>;
    auto step_kernel = &match_step_kernel<scalar_t>;
    VK_LAUNCH(init_kernel, grid, block, 0, s, in, make_view<const std::int64_t, 3>(init_index), buffers[0]);
    for (index_t iteration = 0; iteration < iterations; ++iteration)
      VK_LAUNCH(step_kernel, grid, block, 0, s, in, buffers[iteration % 2], buffers[(iteration + 1) % 2], iteration);
  });
  VK_LAUNCH(match_output_kernel, grid, block, 0, s, buffers[iterations % 2], nq,
            static_cast<std::int64_t*>(out_index.data), static_cast<double*>(out_ssd.data));
  check_launch(check.function().c_str());
}

}  // namespace vk::patch_nn
