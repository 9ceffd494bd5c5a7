// The cc_conv CPU micro-kernels (see cc_conv_micro_cpu.h). Both versions sum over k in increasing
// order for every (m, n); the AVX-512 one fuses each multiply-add, so results differ from the portable
// one by rounding only.
#include "cc_conv_micro_cpu.h"

#include <atomic>
#include <cstring>

#include "../common/errors.h"

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && !defined(VK_NO_MULTIVERSION)
#define VK_CC_CONV_AVX512 1
#include <immintrin.h>
#endif

namespace vk::cc_conv {
namespace {

template <typename A>
void micro_generic(const A* a, const A* b, index_t depth, A* c, index_t ldc, bool accumulate) {
  constexpr index_t MR = Micro<A>::MR, NR = Micro<A>::NR;
  A acc[MR][NR] = {};
  for (index_t k = 0; k < depth; ++k) {
    const A* bk = b + k * NR;
    for (index_t m = 0; m < MR; ++m) {
      const A am = a[k * MR + m];
      for (index_t n = 0; n < NR; ++n) acc[m][n] += am * bk[n];
    }
  }
  for (index_t m = 0; m < MR; ++m)
    for (index_t n = 0; n < NR; ++n) c[m * ldc + n] = accumulate ? c[m * ldc + n] + acc[m][n] : acc[m][n];
}

template <typename A>
void dot_generic(const A* g, index_t ldg, const A* x, index_t ldx, index_t length, A* c, index_t ldc) {
  for (index_t o = 0; o < DO; ++o)
    for (index_t k = 0; k < DK; ++k) {
      A sum = 0;
      for (index_t p = 0; p < length; ++p) sum += g[o * ldg + p] * x[k * ldx + p];
      c[o * ldc + k] += sum;
    }
}

VK_CPU_MULTIVERSION void dot_generic_f32(const float* g, index_t ldg, const float* x, index_t ldx, index_t length,
                                         float* c, index_t ldc) {
  dot_generic(g, ldg, x, ldx, length, c, ldc);
}
VK_CPU_MULTIVERSION void dot_generic_f64(const double* g, index_t ldg, const double* x, index_t ldx, index_t length,
                                         double* c, index_t ldc) {
  dot_generic(g, ldg, x, ldx, length, c, ldc);
}

VK_CPU_MULTIVERSION void micro_generic_f32(const float* a, const float* b, index_t depth, float* c, index_t ldc,
                                           bool accumulate) {
  micro_generic(a, b, depth, c, ldc, accumulate);
}
VK_CPU_MULTIVERSION void micro_generic_f64(const double* a, const double* b, index_t depth, double* c, index_t ldc,
                                           bool accumulate) {
  micro_generic(a, b, depth, c, ldc, accumulate);
}

std::atomic<bool>& force_generic() {
  static std::atomic<bool> forced{false};
  return forced;
}

#ifdef VK_CC_CONV_AVX512

__attribute__((target("avx512f"))) void micro_avx512(const float* a, const float* b, index_t depth, float* c,
                                                     index_t ldc, bool accumulate) {
  static_assert(Micro<float>::MR == 8 && Micro<float>::NR == 32, "AVX-512 kernel is written for 8 x 32");
  __m512 acc[8][2];
#pragma GCC unroll 8
  for (int m = 0; m < 8; ++m) acc[m][0] = acc[m][1] = _mm512_setzero_ps();
  for (index_t k = 0; k < depth; ++k, a += 8, b += 32) {
    const __m512 b0 = _mm512_loadu_ps(b);
    const __m512 b1 = _mm512_loadu_ps(b + 16);
#pragma GCC unroll 8
    for (int m = 0; m < 8; ++m) {
      const __m512 am = _mm512_set1_ps(a[m]);
      acc[m][0] = _mm512_fmadd_ps(am, b0, acc[m][0]);
      acc[m][1] = _mm512_fmadd_ps(am, b1, acc[m][1]);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < 8; ++m) {
    float* row = c + m * ldc;
    if (accumulate) {
      acc[m][0] = _mm512_add_ps(acc[m][0], _mm512_loadu_ps(row));
      acc[m][1] = _mm512_add_ps(acc[m][1], _mm512_loadu_ps(row + 16));
    }
    _mm512_storeu_ps(row, acc[m][0]);
    _mm512_storeu_ps(row + 16, acc[m][1]);
  }
}

__attribute__((target("avx512f"))) void micro_avx512(const double* a, const double* b, index_t depth, double* c,
                                                     index_t ldc, bool accumulate) {
  static_assert(Micro<double>::MR == 8 && Micro<double>::NR == 16, "AVX-512 kernel is written for 8 x 16");
  __m512d acc[8][2];
#pragma GCC unroll 8
  for (int m = 0; m < 8; ++m) acc[m][0] = acc[m][1] = _mm512_setzero_pd();
  for (index_t k = 0; k < depth; ++k, a += 8, b += 16) {
    const __m512d b0 = _mm512_loadu_pd(b);
    const __m512d b1 = _mm512_loadu_pd(b + 8);
#pragma GCC unroll 8
    for (int m = 0; m < 8; ++m) {
      const __m512d am = _mm512_set1_pd(a[m]);
      acc[m][0] = _mm512_fmadd_pd(am, b0, acc[m][0]);
      acc[m][1] = _mm512_fmadd_pd(am, b1, acc[m][1]);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < 8; ++m) {
    double* row = c + m * ldc;
    if (accumulate) {
      acc[m][0] = _mm512_add_pd(acc[m][0], _mm512_loadu_pd(row));
      acc[m][1] = _mm512_add_pd(acc[m][1], _mm512_loadu_pd(row + 8));
    }
    _mm512_storeu_pd(row, acc[m][0]);
    _mm512_storeu_pd(row + 8, acc[m][1]);
  }
}

// The AVX-512 dot tile: 4 x 6 vector accumulators over p, reduced across lanes at the end.
#define VK_CC_DOT_TILE(V, LANES, LOAD, FMA, ZERO, REDUCE)                        \
  V acc[DO][DK];                                                                 \
  _Pragma("GCC unroll 4") for (int o = 0; o < DO; ++o)                           \
      _Pragma("GCC unroll 6") for (int k = 0; k < DK; ++k) acc[o][k] = ZERO();   \
  for (index_t p = 0; p < length; p += LANES) {                                  \
    V gv[DO];                                                                    \
    _Pragma("GCC unroll 4") for (int o = 0; o < DO; ++o) gv[o] = LOAD(g + o * ldg + p); \
    _Pragma("GCC unroll 6") for (int k = 0; k < DK; ++k) {                       \
      const V xv = LOAD(x + k * ldx + p);                                        \
      _Pragma("GCC unroll 4") for (int o = 0; o < DO; ++o) acc[o][k] = FMA(gv[o], xv, acc[o][k]); \
    }                                                                            \
  }                                                                              \
  _Pragma("GCC unroll 4") for (int o = 0; o < DO; ++o)                           \
      _Pragma("GCC unroll 6") for (int k = 0; k < DK; ++k) c[o * ldc + k] += REDUCE(acc[o][k])

__attribute__((target("avx512f"))) void dot_avx512(const float* g, index_t ldg, const float* x, index_t ldx,
                                                   index_t length, float* c, index_t ldc) {
  VK_CC_DOT_TILE(__m512, 16, _mm512_loadu_ps, _mm512_fmadd_ps, _mm512_setzero_ps, _mm512_reduce_add_ps);
}

__attribute__((target("avx512f"))) void dot_avx512(const double* g, index_t ldg, const double* x, index_t ldx,
                                                   index_t length, double* c, index_t ldc) {
  VK_CC_DOT_TILE(__m512d, 8, _mm512_loadu_pd, _mm512_fmadd_pd, _mm512_setzero_pd, _mm512_reduce_add_pd);
}

#undef VK_CC_DOT_TILE

bool has_avx512() {
  static const bool supported = __builtin_cpu_supports("avx512f");
  return supported && !force_generic().load(std::memory_order_relaxed);
}

#else

bool has_avx512() { return false; }

#endif

}  // namespace

void micro_kernel(const float* a, const float* b, index_t depth, float* c, index_t ldc, bool accumulate) {
#ifdef VK_CC_CONV_AVX512
  if (has_avx512()) return micro_avx512(a, b, depth, c, ldc, accumulate);
#endif
  micro_generic_f32(a, b, depth, c, ldc, accumulate);
}

void micro_kernel(const double* a, const double* b, index_t depth, double* c, index_t ldc, bool accumulate) {
#ifdef VK_CC_CONV_AVX512
  if (has_avx512()) return micro_avx512(a, b, depth, c, ldc, accumulate);
#endif
  micro_generic_f64(a, b, depth, c, ldc, accumulate);
}

void dot_kernel(const float* g, index_t ldg, const float* x, index_t ldx, index_t length, float* c, index_t ldc) {
#ifdef VK_CC_CONV_AVX512
  if (has_avx512()) return dot_avx512(g, ldg, x, ldx, length, c, ldc);
#endif
  dot_generic_f32(g, ldg, x, ldx, length, c, ldc);
}

void dot_kernel(const double* g, index_t ldg, const double* x, index_t ldx, index_t length, double* c, index_t ldc) {
#ifdef VK_CC_CONV_AVX512
  if (has_avx512()) return dot_avx512(g, ldg, x, ldx, length, c, ldc);
#endif
  dot_generic_f64(g, ldg, x, ldx, length, c, ldc);
}

const char* micro_kernel_isa() { return has_avx512() ? "avx512" : "generic"; }

void set_micro_kernel_isa(const char* isa) {
  VK_CHECK(std::strcmp(isa, "auto") == 0 || std::strcmp(isa, "generic") == 0, ErrorKind::Value,
           "vision_kernels.cc_conv: micro-kernel ISA must be 'auto' or 'generic', got '", isa, "'");
  force_generic().store(std::strcmp(isa, "generic") == 0);
}

}  // namespace vk::cc_conv
