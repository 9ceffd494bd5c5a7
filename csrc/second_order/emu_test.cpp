// Emulated CUDA second_order_effects against the CPU kernel (run under the sanitizers by vk_emu_tests).
#include <optional>
#include <vector>

#include "../common/emu_test.h"
#include "second_order_ops.h"

namespace {

using vk::DType;
using vk::index_t;
using vk::emu_test::HostArray;

template <typename T, typename O>
void compare(index_t batch, index_t layers, index_t heads, index_t tokens, index_t neurons, index_t embed,
             const std::vector<index_t>& selected, bool with_offset, DType in_dtype, DType out_dtype,
             T (*convert)(float), double rtol, double atol) {
  using A = vk::acc_t<T>;
  const auto selected_count = static_cast<index_t>(selected.size());
  auto attn = HostArray<T>::uniform({batch, layers, heads, tokens}, in_dtype, 0.f, 1.f, convert);
  auto ln_std = HostArray<T>::uniform({batch, layers, tokens}, in_dtype, 0.5f, 2.f, convert);
  auto act = HostArray<T>::uniform({batch, tokens, neurons}, in_dtype, -1.f, 1.f, convert);
  auto directions = HostArray<T>::uniform({selected_count, heads, neurons, embed}, in_dtype, -1.f, 1.f, convert);
  auto scale = HostArray<T>::uniform({batch}, in_dtype, 0.5f, 2.f, convert);
  auto offset = HostArray<T>::uniform({batch, embed}, in_dtype, -1.f, 1.f, convert);
  const DType accumulation = in_dtype == DType::Float64 ? DType::Float64 : DType::Float32;
  auto workspace = HostArray<A>::zeros({batch, selected_count * heads, neurons}, accumulation);
  auto want = HostArray<O>::zeros({batch, neurons, embed}, out_dtype);
  auto got = HostArray<O>::zeros({batch, neurons, embed}, out_dtype);
  const std::optional<vk::TensorRef> offset_ref = with_offset ? std::optional<vk::TensorRef>(offset.ref) : std::nullopt;
  vk::second_order::second_order_effects_cpu(attn.ref, ln_std.ref, act.ref, directions.ref, scale.ref, offset_ref,
                                             selected, want.ref);
  vk::second_order::second_order_effects_cuda(attn.ref, ln_std.ref, act.ref, directions.ref, scale.ref, offset_ref,
                                              selected, got.ref, workspace.ref, 0);
  vk::emu_test::expect_close(vk::str("second_order_effects ", batch, "x", layers, "x", heads, "x", tokens, "x",
                                     neurons, "x", embed, " offset ", with_offset, " ", vk::dtype_name(in_dtype), "->",
                                     vk::dtype_name(out_dtype)),
                             got.storage.data(), want.storage.data(), got.storage.size(), rtol, atol);
}

float identity(float v) { return v; }

}  // namespace

// 33 images, 70 columns, 140 tokens: partial image and column tiles, two token chunks.
VK_EMU_TEST(second_order_effects_partial_tiles) {
  compare<float, float>(33, 3, 2, 140, 7, 70, {2, 1}, true, DType::Float32, DType::Float32, identity, 1e-5, 1e-5);
}

// 129 neurons: two coefficient tiles, the second with one neuron.
VK_EMU_TEST(second_order_effects_two_neuron_tiles) {
  compare<float, float>(1, 2, 2, 5, 129, 10, {1}, true, DType::Float32, DType::Float32, identity, 1e-5, 1e-5);
}

// 18 pairs: two 16-deep slices; repeated layers; no offset.
VK_EMU_TEST(second_order_effects_many_pairs_no_offset) {
  compare<float, float>(2, 4, 3, 9, 5, 20, {3, 1, 3, 2, 0, 1}, false, DType::Float32, DType::Float32, identity, 1e-5,
                        1e-5);
}

VK_EMU_TEST(second_order_effects_float64) {
  compare<double, double>(3, 2, 2, 7, 6, 9, {1}, true, DType::Float64, DType::Float64,
                          [](float v) { return static_cast<double>(v); }, 1e-12, 1e-12);
}

VK_EMU_TEST(second_order_effects_half_inputs_bfloat16_output) {
  compare<vk::f16, vk::bf16>(2, 2, 2, 12, 9, 33, {1, 0}, true, DType::Float16, DType::BFloat16,
                             [](float v) { return vk::to_f16(v); }, 1e-2, 1e-2);
}
