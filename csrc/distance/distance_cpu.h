#pragma once

#include "../common/tensor.h"

namespace vk::distance {

// out[i, j] = sum_d (x[i, d] - y[j, d])^2. x: [N, D], y: [M, D], out: [N, M], any strides,
// all on the host with the same floating dtype.
void sq_l2_distance_cpu(const TensorRef& x, const TensorRef& y, const TensorRef& out);

}  // namespace vk::distance
