// Host emulation harness for CUDA kernels (DESIGN.md section 4).
//
// A .cu file compiled with g++ and `-include common/cuda_emu.h -DVK_CUDA_EMULATION` runs its own
// kernels on the CPU: blocks one after another, one host thread per CUDA thread, __syncthreads
// as a barrier over the block, __shared__ memory shared by the block's threads, warp shuffles,
// votes and atomics emulated. Launches go through VK_LAUNCH (common/cuda_utils.h).
//
// Contract and limits (keep kernels within them):
// - __shared__ becomes `static`: correct because launches are serialized and blocks of a launch
//   run one at a time. Dynamic shared memory (VK_EXTERN_SHARED) is refilled with 0xFF bytes (NaN
//   for floats) before every block, so reads of unwritten shared memory show up in results.
// - Warp collectives (__shfl*_sync, __ballot_sync, __any/__all_sync, __syncwarp) must be reached
//   by every live lane of the warp; the mask argument is not otherwise interpreted. A lane reading
//   from an exited lane or from outside its segment gets its own value back.
// - A thread that returns early drops out of later barriers (as exited threads do on a GPU).
// - A block that does not finish within VK_EMU_TIMEOUT seconds (default 300) aborts the process
//   with the kernel's name: a divergent __syncthreads fails instead of hanging.
// - Inline PTX, cp.async, wmma/mma and texture objects have no host form: keep a scalar path under
//   `#ifdef VK_CUDA_EMULATION`.
#pragma once

#ifndef VK_CUDA_EMULATION
#define VK_CUDA_EMULATION 1
#endif

#include <cuda_runtime.h>  // dim3, uint3, float4, cudaStream_t (host-compilable toolkit headers)

#include <atomic>
#include <barrier>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __constant__
#undef __forceinline__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)

namespace vk_emu {

constexpr unsigned kWarpSize = 32;

struct Warp {
  explicit Warp(unsigned lanes) : barrier(lanes), live_mask(lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u)) {}
  std::barrier<> barrier;
  std::atomic<unsigned> live_mask;
  alignas(16) unsigned char slots[kWarpSize][16];
};

struct Block {
  explicit Block(unsigned threads) : barrier(threads) {
    for (unsigned first = 0; first < threads; first += kWarpSize)
      warps.push_back(std::make_unique<Warp>(std::min(kWarpSize, threads - first)));
  }
  std::barrier<> barrier;
  std::vector<std::unique_ptr<Warp>> warps;
  std::atomic<int> vote_counts[2] = {0, 0};
  unsigned char* dynamic_shared = nullptr;
};

struct ThreadContext {
  uint3 thread_idx{0, 0, 0};
  uint3 block_idx{0, 0, 0};
  dim3 block_dim{1, 1, 1};
  dim3 grid_dim{1, 1, 1};
  Block* block = nullptr;
  unsigned lane = 0;
  unsigned warp = 0;
  unsigned vote_generation = 0;
};

inline thread_local ThreadContext context;

inline Warp& current_warp() { return *context.block->warps[context.warp]; }

inline unsigned char* dynamic_shared() { return context.block->dynamic_shared; }

// Exchange a value across the lanes of a warp: every live lane publishes `value`, then reads
// the value published by `source` (its own if `source` is dead or out of range).
template <typename T>
T warp_exchange(T value, unsigned source) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 16, "warp shuffle of an unsupported type");
  Warp& warp = current_warp();
  std::memcpy(warp.slots[context.lane], &value, sizeof(T));
  warp.barrier.arrive_and_wait();
  T result = value;
  if (source < kWarpSize && (warp.live_mask.load() >> source & 1u)) std::memcpy(&result, warp.slots[source], sizeof(T));
  warp.barrier.arrive_and_wait();
  return result;
}

// Per-lane predicates of the warp as a bitmask (lanes that exited count as 0).
inline unsigned warp_ballot(bool predicate) {
  const unsigned bit = static_cast<unsigned>(predicate);
  Warp& warp = current_warp();
  std::memcpy(warp.slots[context.lane], &bit, sizeof(bit));
  warp.barrier.arrive_and_wait();
  unsigned mask = 0;
  const unsigned live = warp.live_mask.load();
  for (unsigned l = 0; l < kWarpSize; ++l) {
    if (!(live >> l & 1u)) continue;
    unsigned v;
    std::memcpy(&v, warp.slots[l], sizeof(v));
    mask |= (v & 1u) << l;
  }
  warp.barrier.arrive_and_wait();
  return mask;
}

// Last error of an emulated launch on this host thread (bad configuration), like cudaGetLastError.
inline thread_local std::string last_error;

inline std::string take_last_error() {
  std::string error = std::move(last_error);
  last_error.clear();
  return error;
}

inline std::mutex& launch_mutex() {
  static std::mutex mutex;
  return mutex;
}

inline double timeout_seconds() {
  const char* text = std::getenv("VK_EMU_TIMEOUT");
  const double value = text ? std::atof(text) : 0.0;
  return value > 0 ? value : 300.0;
}

// Run `kernel` over `grid` x `block` as a CUDA launch would, block by block.
template <typename... Params, typename... Args>
void launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t shared_bytes,
            cudaStream_t /*stream*/, Args&&... args) {
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.y > 65535 || grid.z > 65535 || shared_bytes > 227 * 1024) {
    last_error = std::string("invalid launch configuration for ") + name;
    return;
  }
  // Arguments are converted to the kernel's parameter types once, as a CUDA launch does.
  const std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  std::lock_guard<std::mutex> serialize(launch_mutex());
  std::vector<unsigned char> shared(shared_bytes);
  const auto timeout = std::chrono::duration<double>(timeout_seconds());

  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        Block state(static_cast<unsigned>(threads));
        if (shared_bytes) std::memset(shared.data(), 0xff, shared_bytes);
        state.dynamic_shared = shared_bytes ? shared.data() : nullptr;
        std::mutex done_mutex;
        std::condition_variable done_signal;
        unsigned done = 0;
        std::vector<std::thread> workers;
        workers.reserve(threads);
        for (unsigned t = 0; t < threads; ++t) {
          workers.emplace_back([&, t] {
            ThreadContext& c = context;
            c.thread_idx = uint3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
            c.block_idx = uint3{bx, by, bz};
            c.block_dim = block;
            c.grid_dim = grid;
            c.block = &state;
            c.lane = t % kWarpSize;
            c.warp = t / kWarpSize;
            c.vote_generation = 0;
            std::apply(kernel, params);
            // An exited thread no longer takes part in block or warp barriers.
            Warp& warp = current_warp();
            warp.live_mask.fetch_and(~(1u << c.lane));
            warp.barrier.arrive_and_drop();
            state.barrier.arrive_and_drop();
            {
              std::lock_guard<std::mutex> lock(done_mutex);
              ++done;
            }
            done_signal.notify_one();
          });
        }
        {
          std::unique_lock<std::mutex> lock(done_mutex);
          if (!done_signal.wait_for(lock, timeout, [&] { return done == threads; })) {
            std::fprintf(stderr,
                         "vk_emu: block (%u, %u, %u) of kernel %s did not finish within %.0f s "
                         "(%u of %llu threads done): divergent __syncthreads or warp collective?\n",
                         bx, by, bz, name, timeout.count(), done, threads);
            std::fflush(stderr);
            std::abort();
          }
        }
        for (auto& worker : workers) worker.join();
      }
}

}  // namespace vk_emu

// Built-in variables.
#define threadIdx (::vk_emu::context.thread_idx)
#define blockIdx (::vk_emu::context.block_idx)
#define blockDim (::vk_emu::context.block_dim)
#define gridDim (::vk_emu::context.grid_dim)
#ifndef warpSize
#define warpSize 32
#endif

// Synchronization.
inline void __syncthreads() { ::vk_emu::context.block->barrier.arrive_and_wait(); }

inline int __syncthreads_count(int predicate) {
  auto& c = ::vk_emu::context;
  auto& slot = c.block->vote_counts[c.vote_generation++ & 1u];
  slot.fetch_add(predicate != 0);
  __syncthreads();
  const int total = slot.load();
  __syncthreads();
  // The slot is next used two votes later, after further barriers: safe to reset here.
  if (c.thread_idx.x == 0 && c.thread_idx.y == 0 && c.thread_idx.z == 0) slot.store(0);
  return total;
}
inline int __syncthreads_or(int predicate) { return __syncthreads_count(predicate) > 0; }
inline int __syncthreads_and(int predicate) {
  const auto& d = ::vk_emu::context.block_dim;
  return __syncthreads_count(predicate) == static_cast<int>(d.x * d.y * d.z);
}
inline void __syncwarp(unsigned = 0xffffffffu) { ::vk_emu::current_warp().barrier.arrive_and_wait(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// Warp shuffles (width must be a power of two <= 32, as on the GPU).
template <typename T>
inline T __shfl_sync(unsigned, T value, int source, int width = 32) {
  const unsigned lane = ::vk_emu::context.lane;
  const unsigned base = lane & ~static_cast<unsigned>(width - 1);
  return ::vk_emu::warp_exchange(value, base + (static_cast<unsigned>(source) & static_cast<unsigned>(width - 1)));
}
template <typename T>
inline T __shfl_down_sync(unsigned, T value, unsigned delta, int width = 32) {
  const unsigned lane = ::vk_emu::context.lane;
  const unsigned within = lane & static_cast<unsigned>(width - 1);
  return ::vk_emu::warp_exchange(value, within + delta < static_cast<unsigned>(width) ? lane + delta : lane);
}
template <typename T>
inline T __shfl_up_sync(unsigned, T value, unsigned delta, int width = 32) {
  const unsigned lane = ::vk_emu::context.lane;
  const unsigned within = lane & static_cast<unsigned>(width - 1);
  return ::vk_emu::warp_exchange(value, within >= delta ? lane - delta : lane);
}
template <typename T>
inline T __shfl_xor_sync(unsigned, T value, int lane_mask, int width = 32) {
  const unsigned lane = ::vk_emu::context.lane;
  const unsigned source = lane ^ static_cast<unsigned>(lane_mask);
  const unsigned segment = ~static_cast<unsigned>(width - 1);
  return ::vk_emu::warp_exchange(value, (source & segment) == (lane & segment) ? source : lane);
}

// Warp votes.
inline unsigned __ballot_sync(unsigned, int predicate) { return ::vk_emu::warp_ballot(predicate != 0); }
inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
inline int __all_sync(unsigned mask, int predicate) {
  const unsigned live = ::vk_emu::current_warp().live_mask.load();
  return (__ballot_sync(mask, predicate) & live) == live;
}
inline unsigned __activemask() { return ::vk_emu::current_warp().live_mask.load(); }

// Atomics (returning the old value, as CUDA's do).
template <typename T>
inline T __vk_atomic_add(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_add(value);
}
inline float atomicAdd(float* a, float v) { return __vk_atomic_add(a, v); }
inline double atomicAdd(double* a, double v) { return __vk_atomic_add(a, v); }
inline int atomicAdd(int* a, int v) { return __vk_atomic_add(a, v); }
inline unsigned atomicAdd(unsigned* a, unsigned v) { return __vk_atomic_add(a, v); }
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) { return __vk_atomic_add(a, v); }

template <typename T, typename Op>
inline T __vk_atomic_update(T* address, Op op) {
  std::atomic_ref<T> ref(*address);
  T old = ref.load();
  while (!ref.compare_exchange_weak(old, op(old))) {
  }
  return old;
}
inline int atomicMin(int* a, int v) { return __vk_atomic_update(a, [v](int o) { return v < o ? v : o; }); }
inline int atomicMax(int* a, int v) { return __vk_atomic_update(a, [v](int o) { return v > o ? v : o; }); }
inline unsigned atomicMin(unsigned* a, unsigned v) {
  return __vk_atomic_update(a, [v](unsigned o) { return v < o ? v : o; });
}
inline unsigned atomicMax(unsigned* a, unsigned v) {
  return __vk_atomic_update(a, [v](unsigned o) { return v > o ? v : o; });
}
inline long long atomicMin(long long* a, long long v) {
  return __vk_atomic_update(a, [v](long long o) { return v < o ? v : o; });
}
inline long long atomicMax(long long* a, long long v) {
  return __vk_atomic_update(a, [v](long long o) { return v > o ? v : o; });
}
inline unsigned long long atomicMin(unsigned long long* a, unsigned long long v) {
  return __vk_atomic_update(a, [v](unsigned long long o) { return v < o ? v : o; });
}
inline unsigned long long atomicMax(unsigned long long* a, unsigned long long v) {
  return __vk_atomic_update(a, [v](unsigned long long o) { return v > o ? v : o; });
}
inline int atomicExch(int* a, int v) { return std::atomic_ref<int>(*a).exchange(v); }
inline unsigned atomicExch(unsigned* a, unsigned v) { return std::atomic_ref<unsigned>(*a).exchange(v); }
inline float atomicExch(float* a, float v) { return std::atomic_ref<float>(*a).exchange(v); }
template <typename T>
inline T __vk_atomic_cas(T* address, T compare, T value) {
  std::atomic_ref<T>(*address).compare_exchange_strong(compare, value);
  return compare;  // holds the old value whether or not the exchange happened
}
inline int atomicCAS(int* a, int c, int v) { return __vk_atomic_cas(a, c, v); }
inline unsigned atomicCAS(unsigned* a, unsigned c, unsigned v) { return __vk_atomic_cas(a, c, v); }
inline unsigned long long atomicCAS(unsigned long long* a, unsigned long long c, unsigned long long v) {
  return __vk_atomic_cas(a, c, v);
}

// Intrinsics with a host form.
template <typename T>
inline T __ldg(const T* address) { return *address; }
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline int __float_as_int(float x) { int i; std::memcpy(&i, &x, 4); return i; }
inline float __int_as_float(int i) { float x; std::memcpy(&x, &i, 4); return x; }
inline unsigned __float_as_uint(float x) { unsigned i; std::memcpy(&i, &x, 4); return i; }
inline float __uint_as_float(unsigned i) { float x; std::memcpy(&x, &i, 4); return x; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
