// What every *_cuda.cu file includes: the one launch macro, dynamic shared memory, launch error
// checks. Under the host emulation harness (VK_CUDA_EMULATION, see cuda_emu.h) the same source
// compiles with g++ and the launch runs block by block on the CPU.
//
//   VK_LAUNCH(my_kernel, grid, block, shared_bytes, stream, arg0, arg1);
//   vk::check_launch("vision_kernels.my_op");
//
// Template kernels with commas in their name are passed through a pointer:
//   auto kernel = &my_kernel<float, 4>;  VK_LAUNCH(kernel, ...);
#pragma once

#if !defined(__CUDACC__) && !defined(VK_CUDA_EMULATION)
#error "cuda_utils.h is for .cu files: compile with nvcc, or with g++ -include common/cuda_emu.h"
#endif

#include <cuda_runtime.h>

#include "defs.h"
#include "errors.h"

#ifdef VK_CUDA_EMULATION

#define VK_LAUNCH(kernel, grid, block, shared_bytes, stream, ...) \
  ::vk_emu::launch(#kernel, kernel, grid, block, shared_bytes, stream, __VA_ARGS__)

#define VK_EXTERN_SHARED(T, name) T* name = reinterpret_cast<T*>(::vk_emu::dynamic_shared())

namespace vk {
inline void check_launch(const char* function) {
  const std::string error = ::vk_emu::take_last_error();
  VK_CHECK(error.empty(), ErrorKind::Runtime, function, ": CUDA launch failed: ", error);
}
}  // namespace vk

#else

#define VK_LAUNCH(kernel, grid, block, shared_bytes, stream, ...) \
  kernel<<<(grid), (block), (shared_bytes), (stream)>>>(__VA_ARGS__)

#define VK_EXTERN_SHARED(T, name)                                   \
  extern __shared__ __align__(16) unsigned char vk_dynamic_shared[]; \
  T* name = reinterpret_cast<T*>(vk_dynamic_shared)

namespace vk {
inline void check_launch(const char* function) {
  const cudaError_t error = cudaGetLastError();
  VK_CHECK(error == cudaSuccess, ErrorKind::Runtime, function, ": CUDA launch failed: ", cudaGetErrorString(error));
}
}  // namespace vk

#endif

namespace vk {
// A stream handle as Python passes it (torch.cuda.current_stream().cuda_stream, 0 when emulated).
inline cudaStream_t as_stream(std::uintptr_t handle) { return reinterpret_cast<cudaStream_t>(handle); }
}  // namespace vk
