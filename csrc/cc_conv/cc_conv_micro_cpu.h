// Register-blocked micro-kernel of the CPU gather-GEMMs of cc_conv:
//
//   c[m * ldc + n] (+)= sum_{k < depth} a[k * MR + m] * b[k * NR + n]     m < MR, n < NR
//
// on packed panels (a: [depth][MR], b: [depth][NR], accumulation type). An AVX-512 version with
// explicit FMAs is chosen at run time when the CPU has it; otherwise a portable loop that the compiler
// vectorizes for the baseline target.
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
};
template <>
struct Micro<double> {
  static constexpr index_t MR = 8;
  static constexpr index_t NR = 16;  // two 8-lane vectors
};

// c (+)= a-panel x b-panel; `accumulate` adds to c instead of overwriting it.
void micro_kernel(const float* a, const float* b, index_t depth, float* c, index_t ldc, bool accumulate);
void micro_kernel(const double* a, const double* b, index_t depth, double* c, index_t ldc, bool accumulate);

// Which implementation micro_kernel runs ("avx512" or "generic"), for build_info and tests.
const char* micro_kernel_isa();

// "generic" forces the portable micro-kernel (to test it on machines with AVX-512), "auto" picks the
// fastest one the CPU supports.
void set_micro_kernel_isa(const char* isa);

}  // namespace vk::cc_conv
