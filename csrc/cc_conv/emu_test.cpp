// Emulated CUDA cc_conv kernels against the CPU kernels (run under the sanitizers by vk_emu_tests).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <random>
#include <vector>

#include "../common/emu_test.h"
#include "cc_conv_cpu.h"
#include "cc_conv_cuda.h"

namespace {

using vk::DType;
using vk::index_t;
using vk::TensorRef;
using vk::emu_test::HostArray;

struct Plan {
  HostArray<std::int64_t> taps, group, order, offsets;
};

Plan make_plan(const std::vector<std::int64_t>& taps, index_t width, const std::vector<std::int64_t>& group,
               index_t groups) {
  const index_t n = static_cast<index_t>(group.size());
  std::vector<std::int64_t> order(group.size());
  for (index_t i = 0; i < n; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) { return group[a] < group[b]; });
  std::vector<std::int64_t> offsets(static_cast<std::size_t>(groups + 1), 0);
  for (std::int64_t g : group) ++offsets[g + 1];
  for (index_t g = 0; g < groups; ++g) offsets[g + 1] += offsets[g];
  auto from = [](const std::vector<std::int64_t>& values, std::vector<index_t> shape) {
    return HostArray<std::int64_t>::filled(shape, DType::Int64, [&](index_t i) { return values[i]; });
  };
  return Plan{from(taps, {n, width}), from(group, {n}), from(order, {n}), from(offsets, {groups + 1})};
}

// The centred grid of one axis (DESIGN.md 2.4), phases numbered in order of first occurrence, zero padding.
Plan centred_plan(index_t n_in, index_t n_out, double scale, index_t support, index_t* phases) {
  std::vector<std::int64_t> taps, group;
  std::map<double, std::int64_t> seen;
  for (index_t i = 0; i < n_out; ++i) {
    const double x = i / scale + ((n_in - 1) / 2.0 - (n_out - 1) / (2 * scale));
    const double window = std::round((x - support / 2.0) * 1048576.0) / 1048576.0;
    const double start = std::ceil(window);
    const auto found = seen.emplace(start - window, static_cast<std::int64_t>(seen.size())).first;
    group.push_back(found->second);
    for (index_t k = 0; k < support; ++k) {
      const auto tap = static_cast<std::int64_t>(start) + k;
      taps.push_back(tap >= 0 && tap < n_in ? tap : -1);
    }
  }
  *phases = static_cast<index_t>(seen.size());
  return make_plan(taps, support, group, *phases);
}

// Arbitrary tables: taps in [-1, n_in), groups in [0, groups) (some possibly empty).
Plan random_plan(index_t n_in, index_t n_out, index_t width, index_t groups) {
  std::uniform_int_distribution<std::int64_t> tap(-1, n_in - 1), which(0, groups - 1);
  std::vector<std::int64_t> taps, group;
  for (index_t i = 0; i < n_out; ++i) {
    group.push_back(which(vk::emu_test::rng()));
    for (index_t k = 0; k < width; ++k) taps.push_back(tap(vk::emu_test::rng()));
  }
  return make_plan(taps, width, group, groups);
}

template <typename T>
void compare(const char* name, index_t batch, index_t channels, index_t out_channels, index_t height, index_t width,
             const Plan& rows, const Plan& cols, DType dtype, T (*convert)(float), double rtol, double atol,
             index_t splits) {
  const index_t out_h = rows.group.ref.sizes[0], out_w = cols.group.ref.sizes[0];
  const index_t groups_y = rows.offsets.ref.sizes[0] - 1, groups_x = cols.offsets.ref.sizes[0] - 1;
  const index_t taps_y = rows.taps.ref.sizes[1], taps_x = cols.taps.ref.sizes[1];
  auto input = HostArray<T>::uniform({batch, channels, height, width}, dtype, -1.f, 1.f, convert);
  auto weight =
      HostArray<T>::uniform({groups_y, groups_x, out_channels, channels, taps_y, taps_x}, dtype, -1.f, 1.f, convert);
  auto bias = HostArray<T>::uniform({out_channels}, dtype, -1.f, 1.f, convert);
  auto want = HostArray<T>::zeros({batch, out_channels, out_h, out_w}, dtype);
  auto got = HostArray<T>::zeros({batch, out_channels, out_h, out_w}, dtype);
  // Both kernels on the same arguments; pairs with no elements read the weight as it is.
  auto both = [&](const HostArray<T>& w, const TensorRef& row_pairs, const TensorRef& col_pairs, const char* what) {
    vk::cc_conv::gather_gemm_cpu(input.ref, w.ref, bias.ref, row_pairs, col_pairs, rows.taps.ref, rows.group.ref,
                                 rows.order.ref, rows.offsets.ref, cols.taps.ref, cols.group.ref, cols.order.ref,
                                 cols.offsets.ref, want.ref);
    vk::cc_conv::gather_gemm_cuda(input.ref, w.ref, bias.ref, row_pairs, col_pairs, rows.taps.ref, rows.group.ref,
                                  rows.order.ref, rows.offsets.ref, cols.taps.ref, cols.group.ref, cols.order.ref,
                                  cols.offsets.ref, got.ref, 0);
    vk::emu_test::expect_close(vk::str(name, " ", what, " ", vk::dtype_name(dtype)), got.storage.data(),
                               want.storage.data(), got.storage.size(), rtol, atol);
  };
  const auto no_pairs = HostArray<std::int64_t>::zeros({0}, DType::Int64);
  both(weight, no_pairs.ref, no_pairs.ref, "gather_gemm");

  // Transposed weights (input-gradient mode): a forward weight [Py, Px, C_out, C_in, Kh, Kw] read
  // through random (phase, tap) pairs, some of them (-1, -1) padding.
  const index_t phases = 3, support = 2;
  auto forward = HostArray<T>::uniform({phases, phases, channels, out_channels, support, support}, dtype, -1.f, 1.f,
                                       convert);
  auto pairs = [&](index_t groups, index_t taps) {
    std::uniform_int_distribution<std::int64_t> pick(-1, phases * support - 1);
    std::vector<std::int64_t> values;
    for (index_t e = 0; e < groups * taps; ++e) {
      const std::int64_t draw = pick(vk::emu_test::rng());  // -1: a (-1, -1) padding pair
      values.push_back(draw < 0 ? -1 : draw / support);
      values.push_back(draw < 0 ? -1 : draw % support);
    }
    return HostArray<std::int64_t>::filled({groups, taps, 2}, DType::Int64, [&](index_t e) { return values[e]; });
  };
  const auto row_pairs = pairs(groups_y, taps_y), col_pairs = pairs(groups_x, taps_x);
  both(forward, row_pairs.ref, col_pairs.ref, "gather_gemm transposed");

  // Weight gradient: the emulated kernel's `splits` partial sums added up against the CPU kernel.
  const std::vector<index_t> shape = {groups_y, groups_x, out_channels, channels, taps_y, taps_x};
  auto grad = HostArray<T>::uniform({batch, out_channels, out_h, out_w}, dtype, -1.f, 1.f, convert);
  auto grad_weight = HostArray<T>::zeros(shape, dtype);
  using A = vk::acc_t<T>;
  std::vector<index_t> partial_shape = shape;
  partial_shape.insert(partial_shape.begin(), splits);
  const DType acc_dtype = dtype == DType::Float64 ? DType::Float64 : DType::Float32;
  auto partial = HostArray<A>::filled(partial_shape, acc_dtype, [](index_t) { return A(NAN); });
  vk::cc_conv::weight_grad_cpu(grad.ref, input.ref, rows.taps.ref, rows.group.ref, rows.order.ref, rows.offsets.ref,
                               cols.taps.ref, cols.group.ref, cols.order.ref, cols.offsets.ref, grad_weight.ref);
  vk::cc_conv::weight_grad_cuda(grad.ref, input.ref, rows.taps.ref, rows.group.ref, rows.order.ref, rows.offsets.ref,
                                cols.taps.ref, cols.group.ref, cols.order.ref, cols.offsets.ref, partial.ref, 0);
  const std::size_t count = grad_weight.storage.size();
  std::vector<A> summed(count, A(0)), expected(count);
  for (index_t s = 0; s < splits; ++s)
    for (std::size_t e = 0; e < count; ++e) summed[e] += partial.storage[s * count + e];
  for (std::size_t e = 0; e < count; ++e) expected[e] = vk::Scalar<T>::load(grad_weight.storage[e]);
  vk::emu_test::expect_close(vk::str(name, " weight_grad ", vk::dtype_name(dtype)), summed.data(), expected.data(),
                             count, rtol * 10, atol * 10);
}

float identity(float v) { return v; }
double widen(float v) { return v; }

}  // namespace

VK_EMU_TEST(cc_conv_upscale_1_5_float32) {
  // 66 output channels: a second, partial channel tile; 9 output rows: a partial pixel tile.
  index_t py = 0, px = 0;
  const Plan rows = centred_plan(6, 9, 1.5, 3, &py);
  const Plan cols = centred_plan(4, 6, 1.5, 4, &px);
  compare<float>("scale 1.5", 1, 3, 66, 6, 4, rows, cols, DType::Float32, identity, 1e-5, 1e-5, 1);
}

VK_EMU_TEST(cc_conv_downscale_0_6_float64) {
  index_t py = 0, px = 0;
  const Plan rows = centred_plan(10, 6, 0.6, 3, &py);
  const Plan cols = centred_plan(5, 3, 0.6, 2, &px);
  compare<double>("scale 0.6", 1, 5, 4, 10, 5, rows, cols, DType::Float64, widen, 1e-12, 1e-12, 2);
}

VK_EMU_TEST(cc_conv_random_plans_float16) {
  const Plan rows = random_plan(5, 6, 4, 2);
  const Plan cols = random_plan(6, 5, 2, 2);
  compare<vk::f16>("random plans", 2, 6, 5, 5, 6, rows, cols, DType::Float16, [](float v) { return vk::to_f16(v); },
                   3e-3, 3e-3, 2);
}

VK_EMU_TEST(cc_conv_identity_bfloat16) {
  index_t py = 0, px = 0;
  const Plan rows = centred_plan(9, 9, 1.0, 3, &py);
  const Plan cols = centred_plan(12, 12, 1.0, 1, &px);
  compare<vk::bf16>("scale 1", 1, 17, 3, 9, 12, rows, cols, DType::BFloat16, [](float v) { return vk::to_bf16(v); },
                    2e-2, 2e-2, 1);
}
