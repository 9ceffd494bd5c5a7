// Screening micro-kernels (see screen_cpu.h). The x86 kernels use intrinsics in functions compiled
// for their instruction set and are picked at run time from the CPU's features, so one binary runs
// everywhere; the error bounds of search.h hold for every kernel (any summation order, fused or not).
#include "screen_cpu.h"

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(VK_NO_SIMD_SCREEN)
#define VK_SCREEN_X86 1
#include <immintrin.h>
#endif

namespace vk::patch_nn {
namespace {

// ---------------------------------------------------------------- portable kernel

template <typename S, int MR, int NR, bool kWeighted>
bool tile_portable(const ScreenTile<S>& t) {
  S acc[MR][NR] = {};
  const S* q = t.queries;
  const S* k = t.keys;
  for (index_t d = 0; d < t.depth; ++d, q += MR, k += NR)
    for (int r = 0; r < MR; ++r)
      for (int c = 0; c < NR; ++c) acc[r][c] += q[r] * k[c];
  bool any = false;
  for (int r = 0; r < MR; ++r) {
    std::uint64_t mask = 0;
    S row[NR];
    for (int c = 0; c < NR; ++c) {
      const S v = t.key_offset[c] - S(2) * acc[r][c];
      row[c] = v;
      S z = v;
      if constexpr (kWeighted) z = (v + t.query_term[r]) * t.key_weight[c];
      if (z <= t.threshold[r]) mask |= std::uint64_t(1) << c;
    }
    t.masks[r] = mask;
    if (mask) {
      any = true;
      std::memcpy(t.values + r * NR, row, sizeof(row));
    }
  }
  return any;
}

#ifdef VK_SCREEN_X86

// ---------------------------------------------------------------- AVX-512: 12 x 32

constexpr int kMr512 = 12;
constexpr int kNr512 = 32;

template <bool kWeighted>
__attribute__((target("avx512f"))) bool tile_avx512(const ScreenTile<float>& t) {
  __m512 acc[kMr512][2];
#pragma GCC unroll 12
  for (int r = 0; r < kMr512; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  const float* q = t.queries;
  const float* k = t.keys;
  for (index_t d = 0; d < t.depth; ++d, q += kMr512, k += kNr512) {
    const __m512 k0 = _mm512_load_ps(k);
    const __m512 k1 = _mm512_load_ps(k + 16);
#pragma GCC unroll 12
    for (int r = 0; r < kMr512; ++r) {
      const __m512 b = _mm512_set1_ps(q[r]);
      acc[r][0] = _mm512_fmadd_ps(b, k0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(b, k1, acc[r][1]);
    }
  }
  const __m512 minus_two = _mm512_set1_ps(-2.0f);
  const __m512 offset0 = _mm512_loadu_ps(t.key_offset), offset1 = _mm512_loadu_ps(t.key_offset + 16);
  __m512 weight0 = offset0, weight1 = offset1;
  if constexpr (kWeighted) {
    weight0 = _mm512_loadu_ps(t.key_weight);
    weight1 = _mm512_loadu_ps(t.key_weight + 16);
  }
  bool any = false;
#pragma GCC unroll 12
  for (int r = 0; r < kMr512; ++r) {
    const __m512 v0 = _mm512_fmadd_ps(acc[r][0], minus_two, offset0);
    const __m512 v1 = _mm512_fmadd_ps(acc[r][1], minus_two, offset1);
    __m512 z0 = v0, z1 = v1;
    if constexpr (kWeighted) {
      const __m512 term = _mm512_set1_ps(t.query_term[r]);
      z0 = _mm512_mul_ps(_mm512_add_ps(v0, term), weight0);
      z1 = _mm512_mul_ps(_mm512_add_ps(v1, term), weight1);
    }
    const __m512 threshold = _mm512_set1_ps(t.threshold[r]);
    const std::uint64_t mask = static_cast<std::uint64_t>(_mm512_cmp_ps_mask(z0, threshold, _CMP_LE_OQ)) |
                               (static_cast<std::uint64_t>(_mm512_cmp_ps_mask(z1, threshold, _CMP_LE_OQ)) << 16);
    t.masks[r] = mask;
    if (mask) {
      any = true;
      _mm512_storeu_ps(t.values + r * kNr512, v0);
      _mm512_storeu_ps(t.values + r * kNr512 + 16, v1);
    }
  }
  return any;
}

// ---------------------------------------------------------------- AVX2 + FMA: 6 x 16

constexpr int kMr256 = 6;
constexpr int kNr256 = 16;

template <bool kWeighted>
__attribute__((target("avx2,fma"))) bool tile_avx2(const ScreenTile<float>& t) {
  __m256 acc[kMr256][2];
#pragma GCC unroll 6
  for (int r = 0; r < kMr256; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  const float* q = t.queries;
  const float* k = t.keys;
  for (index_t d = 0; d < t.depth; ++d, q += kMr256, k += kNr256) {
    const __m256 k0 = _mm256_load_ps(k);
    const __m256 k1 = _mm256_load_ps(k + 8);
#pragma GCC unroll 6
    for (int r = 0; r < kMr256; ++r) {
      const __m256 b = _mm256_broadcast_ss(q + r);
      acc[r][0] = _mm256_fmadd_ps(b, k0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(b, k1, acc[r][1]);
    }
  }
  const __m256 minus_two = _mm256_set1_ps(-2.0f);
  const __m256 offset0 = _mm256_loadu_ps(t.key_offset), offset1 = _mm256_loadu_ps(t.key_offset + 8);
  __m256 weight0 = offset0, weight1 = offset1;
  if constexpr (kWeighted) {
    weight0 = _mm256_loadu_ps(t.key_weight);
    weight1 = _mm256_loadu_ps(t.key_weight + 8);
  }
  bool any = false;
#pragma GCC unroll 6
  for (int r = 0; r < kMr256; ++r) {
    const __m256 v0 = _mm256_fmadd_ps(acc[r][0], minus_two, offset0);
    const __m256 v1 = _mm256_fmadd_ps(acc[r][1], minus_two, offset1);
    __m256 z0 = v0, z1 = v1;
    if constexpr (kWeighted) {
      const __m256 term = _mm256_set1_ps(t.query_term[r]);
      z0 = _mm256_mul_ps(_mm256_add_ps(v0, term), weight0);
      z1 = _mm256_mul_ps(_mm256_add_ps(v1, term), weight1);
    }
    const __m256 threshold = _mm256_set1_ps(t.threshold[r]);
    const std::uint64_t mask =
        static_cast<std::uint64_t>(_mm256_movemask_ps(_mm256_cmp_ps(z0, threshold, _CMP_LE_OQ))) |
        (static_cast<std::uint64_t>(_mm256_movemask_ps(_mm256_cmp_ps(z1, threshold, _CMP_LE_OQ))) << 8);
    t.masks[r] = mask;
    if (mask) {
      any = true;
      _mm256_storeu_ps(t.values + r * kNr256, v0);
      _mm256_storeu_ps(t.values + r * kNr256 + 8, v1);
    }
  }
  return any;
}

#endif  // VK_SCREEN_X86

// VK_SCREEN_ISA=portable|avx2|avx512 restricts the choice (for tests of every kernel on one machine).
bool isa_allowed(const char* isa) {
  const char* requested = std::getenv("VK_SCREEN_ISA");
  if (requested == nullptr || requested[0] == '\0') return true;
  if (std::strcmp(requested, "portable") == 0) return false;
  if (std::strcmp(requested, "avx2") == 0) return std::strcmp(isa, "avx2") == 0;
  return true;
}

}  // namespace

ScreenKernel<float> float_screen_kernel() {
#ifdef VK_SCREEN_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && isa_allowed("avx512"))
    return {kMr512, kNr512, &tile_avx512<false>, &tile_avx512<true>, "avx512"};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && isa_allowed("avx2"))
    return {kMr256, kNr256, &tile_avx2<false>, &tile_avx2<true>, "avx2"};
#endif
  return {4, 16, &tile_portable<float, 4, 16, false>, &tile_portable<float, 4, 16, true>, "portable"};
}

ScreenKernel<double> double_screen_kernel() {
  return {4, 8, &tile_portable<double, 4, 8, false>, &tile_portable<double, 4, 8, true>, "portable"};
}

}  // namespace vk::patch_nn
