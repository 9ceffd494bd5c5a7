// CPU kernels of cc_conv: gather-GEMMs on packed panels (cc_conv_micro_cpu.h, cc_conv_pack_cpu.h).
//
// gather_gemm: the weights of every group pair are packed once (read through WeightSource, so the
// input gradient reads the forward weight directly; pairs are handled in batches whose packed weights
// fit in kPackedBudget) as [O / MR][K_g][MR], where K_g =
// C x (active row taps) x (active column taps) skips taps that read padding for the whole group (the
// transposed plans of the input gradient pad their groups to a common width). Work items are
// chunks of NR pixels of one group pair, counted over the whole batch; each packs its im2col columns
// straight from the input as a [K_g][NR] panel, runs the micro-kernel for every block of MR output
// channels and stores the tile (+ bias) at the pixels' positions. Extra memory: the packed weights
// plus K x NR values per thread; no im2col buffer.
//
// weight_grad: work items are (group pair, block of reduction indices k). Each walks the group's
// pixels over the batch in chunks of kChunk, packs grad as [O][pixels] and the im2col values of its
// block as [k][pixels] (pixel-major, so that runs of consecutive input elements are vector copies),
// and accumulates dot products over the pixels (dot_kernel) into its [O, k block] slice. Every
// output element is summed in a fixed order: results do not depend on the number of threads.
#include "cc_conv_cpu.h"

#include <algorithm>
#include <vector>

#include "../common/dtype.h"
#include "../common/parallel.h"
#include "cc_conv.h"
#include "cc_conv_micro_cpu.h"
#include "cc_conv_pack_cpu.h"

namespace vk::cc_conv {
namespace {

constexpr index_t kChunk = 1024;                // pixels per reduction chunk of weight_grad
constexpr index_t kPackedBudget = 2 << 20;      // bytes of packed weights held at a time by gather_gemm

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

template <typename T>
void gather_gemm_typed(const TensorRef& input_ref, const WeightSource<T>& weight, const TensorRef& bias_ref,
                       const Plans& plans, const TensorRef& out_ref) {
  using A = acc_t<T>;
  constexpr index_t MR = Micro<A>::MR, NR = Micro<A>::NR, kLanes = Micro<A>::kLanes;
  const auto in = make_view<const T, 4>(input_ref);         // [B, C, H, W]
  const auto out = make_view<T, 4>(out_ref);                // [B, O, Hout, Wout]
  const T* bias = bias_ref.numel() > 0 ? static_cast<const T*>(bias_ref.data) : nullptr;
  const index_t bias_stride = bias ? bias_ref.strides[0] : 0;
  const AxisPlan& rows = plans.rows;
  const AxisPlan& cols = plans.cols;
  const index_t batch = in.size[0], channels = in.size[1], out_channels = out.size[1];
  const index_t taps_y = rows.taps_per_output(), taps_x = cols.taps_per_output();
  const index_t depth = channels * taps_y * taps_x;
  const index_t groups_x = cols.groups(), groups = rows.groups() * groups_x;
  if (batch == 0 || out_channels == 0 || out.size[2] == 0 || out.size[3] == 0) return;
  const auto active_y = active_taps(rows), active_x = active_taps(cols);
  auto group_depth = [&](index_t g) {
    return channels * static_cast<index_t>(active_y[g / groups_x].size() * active_x[g % groups_x].size());
  };

  // Group pairs are processed in batches whose packed weights fit in kPackedBudget bytes (at least one
  // pair per batch). Pair g's weights, [O blocks][K_g][MR], end at offset packed_end[g + 1] of the
  // buffer (offsets restart at 0 with every batch).
  const index_t o_blocks = ceil_div(out_channels, MR);
  std::vector<index_t> packed_end(static_cast<std::size_t>(groups + 1), 0), batch_end;
  index_t largest = 0;
  for (index_t g = 0; g < groups; ++g) {
    const index_t size = o_blocks * group_depth(g) * MR;
    const bool full = packed_end[g] > 0 && (packed_end[g] + size) * static_cast<index_t>(sizeof(A)) > kPackedBudget;
    if (full) batch_end.push_back(g);
    packed_end[g + 1] = (full ? 0 : packed_end[g]) + size;
    largest = std::max(largest, packed_end[g + 1]);
  }
  batch_end.push_back(groups);
  Scratch<A> packed_weight(largest);

  // Chunks of NR pixels (over the batch) per group pair: chunk_start[g] .. chunk_start[g + 1].
  std::vector<index_t> chunk_start(static_cast<std::size_t>(groups + 1), 0);
  for (index_t g = 0; g < groups; ++g)
    chunk_start[g + 1] =
        chunk_start[g] + ceil_div(GroupPixels(rows, cols, g / groups_x, g % groups_x).total(batch), NR);

  index_t first_group = 0;
  for (const index_t last_group : batch_end) {
    parallel_for(first_group * o_blocks, last_group * o_blocks, 1, [&](index_t lo, index_t hi) {
      for (index_t item = lo; item < hi; ++item) {
        const index_t g = item / o_blocks, ob = item % o_blocks;
        const index_t gy = g / groups_x, gx = g % groups_x;
        const index_t depth_g = group_depth(g);
        A* panel = packed_weight.get() + (packed_end[g + 1] - o_blocks * depth_g * MR) + ob * depth_g * MR;
        const index_t rows_here = std::min(MR, out_channels - ob * MR);
        for (index_t c = 0; c < channels; ++c)
          for (index_t t : active_y[gy])
            for (index_t u : active_x[gx]) {
              const index_t base = weight.tap_base(gy, gx, t, u);
              for (index_t m = 0; m < MR; ++m) panel[m] = m < rows_here ? weight.load(base, ob * MR + m, c) : A(0);
              panel += MR;
            }
      }
    });

    parallel_for_dynamic(chunk_start[first_group], chunk_start[last_group], 2, [&](index_t lo, index_t hi) {
      Scratch<A> columns(depth * NR);  // [K_g][NR]
      Scratch<A> tile(MR * NR);
      std::vector<index_t> pixel_b(NR), pixel_i(NR), pixel_j(NR);
      TapOffsets<kLanes> offsets(taps_y, taps_x, NR);
      for (index_t item = lo; item < hi; ++item) {
        const index_t g = static_cast<index_t>(std::upper_bound(chunk_start.begin(), chunk_start.end(), item) -
                                               chunk_start.begin()) - 1;
        const GroupPixels pixels(rows, cols, g / groups_x, g % groups_x);
        const index_t first = (item - chunk_start[g]) * NR;
        const index_t count = std::min(NR, pixels.total(batch) - first);
        for (index_t n = 0; n < NR; ++n) {
          if (n < count) {
            pixels.at(first + n, &pixel_b[n], &pixel_i[n], &pixel_j[n]);
            offsets.set(n, pixel_b[n], pixel_i[n], pixel_j[n], rows, cols, in.size[2], in.size[3], in.stride[0],
                        in.stride[2], in.stride[3]);
          } else {
            offsets.clear(n);
          }
        }
        offsets.find_runs(NR);
        A* panel = columns.get();
        for (index_t c = 0; c < channels; ++c) {
          const T* plane = in.data + c * in.stride[1];
          for (index_t t : active_y[pixels.gy])
            for (index_t u : active_x[pixels.gx]) {
              offsets.gather(plane, t, u, NR, panel);
              panel += NR;
            }
        }
        const index_t depth_g = group_depth(g);
        const A* weights = packed_weight.get() + packed_end[g + 1] - o_blocks * depth_g * MR;
        for (index_t ob = 0; ob < o_blocks; ++ob) {
          micro_kernel(weights + ob * depth_g * MR, columns.get(), depth_g, tile.get(), NR, false);
          const index_t rows_here = std::min(MR, out_channels - ob * MR);
          for (index_t m = 0; m < rows_here; ++m) {
            const index_t o = ob * MR + m;
            const A shift = bias ? Scalar<T>::load(bias[o * bias_stride]) : A(0);
            const A* values = tile.get() + m * NR;
            for (index_t n = 0; n < count; ++n)
              out(pixel_b[n], o, pixel_i[n], pixel_j[n]) = Scalar<T>::store(values[n] + shift);
          }
        }
      }
    });
    first_group = last_group;
  }
}

template <typename T>
void weight_grad_typed(const TensorRef& grad_ref, const TensorRef& input_ref, const Plans& plans,
                       const TensorRef& grad_weight_ref) {
  using A = acc_t<T>;
  constexpr index_t kLanes = Micro<A>::kLanes;
  const auto grad = make_view<const T, 4>(grad_ref);        // [B, O, Hout, Wout]
  const auto in = make_view<const T, 4>(input_ref);         // [B, C, H, W]
  T* grad_weight = static_cast<T*>(grad_weight_ref.data);  // [Gy, Gx, O, C, Ty, Tx]
  const AxisPlan& rows = plans.rows;
  const AxisPlan& cols = plans.cols;
  const index_t batch = in.size[0], channels = in.size[1], out_channels = grad.size[1];
  const index_t taps_y = rows.taps_per_output(), taps_x = cols.taps_per_output();
  const index_t depth = channels * taps_y * taps_x;
  const index_t groups_x = cols.groups(), groups = rows.groups() * groups_x;
  if (out_channels == 0 || depth == 0) return;

  const index_t padded_o = ceil_div(out_channels, DO) * DO;
  // Blocks of reduction indices: enough work items for every thread even with a single group pair.
  const index_t tiles = ceil_div(depth, DK);
  const index_t splits = std::clamp<index_t>(ceil_div(2 * num_threads(), groups), 1, tiles);
  const index_t tiles_per_block = ceil_div(tiles, splits);
  const index_t blocks = ceil_div(tiles, tiles_per_block);
  const index_t block_width = tiles_per_block * DK;

  parallel_for_dynamic(0, groups * blocks, 1, [&](index_t lo, index_t hi) {
    Scratch<A> packed_grad(padded_o * kChunk);      // [O padded][pixels]
    Scratch<A> packed_input(block_width * kChunk);  // [k block][pixels]
    Scratch<A> sums(padded_o * block_width);        // [O padded][k block]
    TapOffsets<kLanes> offsets(taps_y, taps_x, kChunk);
    std::vector<index_t> grad_offset(kChunk), grad_runs(kChunk / kLanes);
    for (index_t item = lo; item < hi; ++item) {
      const index_t g = item / blocks, k0 = (item % blocks) * block_width;
      const index_t width = std::min(block_width, depth - k0);
      const index_t ldc = ceil_div(width, DK) * DK;
      const GroupPixels pixels(rows, cols, g / groups_x, g % groups_x);
      const index_t total = pixels.total(batch);
      std::fill(sums.get(), sums.get() + padded_o * ldc, A(0));
      std::fill(packed_grad.get() + out_channels * kChunk, packed_grad.get() + padded_o * kChunk, A(0));
      std::fill(packed_input.get() + width * kChunk, packed_input.get() + ldc * kChunk, A(0));
      for (index_t r0 = 0; r0 < total; r0 += kChunk) {
        const index_t count = std::min(kChunk, total - r0);
        const index_t length = ceil_div(count, kLanes) * kLanes;
        for (index_t n = 0; n < length; ++n) {
          if (n < count) {
            index_t b, i, j;
            pixels.at(r0 + n, &b, &i, &j);
            offsets.set(n, b, i, j, rows, cols, in.size[2], in.size[3], in.stride[0], in.stride[2], in.stride[3]);
            grad_offset[n] = b * grad.stride[0] + i * grad.stride[2] + j * grad.stride[3];
          } else {
            offsets.clear(n);
            grad_offset[n] = -1;
          }
        }
        offsets.find_runs(length);
        for (index_t s = 0; s < length / kLanes; ++s) {
          const index_t* go = &grad_offset[s * kLanes];
          bool contiguous = grad.stride[3] == 1;
          for (index_t l = 0; contiguous && l < kLanes; ++l) contiguous = go[l] >= 0 && go[l] == go[0] + l;
          grad_runs[s] = contiguous ? go[0] : -1;
        }
        for (index_t o = 0; o < out_channels; ++o) {
          const T* plane = grad.data + o * grad.stride[1];
          A* row = packed_grad.get() + o * kChunk;
          for (index_t s = 0; s < length / kLanes; ++s) {
            if (grad_runs[s] >= 0) {
              for (index_t l = 0; l < kLanes; ++l) row[s * kLanes + l] = Scalar<T>::load(plane[grad_runs[s] + l]);
            } else {
              for (index_t l = 0; l < kLanes; ++l) {
                const index_t go = grad_offset[s * kLanes + l];
                row[s * kLanes + l] = go < 0 ? A(0) : Scalar<T>::load(plane[go]);
              }
            }
          }
        }
        for (index_t q = 0; q < width; ++q) {
          const Tap tap = split_reduction(k0 + q, taps_y, taps_x);
          offsets.gather(in.data + tap.channel * in.stride[1], tap.t, tap.u, length, packed_input.get() + q * kChunk);
        }
        for (index_t kt = 0; kt < ldc; kt += DK)
          for (index_t ot = 0; ot < padded_o; ot += DO)
            dot_kernel(packed_grad.get() + ot * kChunk, kChunk, packed_input.get() + kt * kChunk, kChunk, length,
                       sums.get() + ot * ldc + kt, ldc);
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
                     const TensorRef& row_pairs, const TensorRef& col_pairs, const TensorRef& row_taps,
                     const TensorRef& row_group, const TensorRef& row_order, const TensorRef& row_offsets,
                     const TensorRef& col_taps, const TensorRef& col_group, const TensorRef& col_order,
                     const TensorRef& col_offsets, const TensorRef& out) {
  const ArgCheck check("vision_kernels.cc_conv2d");
  check_gather_gemm_arguments(check, input, weight, bias, row_pairs, col_pairs, out, kCpuDevice);
  const Plans plans = checked_plans(check, row_taps, row_group, row_order, row_offsets, col_taps, col_group,
                                    col_order, col_offsets, out.sizes[2], out.sizes[3], input.sizes[2], input.sizes[3]);
  check_plans_cover(check, plans.rows, plans.cols, out.sizes[2], out.sizes[3]);
  check_weight_matches(check, weight, row_pairs, col_pairs, plans.rows, plans.cols);
  if (row_pairs.numel() > 0) {
    validate_pairs(check, "row_pairs", row_pairs, weight.sizes[0], weight.sizes[4]);
    validate_pairs(check, "col_pairs", col_pairs, weight.sizes[1], weight.sizes[5]);
  }
  VK_DISPATCH_FLOATING(input.dtype, check.function(), [&] {
    gather_gemm_typed<scalar_t>(input, make_weight_source<scalar_t>(weight, row_pairs, col_pairs), bias, plans, out);
  });
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
  check_plans_cover(check, plans.rows, plans.cols, grad.sizes[2], grad.sizes[3]);
  check_plans_match_weight(check, "grad_weight", grad_weight, 0, plans.rows, plans.cols);
  VK_DISPATCH_FLOATING(input.dtype, check.function(),
                       [&] { weight_grad_typed<scalar_t>(grad, input, plans, grad_weight); });
}

}  // namespace vk::cc_conv
