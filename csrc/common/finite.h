// all_finite(t): whether a host tensor (floating, any strides) holds no NaN or Inf. The op layer's
// fast path of ArgCheck.finite on CPU tensors: one pass, no temporaries (vision_kernels/ops/_checks.py
// finds the position of a bad value with torch only when this says there is one).
#pragma once

#include <cmath>

#include "dtype.h"
#include "errors.h"
#include "tensor.h"

namespace vk {

template <typename T>
bool all_finite_typed(const TensorRef& t) {
  const T* data = static_cast<const T*>(t.data);
  index_t index[kMaxDims] = {};
  const index_t total = t.numel();
  const int last = t.ndim - 1;
  index_t offset = 0;
  for (index_t n = 0; n < total; ++n) {
    if (!std::isfinite(static_cast<double>(Scalar<T>::load(data[offset])))) return false;
    for (int d = last; d >= 0; --d) {  // next index in row-major order, offset kept in step
      if (++index[d] < t.sizes[d]) {
        offset += t.strides[d];
        break;
      }
      offset -= (t.sizes[d] - 1) * t.strides[d];
      index[d] = 0;
    }
  }
  return true;
}

inline bool all_finite(const TensorRef& t) {
  VK_CHECK(t.on_cpu(), ErrorKind::Value, "vision_kernels.all_finite: argument 't' must be on the cpu, got ",
           t.device_string());
  bool finite = true;
  VK_DISPATCH_FLOATING(t.dtype, "vision_kernels.all_finite", [&] { finite = all_finite_typed<scalar_t>(t); });
  return finite;
}

}  // namespace vk
