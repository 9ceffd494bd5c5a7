// Pairwise distances: the arithmetic shared by the CPU loop and the CUDA kernel.
//
//   sq_l2_distance(x, y)[i, j] = sum_d (x[i, d] - y[j, d])^2      x: [N, D], y: [M, D]
//
// Accumulated in float (double for float64 inputs) in the difference form, which has no
// cancellation (unlike |x|^2 + |y|^2 - 2 x.y), in increasing d for every (i, j).
#pragma once

#include "../common/checks.h"
#include "../common/defs.h"
#include "../common/tensor.h"

namespace vk::distance {

template <typename A>
VK_HOST_DEVICE VK_FORCE_INLINE A accumulate_squared_difference(A accumulator, A x, A y) {
  const A difference = x - y;
  return accumulator + difference * difference;
}

// The checks both the CPU and the CUDA entry points run (the Python layer runs the same first).
inline void check_sq_l2_arguments(const ArgCheck& check, const TensorRef& x, const TensorRef& y,
                                  const TensorRef& out, int device) {
  check.rank(x, "x", 2, "[N, D]");
  check.rank(y, "y", 2, "[M, D]");
  check.rank(out, "out", 2, "[N, M]");
  check.floating(x, "x");
  check.same_dtype(x, "x", y, "y");
  check.same_dtype(x, "x", out, "out");
  check.size(y, "y", 1, x.sizes[1], "D, the feature size of x");
  check.at_least(x, "x", 1, 1, "D, the feature size");
  check.size(out, "out", 0, x.sizes[0], "N");
  check.size(out, "out", 1, y.sizes[0], "M");
  check.on_device(x, "x", device);
  check.on_device(y, "y", device);
  check.on_device(out, "out", device);
  check.not_null(x, "x");
  check.not_null(y, "y");
  check.not_null(out, "out");
}

}  // namespace vk::distance
