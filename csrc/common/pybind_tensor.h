// pybind11 conversion of the Python-side tensor description into vk::TensorRef.
// vision_kernels/_native.py builds it from a torch tensor as the tuple
//   (data_ptr: int, dtype_code: int, shape: tuple[int, ...], strides: tuple[int, ...], device: int)
// with strides in elements and device -1 for host memory. Conversion happens while the GIL is
// held; the kernel call itself releases it (py::call_guard<py::gil_scoped_release>).
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>

#include "tensor.h"

namespace pybind11::detail {

template <>
struct type_caster<vk::TensorRef> {
  PYBIND11_TYPE_CASTER(vk::TensorRef, const_name("TensorRef"));

  bool load(handle source, bool) {
    if (!isinstance<tuple>(source)) return false;
    const auto fields = reinterpret_borrow<tuple>(source);
    if (fields.size() != 5) return false;
    const auto shape = fields[2].cast<tuple>();
    const auto strides = fields[3].cast<tuple>();
    if (shape.size() != strides.size() || shape.size() > static_cast<std::size_t>(vk::kMaxDims)) return false;
    value.data = reinterpret_cast<void*>(fields[0].cast<std::uintptr_t>());
    const int code = fields[1].cast<int>();
    if (code < 0 || code > static_cast<int>(vk::DType::Bool)) return false;
    value.dtype = static_cast<vk::DType>(code);
    value.ndim = static_cast<int>(shape.size());
    for (int d = 0; d < value.ndim; ++d) {
      value.sizes[d] = shape[d].cast<std::int64_t>();
      value.strides[d] = strides[d].cast<std::int64_t>();
      if (value.sizes[d] < 0 || value.strides[d] < 0) return false;
    }
    value.device = fields[4].cast<int>();
    return true;
  }
};

}  // namespace pybind11::detail
