// Host/device qualifiers and small portability macros shared by every kernel family.
//
// The family headers (<family>/<family>.h) hold each kernel's arithmetic as VK_HOST_DEVICE
// inline functions; the CPU loops (*_cpu.cpp, compiled by the host compiler) and the CUDA
// kernels (*_cuda.cu, compiled by nvcc, or by g++ under the host emulation harness) call them.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(VK_CUDA_EMULATION)
#define VK_HOST_DEVICE __host__ __device__
#define VK_DEVICE __device__
#else
#define VK_HOST_DEVICE
#define VK_DEVICE
#endif

#if defined(__CUDACC__)
#define VK_FORCE_INLINE __forceinline__
#elif defined(__GNUC__)
#define VK_FORCE_INLINE inline __attribute__((always_inline))
#else
#define VK_FORCE_INLINE inline
#endif

// VK_CPU_MULTIVERSION: compile a hot CPU function for AVX-512, AVX2+FMA and baseline x86-64,
// picked at load time (GCC ifunc). Apply it to a leaf worker without OpenMP regions inside;
// the inline family math it calls is vectorized for each target.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__CUDACC__) && \
    !defined(VK_CUDA_EMULATION) && !defined(VK_NO_MULTIVERSION)
#define VK_CPU_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define VK_CPU_MULTIVERSION
#endif

namespace vk {

// All index arithmetic is 64-bit: sizes, strides and offsets are int64_t everywhere.
using index_t = std::int64_t;

VK_HOST_DEVICE constexpr index_t ceil_div(index_t a, index_t b) { return (a + b - 1) / b; }

}  // namespace vk
