// Emulated CUDA kernels of the weight-space PCA family against the CPU kernels (run under the
// sanitizers by vk_emu_tests).
#include <vector>

#include "../common/emu_test.h"
#include "pca_project_ops.h"

namespace {

using vk::DType;
using vk::index_t;
using vk::emu_test::HostArray;

template <typename T>
T identity(float v) {
  return static_cast<T>(v);
}

// Fused project of a [rows, dims] batch onto a [dims, width] basis with S D-chunks.
template <typename T>
void compare_project(index_t rows, index_t dims, index_t width, index_t chunks, DType dtype, T (*convert)(float),
                     double tolerance, bool with_shift) {
  auto x = HostArray<T>::uniform({rows, dims}, dtype, -1.f, 1.f, convert);
  auto basis = HostArray<T>::uniform({dims, width}, dtype, -1.f, 1.f, convert);
  using A = vk::acc_t<T>;
  const DType acc = dtype == DType::Float64 ? DType::Float64 : DType::Float32;
  auto shift = HostArray<A>::uniform({with_shift ? dims : 0}, acc, -0.5f, 0.5f);
  auto scale = HostArray<A>::uniform({dims}, acc, 0.5f, 2.f);
  auto want = HostArray<A>::zeros({rows, width}, acc);
  auto got = HostArray<A>::zeros({rows, width}, acc);
  auto partial = HostArray<A>::zeros({chunks, rows, width}, acc);
  vk::pca::pca_project_fused_cpu(x.ref, shift.ref, scale.ref, basis.ref, want.ref);
  vk::pca::pca_project_fused_cuda(x.ref, shift.ref, scale.ref, basis.ref, got.ref, partial.ref, 0);
  vk::emu_test::expect_close(vk::str("pca_project ", rows, "x", dims, "x", width, " ", vk::dtype_name(dtype)),
                             got.storage.data(), want.storage.data(), got.storage.size(), tolerance, tolerance);
}

template <typename T, typename O>
void compare_reconstruct(index_t rows, index_t dims, index_t width, DType dtype, DType out_dtype, T (*convert)(float),
                         double tolerance) {
  using A = vk::acc_t<T>;
  const DType acc = dtype == DType::Float64 ? DType::Float64 : DType::Float32;
  auto coeffs = HostArray<A>::uniform({rows, width}, acc, -1.f, 1.f);
  auto basis = HostArray<T>::uniform({dims, width}, dtype, -1.f, 1.f, convert);
  auto shift = HostArray<A>::uniform({dims}, acc, -0.5f, 0.5f);
  auto scale = HostArray<A>::uniform({dims}, acc, 0.5f, 2.f);
  auto want = HostArray<O>::zeros({rows, dims}, out_dtype);
  auto got = HostArray<O>::zeros({rows, dims}, out_dtype);
  vk::pca::pca_reconstruct_fused_cpu(coeffs.ref, basis.ref, scale.ref, shift.ref, want.ref);
  vk::pca::pca_reconstruct_fused_cuda(coeffs.ref, basis.ref, scale.ref, shift.ref, got.ref, 0);
  vk::emu_test::expect_close(vk::str("pca_reconstruct ", rows, "x", dims, "x", width, " ", vk::dtype_name(dtype)),
                             got.storage.data(), want.storage.data(), got.storage.size(), tolerance, tolerance);
}

}  // namespace

VK_EMU_TEST(pca_project_fused_float32_partial_tiles) {
  compare_project<float>(5, 150, 140, 3, DType::Float32, identity<float>, 1e-5, true);
}

VK_EMU_TEST(pca_project_fused_float64_no_shift_max_rows) {
  compare_project<double>(16, 70, 9, 2, DType::Float64, identity<double>, 1e-12, false);
}

VK_EMU_TEST(pca_project_fused_bfloat16) {
  compare_project<vk::bf16>(3, 64, 33, 2, DType::BFloat16, [](float v) { return vk::to_bf16(v); }, 1e-5, true);
}

VK_EMU_TEST(pca_reconstruct_fused_float32) {
  compare_reconstruct<float, float>(4, 37, 70, DType::Float32, DType::Float32, identity<float>, 1e-5);
}

VK_EMU_TEST(pca_reconstruct_fused_float16_to_float16) {
  compare_reconstruct<vk::f16, vk::f16>(16, 20, 45, DType::Float16, DType::Float16,
                                        [](float v) { return vk::to_f16(v); }, 1e-2);
}

VK_EMU_TEST(pca_reconstruct_fused_bfloat16_to_float32) {
  compare_reconstruct<vk::bf16, float>(2, 24, 31, DType::BFloat16, DType::Float32,
                                       [](float v) { return vk::to_bf16(v); }, 1e-5);
}

VK_EMU_TEST(pca_standardize_and_destandardize_round_trip) {
  auto x = HostArray<vk::f16>::uniform({7, 90}, DType::Float16, -2.f, 2.f, [](float v) { return vk::to_f16(v); });
  auto shift = HostArray<float>::uniform({90}, DType::Float32, -0.5f, 0.5f);
  auto scale = HostArray<float>::uniform({90}, DType::Float32, 0.5f, 2.f);
  auto want = HostArray<float>::zeros({7, 90}, DType::Float32);
  auto got = HostArray<float>::zeros({7, 90}, DType::Float32);
  vk::pca::pca_standardize_cpu(x.ref, shift.ref, scale.ref, want.ref);
  vk::pca::pca_standardize_cuda(x.ref, shift.ref, scale.ref, got.ref, 0);
  vk::emu_test::expect_close("pca_standardize 7x90 float16", got.storage.data(), want.storage.data(),
                             got.storage.size(), 0.0, 0.0);
  auto back_want = HostArray<vk::bf16>::zeros({7, 90}, DType::BFloat16);
  auto back_got = HostArray<vk::bf16>::zeros({7, 90}, DType::BFloat16);
  vk::pca::pca_destandardize_cpu(want.ref, scale.ref, shift.ref, back_want.ref);
  vk::pca::pca_destandardize_cuda(got.ref, scale.ref, shift.ref, back_got.ref, 0);
  vk::emu_test::expect_close("pca_destandardize 7x90 bfloat16", back_got.storage.data(), back_want.storage.data(),
                             back_got.storage.size(), 0.0, 0.0);
}
