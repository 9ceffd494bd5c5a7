// CPU screening micro-kernels of the exact patch search (see search.h).
//
// One call handles an MR x NR tile: MR queries packed as [depth][MR] against NR keys packed as
// [depth][NR] (zero padded), and never stores the Nq x Nk matrix:
//   g[r][c] = sum_d queries[d][r] * keys[d][c]                  (accumulated in S, any order)
//   v[r][c] = fl(key_offset[c] - 2 g[r][c])                     plain search
//   z[r][c] = fl(fl(v[r][c] + query_term[r]) * key_weight[c])   normalized (alpha) search
// Bit c of masks[r] is set when v (plain) or z (normalized) is <= threshold[r]: the key may beat
// the query's best and must be re-scored exactly. `values` receives the tile's v when any bit is set.
#pragma once

#include <cstdint>

#include "../common/defs.h"

namespace vk::patch_nn {

template <typename S>
struct ScreenTile {
  const S* queries;     // [depth][MR]
  const S* keys;        // [depth][NR], 64-byte aligned
  index_t depth;
  const S* key_offset;  // [NR]
  const S* key_weight;  // [NR] (normalized search only)
  const S* query_term;  // [MR] (normalized search only)
  const S* threshold;   // [MR]
  S* values;            // [MR][NR] the v values, written when the result is true
  std::uint64_t* masks; // [MR]
};

template <typename S>
using TileFunction = bool (*)(const ScreenTile<S>&);

template <typename S>
struct ScreenKernel {
  int mr;
  int nr;
  TileFunction<S> plain;
  TileFunction<S> weighted;
  const char* isa;
};

// The fastest kernel this CPU runs: AVX-512 (12 x 32), AVX2 + FMA (6 x 16) or portable C++
// (4 x 16) for float; portable C++ for double.
ScreenKernel<float> float_screen_kernel();
ScreenKernel<double> double_screen_kernel();

}  // namespace vk::patch_nn
