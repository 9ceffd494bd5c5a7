// CUDA kernels of the exact patch search (same arithmetic and bounds as the CPU kernel, search.h).
//
// A pass searches the patches of grid A (its "queries") against grid B (its "keys"):
//   prepare_queries: per A position, the lower-bound term of |q|^2 and a first candidate (the key
//                    at the same position), re-scored exactly;
//   prepare_keys:    per B position, af(k) (+inf for masked keys) and the normalized weight w(k);
//   search:          a block owns 64 queries and walks every tile of 64 keys: 256 threads compute
//                    the 64 x 64 GEMM-form tile (4 x 4 each, 16-deep slices read straight from the
//                    inputs, implicit im2col), write the screening values to shared memory, then the
//                    owner thread of each query row re-scores exactly the keys it cannot rule out
//                    and updates its running best (no atomics, so ties resolve as on the CPU).
// The normalized (alpha) search runs a first pass with the grids swapped to get m(k), then the
// weighted pass. Grids are not compacted: masked positions are skipped where they are read.
#include <algorithm>

#include "../common/cuda_utils.h"
#include "../common/dtype.h"
#include "search.h"
#include "patch_nn_ops.h"

namespace vk::patch_nn {
namespace {

constexpr int kTile = 64;     // queries per block, keys per tile
constexpr int kSide = 16;     // threads per block side
constexpr int kPer = kTile / kSide;
constexpr int kBlock = 256;   // threads of the one-thread-per-item kernels

template <typename S>
struct SliceDepth {
  static constexpr int value = 16;
};
template <>
struct SliceDepth<double> {
  static constexpr int value = 8;  // keeps shared memory under 48 KiB
};

VK_DEVICE VK_FORCE_INLINE float fused(float a, float b, float c) { return fmaf(a, b, c); }
VK_DEVICE VK_FORCE_INLINE double fused(double a, double b, double c) { return fma(a, b, c); }

template <typename T, typename S>
struct Pass {
  const T* a_data;
  PatchLayout la;
  GridMask a_mask;
  const T* b_data;
  PatchLayout lb;
  GridMask b_mask;
  const double* den;     // [NB] den(k) for the normalized pass, else nullptr
  const double* weight;  // [NB] w(k) = 1 / den(k)
  S* key_offset;         // [NB]
  S* key_weight;       // [NB]
  double* query_term;  // [NA]
  double* best_score;  // [NA]
  double* best_ssd;    // [NA]
  index_t* best_key;   // [NA]
  ScreenBounds bounds;
};

template <typename T, typename S>
__global__ void prepare_queries_kernel(Pass<T, S> p) {
  const index_t a = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (a >= p.la.grid_size()) return;
  p.best_key[a] = -1;
  p.best_score[a] = INFINITY;
  p.best_ssd[a] = INFINITY;
  if (!p.a_mask(a)) return;
  const T* q = p.a_data + p.la.offset(a);
  p.query_term[a] = p.bounds.query_term(patch_norm(q, p.la));
  const index_t b = same_position(p.la, a, p.lb);
  if (!p.b_mask(b)) return;
  const double ssd = patch_ssd(q, p.la, p.b_data + p.lb.offset(b), p.lb, INFINITY);
  p.best_ssd[a] = ssd;
  p.best_score[a] = p.den ? normalized_score(ssd, p.weight[b]) : ssd;
  p.best_key[a] = b;
}

template <typename T, typename S>
__global__ void prepare_keys_kernel(Pass<T, S> p) {
  const index_t b = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= p.lb.grid_size()) return;
  const bool valid = p.b_mask(b);
  p.key_offset[b] = valid ? p.bounds.template key_offset<S>(patch_norm(p.b_data + p.lb.offset(b), p.lb))
                          : static_cast<S>(INFINITY);
  p.key_weight[b] = (valid && p.den) ? ScreenBounds::key_weight<S>(p.weight[b]) : S(1);
}

template <typename S, bool kWeighted>
VK_DEVICE VK_FORCE_INLINE S row_threshold(const ScreenBounds& bounds, double score, double term) {
  return kWeighted ? bounds.weighted_threshold<S>(score) : bounds.plain_threshold<S>(score, term);
}

template <typename T, typename S, bool kWeighted>
__global__ void search_kernel(Pass<T, S> p) {
  constexpr int kDepth = SliceDepth<S>::value;
  __shared__ S q_slice[kDepth][kTile];
  __shared__ S k_slice[kDepth][kTile];
  __shared__ S values[kTile][kTile + 1];
  __shared__ index_t q_base[kTile];
  __shared__ index_t k_base[kTile];
  __shared__ S k_offset[kTile];
  __shared__ S k_weight[kTile];

  const int tx = threadIdx.x, ty = threadIdx.y;
  const int thread = ty * kSide + tx;
  const index_t na = p.la.grid_size(), nb = p.lb.grid_size();
  const int depth = static_cast<int>(p.la.depth());
  const index_t a0 = static_cast<index_t>(blockIdx.x) * kTile;

  // Owner state: thread r < kTile owns query row a0 + r.
  const index_t a = a0 + thread;
  const bool owner = thread < kTile && a < na && p.a_mask(a);
  double score = INFINITY, ssd_best = INFINITY, term = 0.0;
  index_t key = -1;
  S threshold = static_cast<S>(-INFINITY), term_s = S(0);
  if (thread < kTile) q_base[thread] = a < na ? p.la.offset(a) : -1;
  if (owner) {
    score = p.best_score[a];
    ssd_best = p.best_ssd[a];
    key = p.best_key[a];
    term = p.query_term[a];
    term_s = round_down<S>(term);
    threshold = row_threshold<S, kWeighted>(p.bounds, score, term);
  }

  for (index_t b0 = 0; b0 < nb; b0 += kTile) {
    if (thread < kTile) {
      const index_t b = b0 + thread;
      const bool in = b < nb;
      k_base[thread] = in ? p.lb.offset(b) : -1;
      k_offset[thread] = in ? p.key_offset[b] : static_cast<S>(INFINITY);
      k_weight[thread] = in ? p.key_weight[b] : S(1);
    }
    __syncthreads();
    S acc[kPer][kPer];
    for (int i = 0; i < kPer; ++i)
      for (int j = 0; j < kPer; ++j) acc[i][j] = S(0);
    for (int d0 = 0; d0 < depth; d0 += kDepth) {
      for (int e = thread; e < kTile * kDepth; e += kSide * kSide) {
        const int r = e / kDepth, d = e % kDepth, feature = d0 + d;
        const bool in_depth = feature < depth;
        const index_t qb = q_base[r], kb = k_base[r];
        q_slice[d][r] = (in_depth && qb >= 0)
                            ? static_cast<S>(Scalar<T>::load(p.a_data[qb + element_offset(p.la, feature)]))
                            : S(0);
        k_slice[d][r] = (in_depth && kb >= 0)
                            ? static_cast<S>(Scalar<T>::load(p.b_data[kb + element_offset(p.lb, feature)]))
                            : S(0);
      }
      __syncthreads();
      for (int d = 0; d < kDepth; ++d) {
        S qv[kPer], kv[kPer];
        for (int i = 0; i < kPer; ++i) qv[i] = q_slice[d][ty + i * kSide];
        for (int j = 0; j < kPer; ++j) kv[j] = k_slice[d][tx + j * kSide];
        for (int i = 0; i < kPer; ++i)
          for (int j = 0; j < kPer; ++j) acc[i][j] = fused(qv[i], kv[j], acc[i][j]);
      }
      __syncthreads();
    }
    for (int i = 0; i < kPer; ++i)
      for (int j = 0; j < kPer; ++j)
        values[ty + i * kSide][tx + j * kSide] = fused(S(-2), acc[i][j], k_offset[tx + j * kSide]);
    __syncthreads();
    if (owner) {
      const T* q = p.a_data + q_base[thread];
      for (int c = 0; c < kTile; ++c) {
        const index_t b = b0 + c;
        if (b >= nb) break;
        S z = values[thread][c];
        if (kWeighted) z = (z + term_s) * k_weight[c];
        if (!(z <= threshold) || !p.b_mask(b)) continue;
        const double den = kWeighted ? p.den[b] : 0.0;
        const double stop = stop_bound(score, den, kWeighted);
        const double ssd = patch_ssd(q, p.la, p.b_data + k_base[c], p.lb, stop);
        if (ssd > stop) continue;
        const double s = kWeighted ? normalized_score(ssd, p.weight[b]) : ssd;
        if (better(s, b, score, key)) {
          score = s;
          ssd_best = ssd;
          key = b;
          threshold = row_threshold<S, kWeighted>(p.bounds, score, term);
        }
      }
    }
    __syncthreads();
  }
  if (owner) {
    p.best_score[a] = score;
    p.best_ssd[a] = ssd_best;
    p.best_key[a] = key;
  }
}

// den(k) = alpha * n + m(k) and w(k) = 1 / den(k) from the first pass's minima over the key grid.
__global__ void normalizer_kernel(const double* minima, double alpha_n, index_t count,
                                                            double* den, double* weight) {
  const index_t k = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= count) return;
  den[k] = normalizer(alpha_n, minima[k]);
  weight[k] = key_reciprocal(den[k]);
}

template <typename D>
__global__ void finalize_kernel(const index_t* best_key, const double* best_ssd,
                                                          GridMask query_mask, index_t count, double n,
                                                          std::int64_t* out_index, D* out_distance) {
  const index_t q = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= count) return;
  const bool found = query_mask(q) && best_key[q] >= 0;
  out_index[q] = found ? best_key[q] : -1;
  out_distance[q] = static_cast<D>(found ? div_rn(best_ssd[q], n) : INFINITY);
}

unsigned blocks_for(index_t count, index_t per_block) { return static_cast<unsigned>(ceil_div(count, per_block)); }

template <typename T, typename S>
void run_pass(Pass<T, S> p, cudaStream_t stream) {
  const index_t na = p.la.grid_size(), nb = p.lb.grid_size();
  if (na == 0 || nb == 0) return;
  auto prepare_queries = &prepare_queries_kernel<T, S>;
  auto prepare_keys = &prepare_keys_kernel<T, S>;
  VK_LAUNCH(prepare_queries, dim3(blocks_for(na, kBlock)), dim3(kBlock), 0, stream, p);
  VK_LAUNCH(prepare_keys, dim3(blocks_for(nb, kBlock)), dim3(kBlock), 0, stream, p);
  const dim3 grid(blocks_for(na, kTile)), block(kSide, kSide);
  if (p.den) {
    auto search = &search_kernel<T, S, true>;
    VK_LAUNCH(search, grid, block, 0, stream, p);
  } else {
    auto search = &search_kernel<T, S, false>;
    VK_LAUNCH(search, grid, block, 0, stream, p);
  }
}

template <typename T, typename S>
void patch_nn_typed(const TensorRef& queries, const TensorRef& keys, const TensorRef& query_mask,
                    const TensorRef& key_mask, index_t pt, index_t ph, index_t pw, double alpha,
                    const TensorRef& out_index, const TensorRef& out_distance, const TensorRef& ws_f64,
                    const TensorRef& ws_f32, const TensorRef& ws_i64, cudaStream_t stream) {
  const PatchLayout lq = make_layout(queries, pt, ph, pw);
  const PatchLayout lk = make_layout(keys, pt, ph, pw);
  const index_t nq = lq.grid_size(), nk = lk.grid_size(), most = std::max(nq, nk);
  if (nq == 0) return;
  // Workspace layout (M = max(Nq, Nk)): float64 [query_term | best_score | best_ssd | den | S values
  // of float64 screening (2M) | w], the float32 screening values in the float32 workspace.
  auto* f64 = static_cast<double*>(ws_f64.data);
  S* key_values;
  if constexpr (std::is_same_v<S, double>) {
    key_values = f64 + 4 * most;
  } else {
    key_values = static_cast<float*>(ws_f32.data);
  }
  double* den = f64 + 3 * most;
  double* weight = f64 + 6 * most;
  const ScreenBounds bounds = ScreenBounds::make<S>(lq.depth());
  const GridMask qmask = make_grid_mask(query_mask), kmask = make_grid_mask(key_mask);
  const T* qdata = static_cast<const T*>(queries.data);
  const T* kdata = static_cast<const T*>(keys.data);
  const Pass<T, S> pass_template{qdata,
                                 lq,
                                 qmask,
                                 kdata,
                                 lk,
                                 kmask,
                                 nullptr,
                                 nullptr,
                                 key_values,
                                 key_values + most,
                                 f64,
                                 f64 + most,
                                 f64 + 2 * most,
                                 static_cast<index_t*>(ws_i64.data),
                                 bounds};
  Pass<T, S> pass = pass_template;
  if (!std::isnan(alpha)) {
    // Pass 1: m(k) = min over queries of ssd(q, k), grids swapped.
    Pass<T, S> minima = pass;
    minima.a_data = kdata;
    minima.la = lk;
    minima.a_mask = kmask;
    minima.b_data = qdata;
    minima.lb = lq;
    minima.b_mask = qmask;
    run_pass(minima, stream);
    const double alpha_n = mul_rn(alpha, static_cast<double>(lq.depth()));
    VK_LAUNCH(normalizer_kernel, dim3(blocks_for(nk, kBlock)), dim3(kBlock), 0, stream, minima.best_ssd, alpha_n, nk,
              den, weight);
    pass.den = den;
    pass.weight = weight;
  }
  run_pass(pass, stream);
  const double n = static_cast<double>(lq.depth());
  if (out_distance.dtype == DType::Float64) {
    auto finalize = &finalize_kernel<double>;
    VK_LAUNCH(finalize, dim3(blocks_for(nq, kBlock)), dim3(kBlock), 0, stream, pass.best_key, pass.best_ssd, qmask,
              nq, n, static_cast<std::int64_t*>(out_index.data), static_cast<double*>(out_distance.data));
  } else {
    auto finalize = &finalize_kernel<float>;
    VK_LAUNCH(finalize, dim3(blocks_for(nq, kBlock)), dim3(kBlock), 0, stream, pass.best_key, pass.best_ssd, qmask,
              nq, n, static_cast<std::int64_t*>(out_index.data), static_cast<float*>(out_distance.data));
  }
}

}  // namespace

void patch_nn_cuda(VK_PATCH_NN_ARGS, const TensorRef& workspace_f64, const TensorRef& workspace_f32,
                   const TensorRef& workspace_i64, std::uintptr_t stream) {
  const ArgCheck check("vision_kernels.patch_nn");
  check_patch_nn_arguments(check, queries, keys, query_mask, key_mask, pt, ph, pw, out_index, out_distance,
                           queries.device);
  check_alpha(check, alpha);
  check_cuda_grid(check, make_layout(queries, pt, ph, pw), "queries");
  check_cuda_grid(check, make_layout(keys, pt, ph, pw), "keys");
  const index_t total = make_layout(queries, pt, ph, pw).grid_size() + make_layout(keys, pt, ph, pw).grid_size();
  check.dtype(workspace_f64, "workspace_f64", {DType::Float64});
  check.dtype(workspace_f32, "workspace_f32", {DType::Float32});
  check.dtype(workspace_i64, "workspace_i64", {DType::Int64});
  check.at_least(workspace_f64, "workspace_f64", 0, 7 * total, "7 (Nq + Nk)");
  check.at_least(workspace_f32, "workspace_f32", 0, 2 * total, "2 (Nq + Nk)");
  check.at_least(workspace_i64, "workspace_i64", 0, total, "Nq + Nk");
  for (const TensorRef* t : {&workspace_f64, &workspace_f32, &workspace_i64}) {
    check.on_device(*t, "workspace", queries.device);
    check.contiguous(*t, "workspace");
  }
  VK_DISPATCH_FLOATING(queries.dtype, check.function(), [&] {
    if (wide || std::is_same_v<scalar_t, double>)
      patch_nn_typed<scalar_t, double>(queries, keys, query_mask, key_mask, pt, ph, pw, alpha, out_index,
                                       out_distance, workspace_f64, workspace_f32, workspace_i64, as_stream(stream));
    else
      patch_nn_typed<scalar_t, float>(queries, keys, query_mask, key_mask, pt, ph, pw, alpha, out_index,
                                      out_distance, workspace_f64, workspace_f32, workspace_i64, as_stream(stream));
  });
  check_launch(check.function().c_str());
}

}  // namespace vk::patch_nn
