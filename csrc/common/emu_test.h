// A small test framework for vk_emu_tests, the torch-free executable the sanitizer jobs run:
// each family's emu_test.cpp runs its emulated CUDA kernels on small inputs and compares them
// with its CPU kernels. Built with -fsanitize=thread, a missing __syncthreads shows up as a data
// race; with -fsanitize=address, an out-of-bounds shared or global access as an error.
//
//   VK_EMU_TEST(sq_l2_small) {
//     auto x = HostArray<float>::random({37, 11}, DType::Float32);
//     ...
//     expect_close("sq_l2_small", got.values(), want.values(), 1e-5, 1e-6);
//   }
#pragma once

#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "dtype.h"
#include "errors.h"
#include "tensor.h"

namespace vk::emu_test {

struct Case {
  std::string name;
  void (*run)();
};

inline std::vector<Case>& registry() {
  static std::vector<Case> cases;
  return cases;
}

struct Register {
  Register(const char* name, void (*run)()) { registry().push_back({name, run}); }
};

inline std::mt19937_64& rng() {
  static std::mt19937_64 generator(20261124);
  return generator;
}

// Host storage with a TensorRef over it (device -1, the harness runs on host memory).
template <typename T>
struct HostArray {
  std::vector<T> storage;
  TensorRef ref;

  // Contiguous array of `shape` filled with `fill(i)` for flat index i.
  static HostArray filled(const std::vector<index_t>& shape, DType dtype, const std::function<T(index_t)>& fill) {
    HostArray a;
    index_t numel = 1;
    for (index_t s : shape) numel *= s;
    a.storage.resize(static_cast<std::size_t>(numel));
    for (index_t i = 0; i < numel; ++i) a.storage[static_cast<std::size_t>(i)] = fill(i);
    a.ref.data = a.storage.data();
    a.ref.dtype = dtype;
    a.ref.ndim = static_cast<int>(shape.size());
    index_t stride = 1;
    for (int d = a.ref.ndim - 1; d >= 0; --d) {
      a.ref.sizes[d] = shape[static_cast<std::size_t>(d)];
      a.ref.strides[d] = stride;
      stride *= shape[static_cast<std::size_t>(d)];
    }
    return a;
  }
  static HostArray zeros(const std::vector<index_t>& shape, DType dtype) {
    return filled(shape, dtype, [](index_t) { return T{}; });
  }
  // Uniform values in [low, high), converted to T with `convert`.
  static HostArray uniform(const std::vector<index_t>& shape, DType dtype, float low, float high,
                           T (*convert)(float) = [](float v) { return static_cast<T>(v); }) {
    std::uniform_real_distribution<float> distribution(low, high);
    return filled(shape, dtype, [&](index_t) { return convert(distribution(rng())); });
  }
};

template <typename T>
double as_double(T v) {
  return static_cast<double>(to_float(v));
}

// Element-wise |got - want| <= atol + rtol * |want| (NaN in either fails), over `count` values.
template <typename T>
void expect_close(const std::string& what, const T* got, const T* want, std::size_t count, double rtol, double atol) {
  for (std::size_t i = 0; i < count; ++i) {
    const double g = as_double(got[i]), w = as_double(want[i]);
    if (!(std::fabs(g - w) <= atol + rtol * std::fabs(w)))
      fail(ErrorKind::Runtime, str(what, ": element ", i, " differs: emulated CUDA ", g, " vs CPU ", w));
  }
}

}  // namespace vk::emu_test

#define VK_EMU_TEST(name)                                                                      \
  static void vk_emu_test_##name();                                                            \
  static const ::vk::emu_test::Register vk_emu_register_##name(#name, &vk_emu_test_##name);   \
  static void vk_emu_test_##name()
