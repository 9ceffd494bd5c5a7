// The pybind11 module. Built twice by CMakeLists.txt:
//   vision_kernels._C      CPU kernels, plus the CUDA kernels when they were compiled (VK_WITH_CUDA)
//   vision_kernels._C_emu  the CUDA kernels' own source compiled by g++ under the host emulation
//                          harness (VK_EMULATION_MODULE), for tests on machines without a GPU
// Every family registers its functions with VK_REGISTER_BINDINGS; this file only creates the
// module, translates vk::Error into Python exceptions and reports how the module was built.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "common/errors.h"
#include "common/finite.h"
#include "common/parallel.h"
#include "common/pybind_tensor.h"
#include "common/registry.h"

#if defined(VK_WITH_CUDA) && !defined(VK_EMULATION_MODULE)
#include <cuda_runtime.h>
#endif

#ifndef VK_MODULE_NAME
#define VK_MODULE_NAME _C
#endif
#ifndef VK_VERSION
#define VK_VERSION "unknown"
#endif
#ifndef VK_CXX_COMPILER
#define VK_CXX_COMPILER "unknown"
#endif
#ifndef VK_CUDA_COMPILER
#define VK_CUDA_COMPILER ""
#endif
#ifndef VK_CUDA_ARCHITECTURES
#define VK_CUDA_ARCHITECTURES ""
#endif

namespace py = pybind11;

namespace {

void translate_errors() {
  py::register_exception_translator([](std::exception_ptr pointer) {
    if (!pointer) return;
    try {
      std::rethrow_exception(pointer);
    } catch (const vk::Error& error) {
      switch (error.kind()) {
        case vk::ErrorKind::Value: PyErr_SetString(PyExc_ValueError, error.what()); return;
        case vk::ErrorKind::Type: PyErr_SetString(PyExc_TypeError, error.what()); return;
        case vk::ErrorKind::Index: PyErr_SetString(PyExc_IndexError, error.what()); return;
        case vk::ErrorKind::NotImplemented: PyErr_SetString(PyExc_NotImplementedError, error.what()); return;
        case vk::ErrorKind::Runtime: PyErr_SetString(PyExc_RuntimeError, error.what()); return;
      }
    }
  });
}

// (number of usable CUDA devices, error text). Never throws: no driver or no device gives (0, why).
py::tuple cuda_devices() {
#if defined(VK_WITH_CUDA) && !defined(VK_EMULATION_MODULE)
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error state of the runtime
    return py::make_tuple(0, std::string(cudaGetErrorString(status)));
  }
  return py::make_tuple(count, std::string());
#else
  return py::make_tuple(0, std::string("CUDA kernels were not compiled into this module"));
#endif
}

py::dict build_info() {
  py::dict info;
  info["version"] = VK_VERSION;
#if defined(VK_EMULATION_MODULE)
  info["emulation"] = true;
#else
  info["emulation"] = false;
#endif
#if defined(VK_WITH_CUDA)
  info["cuda_compiled"] = true;
  info["cuda_architectures"] = std::string(VK_CUDA_ARCHITECTURES);
#if defined(CUDART_VERSION)
  info["cuda_runtime_version"] = CUDART_VERSION;
#endif
#else
  info["cuda_compiled"] = false;
  info["cuda_architectures"] = std::string();
#endif
  info["cxx_compiler"] = VK_CXX_COMPILER;
  info["cuda_compiler"] = VK_CUDA_COMPILER;
  info["openmp"] = vk::openmp_enabled();
  py::list families;
  for (const auto& entry : vk::binding_registry()) families.append(entry.first);
  info["bindings"] = families;
  return info;
}

}  // namespace

PYBIND11_MODULE(VK_MODULE_NAME, module) {
  module.doc() = "vision_kernels native core (torch-free; tensors arrive as (ptr, dtype, shape, strides, device)).";
  translate_errors();
  module.def("build_info", &build_info, "How this module was built: version, CUDA, compilers, OpenMP.");
  module.def("cuda_devices", &cuda_devices, "(usable CUDA device count, reason when zero).");
  module.def("set_num_threads", &vk::set_num_threads, py::arg("threads"),
             "Threads for the core's parallel loops (0: OpenMP default). The Python layer keeps it "
             "equal to torch.get_num_threads().");
  module.def("num_threads", &vk::num_threads, "Threads the next parallel loop will use.");
  module.def("all_finite", &vk::all_finite, py::arg("t"), py::call_guard<py::gil_scoped_release>(),
             "Whether a host tensor holds no NaN or Inf (the fast path of the ops' finite checks).");
  for (const auto& entry : vk::binding_registry()) entry.second(module);
}
