// CUDA kernel of patch_vote: one thread per output element (t, y, x, c) gathers the proposals of
// the query patches covering it (vote.h); the median is selected by counting, so no
// per-thread buffer is needed.
#include "../common/cuda_utils.h"
#include "../common/dtype.h"
#include "vote.h"
#include "patch_nn_ops.h"

namespace vk::patch_nn {
namespace {

constexpr int kBlock = 256;

template <typename T>
struct VoteArgs {
  const T* values;
  PatchLayout lv;
  View<const std::int64_t, 3> index;
  View<const acc_t<T>, 3> weights;
  View<T, 4> out;
  VoteGeometry g;
  int reduction;
  double fill;
};

template <typename T>
VK_DEVICE VK_FORCE_INLINE acc_t<T> proposal(const VoteArgs<T>& a, index_t p, index_t dt, index_t dy, index_t dx,
                                          index_t c, bool& valid) {
  const index_t gh = a.g.grid_h, gw = a.g.grid_w;
  const std::int64_t key = a.index(grid_div(p, gh * gw), grid_mod(grid_div(p, gw), gh), grid_mod(p, gw));
  valid = key >= 0 && key < a.lv.grid_size();
  if (!valid) return acc_t<T>(0);
  return Scalar<T>::load(a.values[a.lv.offset(key) + dt * a.lv.stride_t + dy * a.lv.stride_h + dx * a.lv.stride_w +
                                  c * a.lv.stride_c]);
}

template <typename T>
__global__ void vote_kernel(VoteArgs<T> a) {
  using A = acc_t<T>;
  const index_t channels = a.out.size[3], width = a.out.size[2], height = a.out.size[1];
  const index_t total = a.out.size[0] * height * width * channels;
  const index_t e = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= total) return;
  const index_t c = grid_mod(e, channels), x = grid_mod(grid_div(e, channels), width),
                y = grid_mod(grid_div(e, channels * width), height), t = grid_div(e, channels * width * height);
  A result = static_cast<A>(a.fill);
  if (a.reduction == static_cast<int>(Reduction::Median)) {
    index_t count = 0;
    for_each_cover(a.g, t, y, x, [&](index_t p, index_t dt, index_t dy, index_t dx) {
      bool valid;
      proposal(a, p, dt, dy, dx, c, valid);
      count += valid;
    });
    const index_t rank = (count - 1) / 2;  // the lower median is the value with `rank` values below it
    bool found = false;
    for_each_cover(a.g, t, y, x, [&](index_t p, index_t dt, index_t dy, index_t dx) {
      bool valid;
      const A v = proposal(a, p, dt, dy, dx, c, valid);
      if (!valid || found) return;
      index_t below = 0, at_most = 0;
      for_each_cover(a.g, t, y, x, [&](index_t p2, index_t dt2, index_t dy2, index_t dx2) {
        bool valid2;
        const A w = proposal(a, p2, dt2, dy2, dx2, c, valid2);
        below += valid2 && w < v;
        at_most += valid2 && w <= v;
      });
      if (below <= rank && rank < at_most) {
        result = v;
        found = true;
      }
    });
  } else {
    A sum = 0, weight_sum = 0;
    index_t count = 0;
    const bool gaussian = a.reduction == static_cast<int>(Reduction::Gaussian);
    for_each_cover(a.g, t, y, x, [&](index_t p, index_t dt, index_t dy, index_t dx) {
      bool valid;
      const A v = proposal(a, p, dt, dy, dx, c, valid);
      if (!valid) return;
      const index_t gh = a.g.grid_h, gw = a.g.grid_w;
      A w = a.weights(grid_div(p, gh * gw), grid_mod(grid_div(p, gw), gh), grid_mod(p, gw));
      if (gaussian) w *= static_cast<A>(a.g.offset_weight(dt, dy, dx));
      ++count;
      weight_sum += w;
      sum += w * v;
    });
    if (count > 0 && weight_sum > A(0)) result = sum / weight_sum;
  }
  a.out(t, y, x, c) = Scalar<T>::store(result);
}

}  // namespace

void patch_vote_cuda(VK_PATCH_VOTE_ARGS, std::uintptr_t stream) {
  const ArgCheck check("vision_kernels.patch_vote");
  check_vote_arguments(check, values, index, weights, pt, ph, pw, reduction, sigma_t, sigma_s, out, values.device);
  const VoteGeometry g{pt, ph, pw, values.sizes[3], index.sizes[0], index.sizes[1], index.sizes[2], sigma_t, sigma_s};
  const index_t total = out.numel();
  VK_CHECK(total <= kMaxCudaGrid && make_layout(values, pt, ph, pw).grid_size() <= kMaxCudaGrid, ErrorKind::Value,
           check.function(), ": CUDA voting supports outputs and value grids of fewer than 2^31 elements, got ",
           out.shape_string());
  if (total == 0) return;
  VK_DISPATCH_FLOATING(values.dtype, check.function(), [&] {
    using A = acc_t<scalar_t>;
    VoteArgs<scalar_t> args{static_cast<const scalar_t*>(values.data),
                            make_layout(values, pt, ph, pw),
                            make_view<const std::int64_t, 3>(index),
                            make_view<const A, 3>(weights),
                            make_view<scalar_t, 4>(out),
                            g,
                            static_cast<int>(reduction),
                            fill};
    auto kernel = &vote_kernel<scalar_t>;
    VK_LAUNCH(kernel, dim3(static_cast<unsigned>(ceil_div(total, kBlock))), dim3(kBlock), 0, as_stream(stream), args);
  });
  check_launch(check.function().c_str());
}

}  // namespace vk::patch_nn
