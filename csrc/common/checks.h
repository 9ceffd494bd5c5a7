// The one place for argument checks in C++. Every kernel entry point builds an ArgCheck with
// its public name and checks each TensorRef it received. The Python layer
// (vision_kernels/ops/_checks.py) makes the same checks first with the same messages; these
// are the core's own guard, so a direct call into vision_kernels._C can never crash.
//
//   ArgCheck check("vision_kernels.sq_l2_distance");
//   check.rank(x, "x", 2, "[N, D]");
//   check.floating(x, "x");
//   check.same_dtype(x, "x", y, "y");
#pragma once

#include <initializer_list>
#include <string>

#include "errors.h"
#include "tensor.h"

namespace vk {

class ArgCheck {
 public:
  explicit ArgCheck(std::string function) : function_(std::move(function)) {}

  const std::string& function() const { return function_; }

  void rank(const TensorRef& t, const char* name, int expected, const char* layout = "") const {
    VK_CHECK(t.ndim == expected, ErrorKind::Value, function_, ": argument '", name, "' must have ", expected,
             " dimensions ", layout, ", got ", t.ndim, " with shape ", t.shape_string());
  }

  void dtype(const TensorRef& t, const char* name, std::initializer_list<DType> allowed) const {
    for (DType d : allowed)
      if (t.dtype == d) return;
    std::string names;
    for (DType d : allowed) names += (names.empty() ? "" : ", ") + std::string(dtype_name(d));
    fail(ErrorKind::Type, str(function_, ": argument '", name, "' must have dtype in {", names, "}, got ",
                              dtype_name(t.dtype)));
  }

  void floating(const TensorRef& t, const char* name) const {
    dtype(t, name, {DType::Float32, DType::Float64, DType::Float16, DType::BFloat16});
  }

  void same_dtype(const TensorRef& a, const char* a_name, const TensorRef& b, const char* b_name) const {
    VK_CHECK(a.dtype == b.dtype, ErrorKind::Type, function_, ": argument '", b_name, "' must have the dtype of '",
             a_name, "' (", dtype_name(a.dtype), "), got ", dtype_name(b.dtype));
  }

  void size(const TensorRef& t, const char* name, int dim, index_t expected, const char* what = "") const {
    VK_CHECK(t.sizes[dim] == expected, ErrorKind::Value, function_, ": argument '", name, "' must have size ",
             expected, " in dimension ", dim, what[0] ? " (" : "", what, what[0] ? ")" : "", ", got shape ",
             t.shape_string());
  }

  void at_least(const TensorRef& t, const char* name, int dim, index_t minimum, const char* what = "") const {
    VK_CHECK(t.sizes[dim] >= minimum, ErrorKind::Value, function_, ": argument '", name, "' must have size >= ",
             minimum, " in dimension ", dim, what[0] ? " (" : "", what, what[0] ? ")" : "", ", got shape ",
             t.shape_string());
  }

  void on_device(const TensorRef& t, const char* name, int device) const {
    VK_CHECK(t.device == device, ErrorKind::Value, function_, ": argument '", name, "' must be on ",
             device == kCpuDevice ? std::string("cpu") : "cuda:" + std::to_string(device), ", got ",
             t.device_string());
  }

  void same_device(const TensorRef& a, const char* a_name, const TensorRef& b, const char* b_name) const {
    VK_CHECK(a.device == b.device, ErrorKind::Value, function_, ": arguments '", a_name, "' and '", b_name,
             "' must be on the same device, got ", a.device_string(), " and ", b.device_string());
  }

  void contiguous(const TensorRef& t, const char* name) const {
    VK_CHECK(t.is_contiguous(), ErrorKind::Value, function_, ": argument '", name,
             "' must be contiguous (the caller allocates it), got shape ", t.shape_string());
  }

  void not_null(const TensorRef& t, const char* name) const {
    VK_CHECK(t.data != nullptr || t.numel() == 0, ErrorKind::Value, function_, ": argument '", name,
             "' has a null data pointer");
  }

 private:
  std::string function_;
};

}  // namespace vk
