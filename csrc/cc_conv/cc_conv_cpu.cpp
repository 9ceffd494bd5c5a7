// CPU kernels of cc_conv: gather-GEMMs on packed panels (cc_conv_micro_cpu.h).
//
// gather_gemm: the weights of every group are packed once as [G][O / MR][K][MR] (K = C * Ty * Tx).
// Work items are (batch, group pair, chunk of NR output pixels of the group); each packs the im2col
// columns of its pixels straight from the input as a [K][NR] panel (a vector copy when a tap's NR
// pixels are consecutive in memory, a bounds-checked gather otherwise), then runs the micro-kernel
// for every block of MR output channels and stores the tile (+ bias) at the pixels' positions.
// Extra memory: the packed weights plus K x NR values per thread; no im2col buffer.
//
// weight_grad: work items are (group pair, block of columns k); each reduces over every batch and
// pixel of its group in chunks of kPixels, packing grad as [O / MR][pixels][MR] and the im2col
// values as [k blocks][pixels][NR], and accumulates its [O, k block] slice of the gradient in a
// private buffer. Every output element is summed in a fixed order: results do not depend on the
// number of threads.
#include "cc_conv_cpu.h"

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <vector>

#include "../common/dtype.h"
#include "../common/parallel.h"
#include "cc_conv.h"
#include "cc_conv_micro_cpu.h"

namespace vk::cc_conv {
namespace {

constexpr index_t kPixels = 256;  // reduction chunk of weight_grad (pixels packed at a time)

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

struct Plans {
  AxisPlan rows, cols;
};

Plans checked_plans(const ArgCheck& check, const TensorRef& rt, const TensorRef& rg, const TensorRef& ro,
                    const TensorRef& roff, const TensorRef& ct, const TensorRef& cg, const TensorRef& co,
                    const TensorRef& coff, index_t out_h, index_t out_w, index_t in_h, index_t in_w) {
  check_plan(check, "row", rt, rg, ro, roff, out_h, kCpuDevice);
  check_plan(check, "col", ct, cg, co, coff, out_w, kCpuDevice);
  Plans plans{make_plan(rt, rg, ro, roff), make_plan(ct, cg, co, coff)};
  validate_plan_values(check, "rows", plans.rows, in_h);
  validate_plan_values(check, "cols", plans.cols, in_w);
  return plans;
}

// Element offsets of the taps of one output pixel set: row part y * stride_h and column part
// x * stride_w, or -1 for a padding tap.
inline index_t tap_offset(index_t index, index_t size, index_t stride) {
  return (index >= 0 && index < size) ? index * stride : -1;
}

template <typename T>
void gather_gemm_typed(const TensorRef& input_ref, const TensorRef& weight_ref, const TensorRef& bias_ref,
                       const Plans& plans, const TensorRef& out_ref) {
  using A = acc_t<T>;
  constexpr index_t MR = Micro<A>::MR, NR = Micro<A>::NR;
  const auto in = make_view<const T, 4>(input_ref);  // [B, C, H, W]
  const auto out = make_view<T, 4>(out_ref);         // [B, O, Hout, Wout]
  const T* weight = static_cast<const T*>(weight_ref.data);  // [Gy, Gx, O, C, Ty, Tx]
  const T* bias = bias_ref.numel() > 0 ? static_cast<const T*>(bias_ref.data) : nullptr;
  const index_t bias_stride = bias ? bias_ref.strides[0] : 0;
  const AxisPlan& rows = plans.rows;
  const AxisPlan& cols = plans.cols;
  const index_t batch = in.size[0], channels = in.size[1];
  const index_t out_channels = out.size[1];
  const index_t taps_y = rows.taps_per_output(), taps_x = cols.taps_per_output();
  const index_t depth = channels * taps_y * taps_x;
  const index_t groups_x = cols.groups(), groups = rows.groups() * groups_x;
  if (batch == 0 || out_channels == 0 || out.size[2] == 0 || out.size[3] == 0) return;

  // Packed weights: [G][O blocks][K][MR], zero rows past O.
  const index_t o_blocks = ceil_div(out_channels, MR);
  Scratch<A> packed_weight(groups * o_blocks * depth * MR);
  parallel_for(0, groups * o_blocks, 1, [&](index_t lo, index_t hi) {
    for (index_t item = lo; item < hi; ++item) {
      const index_t g = item / o_blocks, ob = item % o_blocks;
      A* panel = packed_weight.get() + item * depth * MR;
      for (index_t m = 0; m < MR; ++m) {
        const index_t o = ob * MR + m;
        const T* row = weight + (g * out_channels + o) * depth;
        for (index_t k = 0; k < depth; ++k) panel[k * MR + m] = o < out_channels ? Scalar<T>::load(row[k]) : A(0);
      }
    }
  });

  // Chunks of NR pixels per group pair, numbered consecutively: chunk_start[g] .. chunk_start[g + 1].
  std::vector<index_t> chunk_start(static_cast<std::size_t>(groups + 1), 0);
  for (index_t g = 0; g < groups; ++g) {
    const index_t pixels = rows.group_size(g / groups_x) * cols.group_size(g % groups_x);
    chunk_start[g + 1] = chunk_start[g] + ceil_div(pixels, NR);
  }
  const index_t chunks = chunk_start[groups];
  const index_t stride_h = in.stride[2], stride_w = in.stride[3];

  parallel_for_dynamic(0, batch * chunks, 4, [&](index_t lo, index_t hi) {
    Scratch<A> columns(depth * NR);  // [K][NR]
    Scratch<A> tile(MR * NR);
    std::vector<index_t> pixel_i(NR), pixel_j(NR);
    std::vector<index_t> row_offset(static_cast<std::size_t>(taps_y * NR));  // [Ty][NR]
    std::vector<index_t> col_offset(static_cast<std::size_t>(taps_x * NR));  // [Tx][NR]
    std::vector<index_t> run(static_cast<std::size_t>(taps_y * taps_x));     // contiguous start or -1
    for (index_t item = lo; item < hi; ++item) {
      const index_t b = item / chunks, chunk = item % chunks;
      const index_t g = static_cast<index_t>(std::upper_bound(chunk_start.begin(), chunk_start.end(), chunk) -
                                             chunk_start.begin()) - 1;
      const index_t gy = g / groups_x, gx = g % groups_x;
      const index_t width = cols.group_size(gx);
      const index_t first = (chunk - chunk_start[g]) * NR;
      const index_t count = std::min(NR, rows.group_size(gy) * width - first);
      for (index_t n = 0; n < NR; ++n) {
        const bool live = n < count;
        const index_t i = live ? rows.member(gy, (first + n) / width) : 0;
        const index_t j = live ? cols.member(gx, (first + n) % width) : 0;
        pixel_i[n] = i;
        pixel_j[n] = j;
        for (index_t t = 0; t < taps_y; ++t)
          row_offset[t * NR + n] = live ? tap_offset(rows.taps(i, t), in.size[2], stride_h) : -1;
        for (index_t u = 0; u < taps_x; ++u)
          col_offset[u * NR + n] = live ? tap_offset(cols.taps(j, u), in.size[3], stride_w) : -1;
      }
      // A tap whose NR pixels read consecutive elements is packed by a straight copy.
      for (index_t t = 0; t < taps_y; ++t)
        for (index_t u = 0; u < taps_x; ++u) {
          const index_t* ro = &row_offset[t * NR];
          const index_t* co = &col_offset[u * NR];
          bool contiguous = count == NR && stride_w == 1;
          for (index_t n = 0; contiguous && n < NR; ++n)
            contiguous = ro[n] >= 0 && co[n] >= 0 && ro[n] + co[n] == ro[0] + co[0] + n;
          run[t * taps_x + u] = contiguous ? ro[0] + co[0] : -1;
        }
      A* panel = columns.get();
      for (index_t c = 0; c < channels; ++c) {
        const T* plane = in.data + b * in.stride[0] + c * in.stride[1];
        for (index_t t = 0; t < taps_y; ++t)
          for (index_t u = 0; u < taps_x; ++u, panel += NR) {
            const index_t start = run[t * taps_x + u];
            if (start >= 0) {
              const T* source = plane + start;
              for (index_t n = 0; n < NR; ++n) panel[n] = Scalar<T>::load(source[n]);
            } else {
              const index_t* ro = &row_offset[t * NR];
              const index_t* co = &col_offset[u * NR];
              for (index_t n = 0; n < NR; ++n)
                panel[n] = (ro[n] < 0 || co[n] < 0) ? A(0) : Scalar<T>::load(plane[ro[n] + co[n]]);
            }
          }
      }
      for (index_t ob = 0; ob < o_blocks; ++ob) {
        micro_kernel(packed_weight.get() + (g * o_blocks + ob) * depth * MR, columns.get(), depth, tile.get(), NR,
                     false);
        const index_t rows_here = std::min(MR, out_channels - ob * MR);
        for (index_t m = 0; m < rows_here; ++m) {
          const index_t o = ob * MR + m;
          const A shift = bias ? Scalar<T>::load(bias[o * bias_stride]) : A(0);
          const A* values = tile.get() + m * NR;
          for (index_t n = 0; n < count; ++n) out(b, o, pixel_i[n], pixel_j[n]) = Scalar<T>::store(values[n] + shift);
        }
      }
    }
  });
}

template <typename T>
void weight_grad_typed(const TensorRef& grad_ref, const TensorRef& input_ref, const Plans& plans,
                       const TensorRef& grad_weight_ref) {
  using A = acc_t<T>;
  constexpr index_t MR = Micro<A>::MR, NR = Micro<A>::NR;
  const auto grad = make_view<const T, 4>(grad_ref);  // [B, O, Hout, Wout]
  const auto in = make_view<const T, 4>(input_ref);   // [B, C, H, W]
  T* grad_weight = static_cast<T*>(grad_weight_ref.data);  // [Gy, Gx, O, C, Ty, Tx]
  const AxisPlan& rows = plans.rows;
  const AxisPlan& cols = plans.cols;
  const index_t batch = in.size[0], channels = in.size[1], out_channels = grad.size[1];
  const index_t taps_y = rows.taps_per_output(), taps_x = cols.taps_per_output();
  const index_t depth = channels * taps_y * taps_x;
  const index_t groups_x = cols.groups(), groups = rows.groups() * groups_x;
  if (out_channels == 0 || depth == 0) return;

  const index_t o_blocks = ceil_div(out_channels, MR), padded_o = o_blocks * MR;
  // Column blocks: enough work items for every thread even with a single group.
  const index_t panels = ceil_div(depth, NR);
  const index_t splits = std::clamp<index_t>(ceil_div(2 * num_threads(), groups), 1, panels);
  const index_t panels_per_block = ceil_div(panels, splits);
  const index_t blocks = ceil_div(panels, panels_per_block);
  const index_t stride_h = in.stride[2], stride_w = in.stride[3];

  parallel_for_dynamic(0, groups * blocks, 1, [&](index_t lo, index_t hi) {
    Scratch<A> packed_grad(o_blocks * kPixels * MR);           // [O blocks][pixels][MR]
    Scratch<A> packed_input(panels_per_block * kPixels * NR);  // [k panels][pixels][NR]
    Scratch<A> sums(padded_o * panels_per_block * NR);         // [O padded][k block]
    std::vector<index_t> plane_offset(static_cast<std::size_t>(panels_per_block * NR));
    std::vector<index_t> tap_y(plane_offset.size()), tap_x(plane_offset.size());
    std::vector<index_t> row_offset(static_cast<std::size_t>(taps_y)), col_offset(static_cast<std::size_t>(taps_x));
    for (index_t item = lo; item < hi; ++item) {
      const index_t g = item / blocks, block = item % blocks;
      const index_t gy = g / groups_x, gx = g % groups_x;
      const index_t k0 = block * panels_per_block * NR;
      const index_t width = std::min(panels_per_block * NR, depth - k0);
      const index_t block_panels = ceil_div(width, NR), ldc = block_panels * NR;
      for (index_t q = 0; q < ldc; ++q) {
        const Tap tap = split_reduction(std::min(k0 + q, depth - 1), taps_y, taps_x);
        plane_offset[q] = tap.channel * in.stride[1];
        tap_y[q] = q < width ? tap.t : -1;
        tap_x[q] = tap.u;
      }
      std::fill(sums.get(), sums.get() + padded_o * ldc, A(0));
      const index_t group_cols = cols.group_size(gx);
      const index_t pixels = rows.group_size(gy) * group_cols;
      for (index_t b = 0; b < batch; ++b) {
        const T* image = in.data + b * in.stride[0];
        for (index_t p0 = 0; p0 < pixels; p0 += kPixels) {
          const index_t count = std::min(kPixels, pixels - p0);
          for (index_t p = 0; p < count; ++p) {
            const index_t i = rows.member(gy, (p0 + p) / group_cols), j = cols.member(gx, (p0 + p) % group_cols);
            for (index_t ob = 0; ob < o_blocks; ++ob)
              for (index_t m = 0; m < MR; ++m) {
                const index_t o = ob * MR + m;
                packed_grad.get()[(ob * kPixels + p) * MR + m] =
                    o < out_channels ? Scalar<T>::load(grad(b, o, i, j)) : A(0);
              }
            for (index_t t = 0; t < taps_y; ++t) row_offset[t] = tap_offset(rows.taps(i, t), in.size[2], stride_h);
            for (index_t u = 0; u < taps_x; ++u) col_offset[u] = tap_offset(cols.taps(j, u), in.size[3], stride_w);
            for (index_t q = 0; q < ldc; ++q) {
              const index_t ro = tap_y[q] >= 0 ? row_offset[tap_y[q]] : -1;
              const index_t co = col_offset[tap_x[q]];
              packed_input.get()[((q / NR) * kPixels + p) * NR + q % NR] =
                  (ro < 0 || co < 0) ? A(0) : Scalar<T>::load(image[plane_offset[q] + ro + co]);
            }
          }
          for (index_t ob = 0; ob < o_blocks; ++ob)
            for (index_t panel = 0; panel < block_panels; ++panel)
              micro_kernel(packed_grad.get() + ob * kPixels * MR, packed_input.get() + panel * kPixels * NR, count,
                           sums.get() + ob * MR * ldc + panel * NR, ldc, true);
        }
      }
      for (index_t o = 0; o < out_channels; ++o) {
        T* destination = grad_weight + (g * out_channels + o) * depth + k0;
        for (index_t q = 0; q < width; ++q) destination[q] = Scalar<T>::store(sums.get()[o * ldc + q]);
      }
    }
  });
}

}  // namespace

void gather_gemm_cpu(const TensorRef& input, const TensorRef& weight, const TensorRef& bias,
                     const TensorRef& row_taps, const TensorRef& row_group, const TensorRef& row_order,
                     const TensorRef& row_offsets, const TensorRef& col_taps, const TensorRef& col_group,
                     const TensorRef& col_order, const TensorRef& col_offsets, const TensorRef& out) {
  const ArgCheck check("vision_kernels.cc_conv2d");
  check_gather_gemm_arguments(check, input, weight, bias, out, kCpuDevice);
  const Plans plans = checked_plans(check, row_taps, row_group, row_order, row_offsets, col_taps, col_group,
                                    col_order, col_offsets, out.sizes[2], out.sizes[3], input.sizes[2], input.sizes[3]);
  check_plans_match(check, "weight", weight, 0, plans.rows, plans.cols, out.sizes[2], out.sizes[3]);
  VK_DISPATCH_FLOATING(input.dtype, check.function(),
                       [&] { gather_gemm_typed<scalar_t>(input, weight, bias, plans, out); });
}

void weight_grad_cpu(const TensorRef& grad, const TensorRef& input, const TensorRef& row_taps,
                     const TensorRef& row_group, const TensorRef& row_order, const TensorRef& row_offsets,
                     const TensorRef& col_taps, const TensorRef& col_group, const TensorRef& col_order,
                     const TensorRef& col_offsets, const TensorRef& grad_weight) {
  const ArgCheck check("vision_kernels.cc_conv2d_grad_weight");
  check_weight_grad_arguments(check, grad, input, grad_weight, kCpuDevice, false);
  const Plans plans = checked_plans(check, row_taps, row_group, row_order, row_offsets, col_taps, col_group,
                                    col_order, col_offsets, grad.sizes[2], grad.sizes[3], input.sizes[2],
                                    input.sizes[3]);
  check_plans_match(check, "grad_weight", grad_weight, 0, plans.rows, plans.cols, grad.sizes[2], grad.sizes[3]);
  VK_DISPATCH_FLOATING(input.dtype, check.function(),
                       [&] { weight_grad_typed<scalar_t>(grad, input, plans, grad_weight); });
}

}  // namespace vk::cc_conv
