#include <pybind11/pybind11.h>

#include "../common/pybind_tensor.h"
#include "../common/registry.h"
#include "distance_cpu.h"

namespace py = pybind11;

VK_REGISTER_BINDINGS(distance_cpu) {
  module.def("sq_l2_distance_cpu", &vk::distance::sq_l2_distance_cpu, py::arg("x"), py::arg("y"), py::arg("out"),
             py::call_guard<py::gil_scoped_release>(),
             "out[i, j] = sum_d (x[i, d] - y[j, d])^2 on host memory (see vision_kernels.ops.sq_l2_distance).");
}
