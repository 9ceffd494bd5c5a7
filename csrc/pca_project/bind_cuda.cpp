#include <pybind11/pybind11.h>

#include "../common/pybind_tensor.h"
#include "../common/registry.h"
#include "pca_project_cuda.h"

namespace py = pybind11;

VK_REGISTER_BINDINGS(pca_project_cuda) {
  module.def("pca_project_fused_cuda", &vk::pca::pca_project_fused_cuda, py::arg("x"), py::arg("shift"),
             py::arg("scale"), py::arg("basis"), py::arg("partial"), py::arg("out"), py::arg("stream"),
             py::call_guard<py::gil_scoped_release>(),
             "CUDA twin of pca_project_fused_cpu with a [S, B, K] partial-sum workspace.");
  module.def("pca_reconstruct_fused_cuda", &vk::pca::pca_reconstruct_fused_cuda, py::arg("coeffs"), py::arg("basis"),
             py::arg("scale"), py::arg("shift"), py::arg("out"), py::arg("stream"),
             py::call_guard<py::gil_scoped_release>(), "CUDA twin of pca_reconstruct_fused_cpu.");
  module.def("pca_standardize_cuda", &vk::pca::pca_standardize_cuda, py::arg("x"), py::arg("shift"),
             py::arg("scale"), py::arg("out"), py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
             "CUDA twin of pca_standardize_cpu.");
  module.def("pca_destandardize_cuda", &vk::pca::pca_destandardize_cuda, py::arg("accumulated"), py::arg("scale"),
             py::arg("shift"), py::arg("out"), py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
             "CUDA twin of pca_destandardize_cpu.");
}
