// Emulated CUDA attention_decomposition against the CPU kernel (run under the sanitizers by vk_emu_tests).
#include <optional>
#include <vector>

#include "../common/emu_test.h"
#include "attention_decomp_ops.h"

namespace {

using vk::DType;
using vk::index_t;
using vk::emu_test::HostArray;

struct Mode {
  bool keep_layers, keep_heads, keep_tokens, with_offset;
};

template <typename T, typename O>
void compare(index_t batch, index_t layers, index_t tokens, index_t heads, index_t head_dim, index_t embed,
             const std::vector<index_t>& selected, Mode mode, DType in_dtype, DType out_dtype,
             T (*convert)(float), double rtol, double atol) {
  auto values = HostArray<T>::uniform({batch, layers, tokens, heads, head_dim}, in_dtype, -1.f, 1.f, convert);
  auto attn = HostArray<T>::uniform({batch, layers, heads, tokens}, in_dtype, 0.f, 1.f, convert);
  auto folded = HostArray<T>::uniform({layers, heads, head_dim, embed}, in_dtype, -1.f, 1.f, convert);
  auto scale = HostArray<T>::uniform({batch}, in_dtype, 0.5f, 2.f, convert);
  auto offset = HostArray<T>::uniform({batch, layers, embed}, in_dtype, -1.f, 1.f, convert);
  const index_t out_layers = mode.keep_layers ? static_cast<index_t>(selected.size()) : 1;
  const std::vector<index_t> shape{batch, out_layers, mode.keep_heads ? heads : 1, mode.keep_tokens ? tokens : 1,
                                   embed};
  auto want = HostArray<O>::zeros(shape, out_dtype);
  auto got = HostArray<O>::zeros(shape, out_dtype);
  const std::optional<vk::TensorRef> offset_ref =
      mode.with_offset ? std::optional<vk::TensorRef>(offset.ref) : std::nullopt;
  vk::attention_decomp::attention_decomposition_cpu(values.ref, attn.ref, folded.ref, scale.ref, offset_ref, selected,
                                                    mode.keep_layers, mode.keep_heads, mode.keep_tokens, want.ref);
  vk::attention_decomp::attention_decomposition_cuda(values.ref, attn.ref, folded.ref, scale.ref, offset_ref, selected,
                                                     mode.keep_layers, mode.keep_heads, mode.keep_tokens, got.ref, 0);
  vk::emu_test::expect_close(vk::str("attention_decomposition ", batch, "x", layers, "x", tokens, "x", heads, "x",
                                     head_dim, "x", embed, " keep ", mode.keep_layers, mode.keep_heads,
                                     mode.keep_tokens, " offset ", mode.with_offset, " ", vk::dtype_name(in_dtype),
                                     "->", vk::dtype_name(out_dtype)),
                             got.storage.data(), want.storage.data(), got.storage.size(), rtol, atol);
}

float identity(float v) { return v; }
double widen(float v) { return static_cast<double>(v); }

}  // namespace

// 70 tokens and 70 columns: partial 64-wide tiles on both axes, 2 x 2 tiles per output block.
VK_EMU_TEST(attention_decomposition_per_token_partial_tiles) {
  compare<float, float>(1, 2, 70, 2, 20, 70, {1}, {true, true, true, false}, DType::Float32, DType::Float32, identity,
                        1e-5, 1e-5);
}

VK_EMU_TEST(attention_decomposition_per_token_summed_heads_and_layers_with_offset) {
  compare<float, float>(2, 3, 9, 3, 8, 40, {2, 0}, {false, false, true, true}, DType::Float32, DType::Float32,
                        identity, 1e-5, 1e-5);
}

VK_EMU_TEST(attention_decomposition_summed_tokens) {
  compare<float, float>(2, 3, 11, 2, 7, 150, {0, 2}, {true, true, false, true}, DType::Float32, DType::Float32,
                        identity, 1e-5, 1e-5);
  compare<float, float>(2, 3, 11, 2, 7, 20, {1, 2, 1}, {false, false, false, false}, DType::Float32, DType::Float32,
                        identity, 1e-5, 1e-5);
}

VK_EMU_TEST(attention_decomposition_float64) {
  compare<double, double>(1, 2, 5, 2, 3, 6, {0, 1}, {true, false, true, true}, DType::Float64, DType::Float64, widen,
                          1e-12, 1e-12);
}

VK_EMU_TEST(attention_decomposition_half_inputs_float_output) {
  compare<vk::f16, float>(1, 2, 12, 2, 16, 33, {1}, {true, true, true, true}, DType::Float16, DType::Float32,
                          [](float v) { return vk::to_f16(v); }, 1e-5, 1e-5);
}

VK_EMU_TEST(attention_decomposition_float_inputs_bfloat16_output) {
  compare<float, vk::bf16>(1, 1, 10, 2, 8, 24, {0}, {true, false, false, true}, DType::Float32, DType::BFloat16,
                           identity, 1e-2, 1e-2);
}
