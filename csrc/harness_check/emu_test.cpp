// The harness's own features against plain loops (run under the sanitizers by vk_emu_tests).
#include <algorithm>
#include <cstdint>

#include "../common/emu_test.h"
#include "harness_check_cuda.h"

namespace {

using vk::DType;
using vk::index_t;
using vk::emu_test::HostArray;

}  // namespace

VK_EMU_TEST(harness_block_sum_shared_memory_and_barriers) {
  for (const int block : {32, 128}) {
    const index_t n = 5 * block + 7;
    auto values = HostArray<float>::filled({n}, DType::Float32, [](index_t i) { return static_cast<float>(i % 13) - 6.f; });
    auto sums = HostArray<float>::zeros({vk::ceil_div(n, block)}, DType::Float32);
    vk::harness_check::block_sum_cuda(values.ref, sums.ref, block, 0);
    for (index_t b = 0; b < sums.ref.sizes[0]; ++b) {
      float want = 0;
      for (index_t i = b * block; i < std::min(n, (b + 1) * block); ++i) want += values.storage[i];
      vk::emu_test::expect_close(vk::str("block sum ", b), &sums.storage[b], &want, 1, 0, 1e-4);
    }
  }
}

VK_EMU_TEST(harness_warp_shuffles_votes_atomics) {
  const index_t n = 150;  // partial last warp and block
  auto values = HostArray<float>::filled({n}, DType::Float32, [](index_t i) { return static_cast<float>((i * 7) % 11) - 4.f; });
  auto prefix = HostArray<float>::zeros({n}, DType::Float32);
  auto stats = HostArray<float>::zeros({vk::ceil_div(n, 32), 4}, DType::Float32);
  auto total = HostArray<float>::zeros({1}, DType::Float32);
  auto positives = HostArray<std::int32_t>::filled({1}, DType::Int32, [](index_t) { return 0; });
  vk::harness_check::warp_ops_cuda(values.ref, prefix.ref, stats.ref, total.ref, positives.ref, 64, 0);
  float all = 0;
  int positive = 0;
  for (index_t w = 0; w * 32 < n; ++w) {
    float running = 0, sum = 0, maximum = -3.0e38f;
    int count = 0;
    for (index_t i = w * 32; i < std::min(n, (w + 1) * 32); ++i) {
      running += values.storage[i];
      vk::emu_test::expect_close(vk::str("prefix ", i), &prefix.storage[i], &running, 1, 0, 1e-4);
      sum += values.storage[i];
      maximum = std::max(maximum, values.storage[i]);
      count += values.storage[i] > 0;
    }
    const float want[4] = {sum, maximum, values.storage[w * 32], static_cast<float>(count)};
    vk::emu_test::expect_close(vk::str("warp stats ", w), &stats.storage[w * 4], want, 4, 0, 1e-4);
    all += sum;
    positive += count;
  }
  vk::emu_test::expect_close("atomic float total", total.storage.data(), &all, 1, 0, 1e-3);
  VK_CHECK(positives.storage[0] == positive, vk::ErrorKind::Runtime, "positives: got ", positives.storage[0],
           ", want ", positive);
}
