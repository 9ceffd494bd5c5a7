#include <pybind11/pybind11.h>

#include "../common/pybind_tensor.h"
#include "../common/registry.h"
#include "harness_check_cuda.h"

namespace py = pybind11;

VK_REGISTER_BINDINGS(harness_check_cuda) {
  namespace hc = vk::harness_check;
  module.def("harness_block_sum_cuda", &hc::block_sum_cuda, py::arg("values"), py::arg("sums"), py::arg("block"),
             py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
             "Shared-memory tree sum per block (tests the emulation harness).");
  module.def("harness_warp_ops_cuda", &hc::warp_ops_cuda, py::arg("values"), py::arg("prefix"), py::arg("warp_stats"),
             py::arg("total"), py::arg("positives"), py::arg("block"), py::arg("stream"),
             py::call_guard<py::gil_scoped_release>(),
             "Warp shuffles, votes and atomics (tests the emulation harness).");
#ifdef VK_EMULATION_MODULE
  module.def("harness_divergent_barrier_cuda", &hc::divergent_barrier_cuda, py::arg("stream"),
             py::call_guard<py::gil_scoped_release>(),
             "A kernel with a divergent barrier: the harness must abort after VK_EMU_TIMEOUT seconds.");
#endif
}
