// Emulated CUDA patch_nn / patch_vote / patch_match against the CPU kernels (run under the
// sanitizers by vk_emu_tests). The searches must agree exactly; voting within rounding.
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "../common/emu_test.h"
#include "patch_nn_ops.h"

namespace {

using vk::DType;
using vk::index_t;
using vk::emu_test::HostArray;

// Values on a coarse grid so that exact ties occur and the tie rule is exercised.
HostArray<float> image(index_t t, index_t h, index_t w, index_t c, float levels) {
  auto a = HostArray<float>::uniform({t, h, w, c}, DType::Float32, 0.f, 1.f);
  for (float& v : a.storage) v = std::round(v * levels) / levels;
  return a;
}

HostArray<std::uint8_t> all_true(index_t t, index_t h, index_t w) {
  return HostArray<std::uint8_t>::filled({t, h, w}, DType::Bool, [](index_t) { return std::uint8_t(1); });
}

template <typename T>
void expect_equal(const std::string& what, const std::vector<T>& got, const std::vector<T>& want) {
  for (std::size_t i = 0; i < want.size(); ++i)
    if (!(got[i] == want[i]))
      vk::fail(vk::ErrorKind::Runtime, vk::str(what, ": element ", i, " differs: emulated CUDA ", got[i], " vs CPU ",
                                               want[i]));
}

void compare_search(index_t t, index_t h, index_t w, index_t c, index_t pt, index_t ph, index_t pw, double alpha,
                    bool masked) {
  auto q = image(t, h, w, c, 4.f);
  auto k = image(t + 1, h - 1, w + 2, c, 4.f);
  const index_t gqt = t - pt + 1, gqh = h - ph + 1, gqw = w - pw + 1;
  const index_t gkt = t + 1 - pt + 1, gkh = h - 1 - ph + 1, gkw = w + 2 - pw + 1;
  auto qm = all_true(gqt, gqh, gqw);
  auto km = HostArray<std::uint8_t>::filled({gkt, gkh, gkw}, DType::Bool,
                                            [&](index_t i) { return std::uint8_t(!masked || i % 3 != 1); });
  auto cpu_index = HostArray<std::int64_t>::zeros({gqt, gqh, gqw}, DType::Int64);
  auto cpu_distance = HostArray<float>::zeros({gqt, gqh, gqw}, DType::Float32);
  auto emu_index = HostArray<std::int64_t>::zeros({gqt, gqh, gqw}, DType::Int64);
  auto emu_distance = HostArray<float>::zeros({gqt, gqh, gqw}, DType::Float32);
  const index_t total = gqt * gqh * gqw + gkt * gkh * gkw;
  auto f64 = HostArray<double>::zeros({7 * total}, DType::Float64);
  auto f32 = HostArray<float>::zeros({2 * total}, DType::Float32);
  auto i64 = HostArray<std::int64_t>::zeros({total}, DType::Int64);
  vk::patch_nn::patch_nn_cpu(q.ref, k.ref, qm.ref, km.ref, pt, ph, pw, alpha, false, cpu_index.ref,
                             cpu_distance.ref);
  vk::patch_nn::patch_nn_cuda(q.ref, k.ref, qm.ref, km.ref, pt, ph, pw, alpha, false, emu_index.ref, emu_distance.ref,
                              f64.ref, f32.ref, i64.ref, 0);
  const std::string what = vk::str("patch_nn ", t, "x", h, "x", w, "x", c, " patch ", pt, "x", ph, "x", pw,
                                   std::isnan(alpha) ? " plain" : " alpha", masked ? " masked" : "");
  expect_equal(what + " index", emu_index.storage, cpu_index.storage);
  expect_equal(what + " distance", emu_distance.storage, cpu_distance.storage);
}

}  // namespace

VK_EMU_TEST(patch_nn_image_plain_partial_tiles) {
  compare_search(1, 14, 13, 3, 1, 3, 3, std::numeric_limits<double>::quiet_NaN(), false);
}

VK_EMU_TEST(patch_nn_video_normalized_masked) { compare_search(2, 8, 9, 2, 2, 3, 2, 0.01, true); }

VK_EMU_TEST(patch_vote_mean_gaussian_median) {
  auto values = HostArray<float>::uniform({1, 9, 10, 3}, DType::Float32, 0.f, 1.f);
  const index_t grid = 1 * 7 * 8;
  auto index = HostArray<std::int64_t>::filled({1, 7, 8}, DType::Int64,
                                               [&](index_t i) { return i % 5 == 0 ? -1 : (i * 7) % grid; });
  auto weights = HostArray<float>::uniform({1, 7, 8}, DType::Float32, 0.f, 2.f);
  for (int reduction = 0; reduction < 3; ++reduction) {
    auto want = HostArray<float>::zeros({1, 9, 10, 3}, DType::Float32);
    auto got = HostArray<float>::zeros({1, 9, 10, 3}, DType::Float32);
    vk::patch_nn::patch_vote_cpu(values.ref, index.ref, weights.ref, 1, 3, 3, reduction, 0.5, 0.8, -1.0, want.ref);
    vk::patch_nn::patch_vote_cuda(values.ref, index.ref, weights.ref, 1, 3, 3, reduction, 0.5, 0.8, -1.0, got.ref, 0);
    vk::emu_test::expect_close(vk::str("patch_vote reduction ", reduction), got.storage.data(), want.storage.data(),
                               got.storage.size(), 1e-5, 1e-6);
  }
}

VK_EMU_TEST(patch_match_plain_and_normalized) {
  auto q = image(1, 12, 11, 3, 8.f);
  auto k = image(2, 10, 12, 3, 8.f);
  const index_t gq[3] = {1, 10, 9}, gk[3] = {2, 8, 10};
  const index_t nq = gq[0] * gq[1] * gq[2], nk = gk[0] * gk[1] * gk[2];
  auto qm = all_true(gq[0], gq[1], gq[2]);
  auto km = HostArray<std::uint8_t>::filled({gk[0], gk[1], gk[2]}, DType::Bool,
                                            [](index_t i) { return std::uint8_t(i % 4 != 0); });
  auto init = HostArray<std::int64_t>::filled({gq[0], gq[1], gq[2]}, DType::Int64, [](index_t i) { return i - 3; });
  auto den = HostArray<double>::filled({gk[0], gk[1], gk[2]}, DType::Float64,
                                       [](index_t i) { return 0.5 + 0.01 * static_cast<double>(i % 7); });
  auto no_den = HostArray<double>::zeros({0}, DType::Float64);
  for (int normalized = 0; normalized < 2; ++normalized) {
    const auto& key_den = normalized ? den : no_den;
    auto cpu_index = HostArray<std::int64_t>::zeros({gq[0], gq[1], gq[2]}, DType::Int64);
    auto cpu_ssd = HostArray<double>::zeros({gq[0], gq[1], gq[2]}, DType::Float64);
    auto emu_index = HostArray<std::int64_t>::zeros({gq[0], gq[1], gq[2]}, DType::Int64);
    auto emu_ssd = HostArray<double>::zeros({gq[0], gq[1], gq[2]}, DType::Float64);
    auto state_keys = HostArray<std::int64_t>::zeros({2, nq}, DType::Int64);
    auto state_scores = HostArray<double>::zeros({4, nq}, DType::Float64);
    auto weight = HostArray<double>::zeros({nk}, DType::Float64);
    vk::patch_nn::patch_match_cpu(q.ref, k.ref, qm.ref, km.ref, key_den.ref, 1, 3, 3, 4, 11, init.ref, cpu_index.ref,
                                  cpu_ssd.ref);
    vk::patch_nn::patch_match_cuda(q.ref, k.ref, qm.ref, km.ref, key_den.ref, 1, 3, 3, 4, 11, init.ref,
                                   emu_index.ref, emu_ssd.ref, state_keys.ref, state_scores.ref, weight.ref, 0);
    expect_equal(vk::str("patch_match index, normalized=", normalized), emu_index.storage, cpu_index.storage);
    expect_equal(vk::str("patch_match ssd, normalized=", normalized), emu_ssd.storage, cpu_ssd.storage);
  }
}
