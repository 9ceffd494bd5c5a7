// Emulated CUDA sq_l2_distance against the CPU kernel (run under the sanitizers by vk_emu_tests).
#include "../common/emu_test.h"
#include "distance_ops.h"

namespace {

using vk::DType;
using vk::index_t;
using vk::emu_test::HostArray;

template <typename T>
void compare(index_t n, index_t m, index_t depth, DType dtype, T (*convert)(float), double rtol, double atol) {
  auto x = HostArray<T>::uniform({n, depth}, dtype, -1.f, 1.f, convert);
  auto y = HostArray<T>::uniform({m, depth}, dtype, -1.f, 1.f, convert);
  auto want = HostArray<T>::zeros({n, m}, dtype);
  auto got = HostArray<T>::zeros({n, m}, dtype);
  vk::distance::sq_l2_distance_cpu(x.ref, y.ref, want.ref);
  vk::distance::sq_l2_distance_cuda(x.ref, y.ref, got.ref, 0);
  vk::emu_test::expect_close(vk::str("sq_l2 ", n, "x", m, "x", depth, " ", vk::dtype_name(dtype)), got.storage.data(),
                             want.storage.data(), got.storage.size(), rtol, atol);
}

}  // namespace

VK_EMU_TEST(sq_l2_distance_float32_partial_tiles) {
  compare<float>(70, 90, 37, DType::Float32, [](float v) { return v; }, 1e-5, 1e-5);
}

VK_EMU_TEST(sq_l2_distance_float64_single_tile) {
  compare<double>(5, 3, 2, DType::Float64, [](float v) { return static_cast<double>(v); }, 1e-12, 1e-12);
}

VK_EMU_TEST(sq_l2_distance_float16) {
  compare<vk::f16>(33, 65, 17, DType::Float16, [](float v) { return vk::to_f16(v); }, 2e-3, 2e-3);
}

VK_EMU_TEST(sq_l2_distance_bfloat16) {
  compare<vk::bf16>(20, 20, 40, DType::BFloat16, [](float v) { return vk::to_bf16(v); }, 1e-2, 1e-2);
}
