#include "../common/checks.h"
#include "../common/cuda_utils.h"
#include "harness_check_cuda.h"

namespace vk::harness_check {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;

__global__ void block_sum_kernel(View<const float, 1> values, View<float, 1> sums) {
  VK_EXTERN_SHARED(float, partial);  // [blockDim.x]
  const unsigned t = threadIdx.x;
  const index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + t;
  partial[t] = i < values.size[0] ? values(i) : 0.f;
  __syncthreads();
  for (unsigned stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (t < stride) partial[t] += partial[t + stride];
    __syncthreads();
  }
  if (t == 0) sums(blockIdx.x) = partial[0];
}

__global__ void warp_ops_kernel(View<const float, 1> values, View<float, 1> prefix, View<float, 2> warp_stats,
                                float* total, int* positives) {
  const index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const unsigned lane = threadIdx.x % 32;
  const index_t warp = i / 32;
  const bool valid = i < values.size[0];
  const float v = valid ? values(i) : 0.f;

  float scan = v;  // inclusive prefix within the warp
  for (unsigned delta = 1; delta < 32; delta <<= 1) {
    const float up = __shfl_up_sync(kFullMask, scan, delta);
    if (lane >= delta) scan += up;
  }
  float sum = v;
  for (unsigned delta = 16; delta > 0; delta >>= 1) sum += __shfl_down_sync(kFullMask, sum, delta);
  float maximum = valid ? v : -3.0e38f;
  for (int mask = 16; mask > 0; mask >>= 1) maximum = fmaxf(maximum, __shfl_xor_sync(kFullMask, maximum, mask));
  const float first = __shfl_sync(kFullMask, v, 0);
  const unsigned ballot = __ballot_sync(kFullMask, valid && v > 0.f);

  if (valid) prefix(i) = scan;
  if (lane == 0 && warp < warp_stats.size[0]) {
    warp_stats(warp, 0) = sum;
    warp_stats(warp, 1) = maximum;
    warp_stats(warp, 3) = static_cast<float>(__popc(ballot));
  }
  if (lane == 31 && warp < warp_stats.size[0]) warp_stats(warp, 2) = first;

  const int block_positives = __syncthreads_count(valid && v > 0.f);
  if (threadIdx.x == 0) atomicAdd(positives, block_positives);
  if (valid) atomicAdd(total, v);
}

#ifdef VK_CUDA_EMULATION
__global__ void divergent_barrier_kernel(int* flag) {
  if (threadIdx.x == 0) {
    while (atomicAdd(flag, 0) == 0) {
    }
  } else {
    __syncthreads();
    atomicExch(flag, 1);
  }
}
#endif

}  // namespace

void block_sum_cuda(const TensorRef& values, const TensorRef& sums, int block, std::uintptr_t stream) {
  const ArgCheck check("vision_kernels.harness_check.block_sum");
  check.rank(values, "values", 1, "[n]");
  check.rank(sums, "sums", 1, "[blocks]");
  check.dtype(values, "values", {DType::Float32});
  check.dtype(sums, "sums", {DType::Float32});
  VK_CHECK(block > 0 && block <= 1024 && (block & (block - 1)) == 0, ErrorKind::Value, check.function(),
           ": argument 'block' must be a power of two in [1, 1024], got ", block);
  check.size(sums, "sums", 0, ceil_div(values.sizes[0], block), "ceil(n / block)");
  if (values.sizes[0] == 0) return;
  VK_LAUNCH(block_sum_kernel, dim3(static_cast<unsigned>(sums.sizes[0])), dim3(block), block * sizeof(float),
            as_stream(stream), make_view<const float, 1>(values), make_view<float, 1>(sums));
  check_launch(check.function().c_str());
}

void warp_ops_cuda(const TensorRef& values, const TensorRef& prefix, const TensorRef& warp_stats,
                   const TensorRef& total, const TensorRef& positives, int block, std::uintptr_t stream) {
  const ArgCheck check("vision_kernels.harness_check.warp_ops");
  check.rank(values, "values", 1, "[n]");
  check.dtype(values, "values", {DType::Float32});
  check.rank(prefix, "prefix", 1, "[n]");
  check.dtype(prefix, "prefix", {DType::Float32});
  check.size(prefix, "prefix", 0, values.sizes[0], "n");
  check.rank(warp_stats, "warp_stats", 2, "[warps, 4]");
  check.dtype(warp_stats, "warp_stats", {DType::Float32});
  check.size(warp_stats, "warp_stats", 0, ceil_div(values.sizes[0], 32), "ceil(n / 32)");
  check.size(warp_stats, "warp_stats", 1, 4);
  check.rank(total, "total", 1, "[1]");
  check.dtype(total, "total", {DType::Float32});
  check.size(total, "total", 0, 1);
  check.rank(positives, "positives", 1, "[1]");
  check.dtype(positives, "positives", {DType::Int32});
  check.size(positives, "positives", 0, 1);
  VK_CHECK(block >= 32 && block <= 1024 && block % 32 == 0, ErrorKind::Value, check.function(),
           ": argument 'block' must be a multiple of 32 in [32, 1024], got ", block);
  if (values.sizes[0] == 0) return;
  const auto blocks = static_cast<unsigned>(ceil_div(values.sizes[0], block));
  VK_LAUNCH(warp_ops_kernel, dim3(blocks), dim3(block), 0, as_stream(stream), make_view<const float, 1>(values),
            make_view<float, 1>(prefix), make_view<float, 2>(warp_stats), static_cast<float*>(total.data),
            static_cast<int*>(positives.data));
  check_launch(check.function().c_str());
}

#ifdef VK_CUDA_EMULATION
void divergent_barrier_cuda(std::uintptr_t stream) {
  int flag = 0;
  VK_LAUNCH(divergent_barrier_kernel, dim3(1), dim3(64), 0, as_stream(stream), &flag);
}
#endif

}  // namespace vk::harness_check
