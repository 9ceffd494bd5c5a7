// The valid patches of one [T, H, W, C] input on the host: their flat grid indices (increasing) and
// element offsets, read through a boolean mask over the patch grid. Shared by the CPU kernels.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../common/tensor.h"
#include "patch.h"

namespace vk::patch_nn {

template <typename T>
struct PatchSet {
  const T* data = nullptr;
  PatchLayout layout{};
  std::vector<index_t> flat;    // flat grid index of each valid patch, increasing
  std::vector<index_t> offset;  // element offset of its first value

  index_t size() const { return static_cast<index_t>(flat.size()); }
  const T* patch(index_t i) const { return data + offset[static_cast<std::size_t>(i)]; }

  // Position in this set of the valid patch nearest (in flat order) to flat grid index `target`.
  index_t nearest(index_t target) const {
    const auto it = std::lower_bound(flat.begin(), flat.end(), target);
    if (it == flat.end()) return size() - 1;
    return static_cast<index_t>(it - flat.begin());
  }
};

// mask: bool [grid_t, grid_h, grid_w] with any strides (stride 0 for "all valid").
template <typename T>
PatchSet<T> make_patch_set(const TensorRef& input, const TensorRef& mask, const PatchLayout& layout) {
  PatchSet<T> set;
  set.data = static_cast<const T*>(input.data);
  set.layout = layout;
  const auto* valid = static_cast<const std::uint8_t*>(mask.data);
  index_t flat = 0;
  for (index_t t = 0; t < layout.grid_t; ++t)
    for (index_t y = 0; y < layout.grid_h; ++y)
      for (index_t x = 0; x < layout.grid_w; ++x, ++flat)
        if (valid[t * mask.strides[0] + y * mask.strides[1] + x * mask.strides[2]]) {
          set.flat.push_back(flat);
          set.offset.push_back(layout.offset(flat));
        }
  return set;
}

}  // namespace vk::patch_nn
