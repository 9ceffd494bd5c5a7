#include <pybind11/pybind11.h>

#include "../common/pybind_tensor.h"
#include "../common/registry.h"
#include "distance_cuda.h"

namespace py = pybind11;

VK_REGISTER_BINDINGS(distance_cuda) {
  module.def("sq_l2_distance_cuda", &vk::distance::sq_l2_distance_cuda, py::arg("x"), py::arg("y"), py::arg("out"),
             py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
             "CUDA twin of sq_l2_distance_cpu, enqueued on `stream` (see vision_kernels.ops.sq_l2_distance).");
}
