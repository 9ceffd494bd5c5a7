#pragma once

#include <cstdint>

#include "../common/tensor.h"

namespace vk::patch_nn {

// CUDA (or emulated) twin of patch_nn_cpu, enqueued on `stream`. `wide`: screen in float64 (the
// caller sets it for float64 inputs and for values too large for float32 screening).
// Workspace, allocated by the caller on the device: workspace_f64 float64 [7 (Nq + Nk)],
// workspace_f32 float32 [2 (Nq + Nk)], workspace_i64 int64 [Nq + Nk] (Nq, Nk: grid sizes).
void patch_nn_cuda(const TensorRef& queries, const TensorRef& keys, const TensorRef& query_mask,
                   const TensorRef& key_mask, std::int64_t pt, std::int64_t ph, std::int64_t pw, double alpha,
                   bool wide, const TensorRef& out_index, const TensorRef& out_distance,
                   const TensorRef& workspace_f64, const TensorRef& workspace_f32, const TensorRef& workspace_i64,
                   std::uintptr_t stream);

// CUDA twin of patch_vote_cpu.
void patch_vote_cuda(const TensorRef& values, const TensorRef& index, const TensorRef& weights, std::int64_t pt,
                     std::int64_t ph, std::int64_t pw, std::int64_t reduction, double sigma_t, double sigma_s,
                     double fill, const TensorRef& out, std::uintptr_t stream);

// CUDA twin of patch_match_cpu. Workspace: state_keys int64 [2, Nq], state_scores float64 [4, Nq],
// key_weight float64 [Nk] (w(k) = 1 / den(k); unused for the plain search).
void patch_match_cuda(const TensorRef& queries, const TensorRef& keys, const TensorRef& query_mask,
                      const TensorRef& key_mask, const TensorRef& key_den, std::int64_t pt, std::int64_t ph,
                      std::int64_t pw, std::int64_t iterations, std::uint64_t seed, const TensorRef& init_index,
                      const TensorRef& out_index, const TensorRef& out_ssd, const TensorRef& state_keys,
                      const TensorRef& state_scores, const TensorRef& key_weight, std::uintptr_t stream);

}  // namespace vk::patch_nn
