// parallel_for over an index range with OpenMP. The thread count is set from Python
// (vision_kernels/_native.py passes torch.get_num_threads() before each call), so the core
// follows torch's setting without linking torch. Exceptions thrown by the body are caught
// inside the parallel region and the first one is rethrown on the calling thread.
#pragma once

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>

#include "defs.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace vk {

namespace detail {
inline std::atomic<int>& thread_setting() {
  static std::atomic<int> threads{0};  // 0: OpenMP's own default
  return threads;
}
}  // namespace detail

inline void set_num_threads(int threads) { detail::thread_setting().store(threads > 0 ? threads : 0); }

inline int num_threads() {
  const int configured = detail::thread_setting().load();
#ifdef _OPENMP
  return configured > 0 ? configured : omp_get_max_threads();
#else
  (void)configured;
  return 1;
#endif
}

inline bool openmp_enabled() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

// Call body(chunk_begin, chunk_end) over [begin, end) split into contiguous chunks of at least
// `grain` indices, one chunk per thread (static schedule: deterministic partition).
template <typename Body>
void parallel_for(index_t begin, index_t end, index_t grain, const Body& body) {
  if (end <= begin) return;
  const index_t total = end - begin;
  const index_t max_chunks = std::max<index_t>(1, total / std::max<index_t>(1, grain));
  const int threads = static_cast<int>(std::min<index_t>(num_threads(), max_chunks));
  if (threads <= 1) {
    body(begin, end);
    return;
  }
  std::exception_ptr error;
  std::mutex error_mutex;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
  {
    const index_t t = omp_get_thread_num();
    const index_t n = omp_get_num_threads();
#else
  for (index_t t = 0, n = 1; t < n; ++t) {
#endif
    const index_t chunk = ceil_div(total, n);
    const index_t lo = begin + t * chunk;
    const index_t hi = std::min(end, lo + chunk);
    if (lo < hi) {
      try {
        body(lo, hi);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
      }
    }
  }
  if (error) std::rethrow_exception(error);
}

// Dynamic schedule for uneven work: body(chunk_begin, chunk_end) over chunks of `grain`
// indices, handed to whichever thread is free next.
template <typename Body>
void parallel_for_dynamic(index_t begin, index_t end, index_t grain, const Body& body) {
  if (end <= begin) return;
  const index_t blocks = ceil_div(end - begin, std::max<index_t>(1, grain));
  const int threads = static_cast<int>(std::min<index_t>(num_threads(), blocks));
  if (threads <= 1) {
    body(begin, end);
    return;
  }
  std::atomic<index_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
  {
    for (index_t b = next.fetch_add(1); b < blocks; b = next.fetch_add(1)) {
      const index_t lo = begin + b * grain;
      const index_t hi = std::min(end, lo + grain);
      try {
        body(lo, hi);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
      }
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace vk
