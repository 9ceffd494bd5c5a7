// Packing helpers of the cc_conv CPU kernels: pixels of a group pair, tap offsets of a run of pixels,
// and the gather of one tap's values for a run of pixels (a vector copy for every segment of kLanes
// pixels that reads consecutive elements, a bounds-checked gather otherwise).
#pragma once

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <vector>

#include "../common/dtype.h"
#include "../common/errors.h"
#include "cc_conv.h"

namespace vk::cc_conv {

// A 64-byte aligned scratch array.
template <typename A>
class Scratch {
 public:
  explicit Scratch(index_t count) {
    const std::size_t bytes = ((static_cast<std::size_t>(std::max<index_t>(count, 1)) * sizeof(A) + 63) / 64) * 64;
    data_.reset(static_cast<A*>(std::aligned_alloc(64, bytes)));
    VK_CHECK(data_ != nullptr, ErrorKind::Runtime, "vision_kernels.cc_conv: out of memory for ", bytes,
             " bytes of scratch");
  }
  A* get() const { return data_.get(); }

 private:
  struct Free {
    void operator()(A* p) const { std::free(p); }
  };
  std::unique_ptr<A, Free> data_;
};

// The pixels of group pair (gy, gx) over the whole batch, numbered r = b * per_image + p with p
// running over the group's rows (outer) and columns (inner).
struct GroupPixels {
  const AxisPlan& rows;
  const AxisPlan& cols;
  index_t gy, gx, width, per_image;

  GroupPixels(const AxisPlan& r, const AxisPlan& c, index_t group_y, index_t group_x)
      : rows(r), cols(c), gy(group_y), gx(group_x), width(c.group_size(group_x)),
        per_image(r.group_size(group_y) * c.group_size(group_x)) {}

  index_t total(index_t batch) const { return batch * per_image; }
  void at(index_t r, index_t* b, index_t* i, index_t* j) const {
    *b = r / per_image;
    const index_t p = r - *b * per_image;
    *i = rows.member(gy, p / width);
    *j = cols.member(gx, p % width);
  }
};

// Taps of one axis that some output of a group reads (a tap that reads padding for every output of its
// group contributes nothing and is skipped by gather_gemm).
inline std::vector<std::vector<index_t>> active_taps(const AxisPlan& plan) {
  std::vector<std::vector<index_t>> active(static_cast<std::size_t>(plan.groups()));
  for (index_t g = 0; g < plan.groups(); ++g)
    for (index_t t = 0; t < plan.taps_per_output(); ++t)
      for (index_t n = 0; n < plan.group_size(g); ++n)
        if (plan.taps(plan.member(g, n), t) >= 0) {
          active[g].push_back(t);
          break;
        }
  return active;
}

// Element offsets, into a 4-d input [B, C, H, W], of the taps of up to `capacity` pixels: row parts
// b * sB + y * sH ([Ty][capacity]) and column parts x * sW ([Tx][capacity]), -1 for padding taps or
// unused pixel slots; then, per (t, u) and segment of kLanes pixels, the offset of the segment's first
// element and the step when it reads kLanes elements in arithmetic progression (consecutive ones at
// scale 1, every q-th one in a phase group of scale p / q), else -1.
template <index_t kLanes>
class TapOffsets {
 public:
  TapOffsets(index_t taps_y, index_t taps_x, index_t capacity)
      : taps_y_(taps_y), taps_x_(taps_x), capacity_(capacity), segments_(capacity / kLanes),
        row_(static_cast<std::size_t>(taps_y * capacity)), col_(static_cast<std::size_t>(taps_x * capacity)),
        runs_(static_cast<std::size_t>(taps_y * taps_x * segments_)),
        steps_(static_cast<std::size_t>(taps_y * taps_x * segments_)) {}

  // Pixel slot n reads output (b, i, j) of the plans from an input with sizes (H, W) and strides.
  void set(index_t n, index_t b, index_t i, index_t j, const AxisPlan& rows, const AxisPlan& cols, index_t height,
           index_t width, index_t stride_b, index_t stride_h, index_t stride_w) {
    for (index_t t = 0; t < taps_y_; ++t) {
      const index_t y = rows.taps(i, t);
      row_[t * capacity_ + n] = (y >= 0 && y < height) ? b * stride_b + y * stride_h : -1;
    }
    for (index_t u = 0; u < taps_x_; ++u) {
      const index_t x = cols.taps(j, u);
      col_[u * capacity_ + n] = (x >= 0 && x < width) ? x * stride_w : -1;
    }
  }
  void clear(index_t n) {
    for (index_t t = 0; t < taps_y_; ++t) row_[t * capacity_ + n] = -1;
    for (index_t u = 0; u < taps_x_; ++u) col_[u * capacity_ + n] = -1;
  }
  // Find the arithmetic segments among the first `length` slots (a multiple of kLanes).
  void find_runs(index_t length) {
    for (index_t t = 0; t < taps_y_; ++t)
      for (index_t u = 0; u < taps_x_; ++u)
        for (index_t s = 0; s < length / kLanes; ++s) {
          const index_t* ro = &row_[t * capacity_ + s * kLanes];
          const index_t* co = &col_[u * capacity_ + s * kLanes];
          const index_t base = ro[0] + co[0];
          const index_t step = ro[1] + co[1] - base;
          bool arithmetic = ro[0] >= 0 && co[0] >= 0 && step > 0;
          for (index_t l = 1; arithmetic && l < kLanes; ++l)
            arithmetic = ro[l] >= 0 && co[l] >= 0 && ro[l] + co[l] == base + l * step;
          runs_[(t * taps_x_ + u) * segments_ + s] = arithmetic ? base : -1;
          steps_[(t * taps_x_ + u) * segments_ + s] = step;
        }
  }
  // dst[n] = plane[offset of tap (t, u) of slot n] (0 for padding) for n < length.
  template <typename T, typename A>
  void gather(const T* plane, index_t t, index_t u, index_t length, A* dst) const {
    const index_t* runs = &runs_[(t * taps_x_ + u) * segments_];
    const index_t* steps = &steps_[(t * taps_x_ + u) * segments_];
    const index_t* ro = &row_[t * capacity_];
    const index_t* co = &col_[u * capacity_];
    for (index_t s = 0; s < length / kLanes; ++s) {
      A* out = dst + s * kLanes;
      if (runs[s] >= 0 && steps[s] == 1) {
        const T* source = plane + runs[s];
        for (index_t l = 0; l < kLanes; ++l) out[l] = Scalar<T>::load(source[l]);
      } else if (runs[s] >= 0) {
        const T* source = plane + runs[s];
        const index_t step = steps[s];
        for (index_t l = 0; l < kLanes; ++l) out[l] = Scalar<T>::load(source[l * step]);
      } else {
        for (index_t l = 0; l < kLanes; ++l) {
          const index_t n = s * kLanes + l;
          out[l] = (ro[n] < 0 || co[n] < 0) ? A(0) : Scalar<T>::load(plane[ro[n] + co[n]]);
        }
      }
    }
  }

 private:
  index_t taps_y_, taps_x_, capacity_, segments_;
  std::vector<index_t> row_, col_, runs_, steps_;
};

}  // namespace vk::cc_conv
