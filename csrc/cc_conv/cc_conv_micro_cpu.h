// Register-blocked micro-kernels of the CPU gather-GEMMs of cc_conv, on packed panels of the
// accumulation type:
//
//   micro_kernel (outer products, vectorized over n):
//     c[m * ldc + n] (+)= sum_{k < depth} a[k * MR + m] * b[k * NR + n]          m < MR, n < NR
//   dot_kernel (dot products, vectorized over p):
//     c[o * ldc + k] += sum_{p < length} g[o * ldg + p] * x[k * ldx + p]          o < DO, k < DK
//
// AVX-512 versions with explicit FMAs are chosen at run time when the CPU has them; otherwise portable
// loops that the compiler vectorizes for its targets.
#pragma once

#include "../common/defs.h"

namespace vk::cc_conv {

// Panel shapes per accumulation type: MR rows (broadcast) x NR columns (vector lanes).
template <typename A>
struct Micro;
template <>
struct Micro<float> {
  static constexpr index_t MR = 8;
  static constexpr index_t NR = 32;  // two 16-lane vectors
  static constexpr index_t kLanes = 16;
};
template <>
struct Micro<double> {
  static constexpr index_t MR = 8;
  static constexpr index_t NR = 16;  // two 8-lane vectors
  static constexpr index_t kLanes = 8;
};

// Tile of dot_kernel: DO rows of g times DK rows of x (24 vector accumulators).
constexpr index_t DO = 4;
constexpr index_t DK = 6;

// c (+)= a-panel x b-panel; `accumulate` adds to c instead of overwriting it.
void micro_kernel(const float* a, const float* b, index_t depth, float* c, index_t ldc, bool accumulate);
void micro_kernel(const double* a, const double* b, index_t depth, double* c, index_t ldc, bool accumulate);

// c[o * ldc + k] += dot(g row o, x row k) over `length` values (a multiple of Micro<A>::kLanes).
void dot_kernel(const float* g, index_t ldg, const float* x, index_t ldx, index_t length, float* c, index_t ldc);
void dot_kernel(const double* g, index_t ldg, const double* x, index_t ldx, index_t length, double* c, index_t ldc);

// Which implementation micro_kernel runs ("avx512" or "generic"), for build_info and tests.
const char* micro_kernel_isa();

// "generic" forces the portable micro-kernel (to test it on machines with AVX-512), "auto" picks the
// fastest one the CPU supports.
void set_micro_kernel_isa(const char* isa);

}  // namespace vk::cc_conv
