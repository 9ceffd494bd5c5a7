// TensorRef: what the core knows of an array handed over from Python (pointer, dtype, shape,
// strides in elements, device). View<T, N>: a typed, strided N-d window for kernels, with
// 64-bit offsets, trivially copyable so it can be passed to a CUDA kernel by value.
#pragma once

#include <cstdint>
#include <string>

#include "defs.h"
#include "dtype.h"
#include "errors.h"

namespace vk {

constexpr int kMaxDims = 8;
constexpr int kCpuDevice = -1;

struct TensorRef {
  void* data = nullptr;
  DType dtype = DType::Float32;
  int ndim = 0;
  index_t sizes[kMaxDims] = {};
  index_t strides[kMaxDims] = {};  // in elements, may be 0 (broadcast) but never negative
  int device = kCpuDevice;         // -1: host memory; >= 0: CUDA device ordinal

  index_t numel() const {
    index_t n = 1;
    for (int d = 0; d < ndim; ++d) n *= sizes[d];
    return n;
  }
  bool on_cpu() const { return device == kCpuDevice; }
  // Row-major contiguous; an empty tensor counts as contiguous whatever its strides (as in torch).
  bool is_contiguous() const {
    if (numel() == 0) return true;
    index_t expected = 1;
    for (int d = ndim - 1; d >= 0; --d) {
      if (sizes[d] != 1 && strides[d] != expected) return false;
      expected *= sizes[d];
    }
    return true;
  }
  std::string shape_string() const {
    std::string s = "[";
    for (int d = 0; d < ndim; ++d) s += (d ? ", " : "") + std::to_string(sizes[d]);
    return s + "]";
  }
  std::string device_string() const { return on_cpu() ? std::string("cpu") : "cuda:" + std::to_string(device); }
};

template <typename T, int N>
struct View {
  T* data;
  index_t size[N];
  index_t stride[N];

  template <typename... Index>
  VK_HOST_DEVICE T& operator()(Index... index) const {
    static_assert(sizeof...(Index) == N, "View: wrong number of indices");
    const index_t idx[N] = {static_cast<index_t>(index)...};
    index_t offset = 0;
    for (int d = 0; d < N; ++d) offset += idx[d] * stride[d];
    return data[offset];
  }
  // Pointer to the start of row `i` along dimension 0 (the rest addressed with stride[1..]).
  VK_HOST_DEVICE T* row(index_t i) const { return data + i * stride[0]; }
};

// Typed view of a TensorRef; the caller has already checked dtype and rank (see checks.h).
template <typename T, int N>
View<T, N> make_view(const TensorRef& t) {
  View<T, N> v;
  v.data = static_cast<T*>(t.data);
  for (int d = 0; d < N; ++d) {
    v.size[d] = t.sizes[d];
    v.stride[d] = t.strides[d];
  }
  return v;
}

}  // namespace vk
