// Kernels that exercise the CUDA features the host emulation harness emulates (shared memory
// and __syncthreads, warp shuffles and votes, block votes, atomics), so that the harness itself
// is tested against plain loops: by python_tests/test_emulation_harness.py through _C_emu and
// by vk_emu_tests under the sanitizers. They compile for the GPU like every kernel.
#pragma once

#include <cstdint>

#include "../common/tensor.h"

namespace vk::harness_check {

// sums[b] = sum of values[b * block .. (b + 1) * block) by a shared-memory tree reduction
// (block: threads per block, a power of two <= 1024; sums: [ceil(n / block)]).
void block_sum_cuda(const TensorRef& values, const TensorRef& sums, int block, std::uintptr_t stream);

// Warp-level results for float32 values [n] (warps of 32 consecutive elements, zero padded):
//   prefix[i]          inclusive prefix sum within the warp (__shfl_up_sync)
//   warp_stats[w, 0]   warp sum (__shfl_down_sync), [w, 1] warp max (__shfl_xor_sync),
//   warp_stats[w, 2]   value of the warp's lane 0 as broadcast to lane 31 (__shfl_sync),
//   warp_stats[w, 3]   number of positive values (__ballot_sync)
//   total[0]           sum of all values (atomicAdd on float; total starts at zero)
//   positives[0]       number of positive values (__syncthreads_count, then atomicAdd on int)
void warp_ops_cuda(const TensorRef& values, const TensorRef& prefix, const TensorRef& warp_stats,
                   const TensorRef& total, const TensorRef& positives, int block, std::uintptr_t stream);

// A kernel whose barrier is divergent (thread 0 never reaches __syncthreads): it never finishes.
// Defined only under the emulation harness, to test that it aborts instead of hanging.
void divergent_barrier_cuda(std::uintptr_t stream);

}  // namespace vk::harness_check
