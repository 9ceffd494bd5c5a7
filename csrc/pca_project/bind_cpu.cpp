#include <pybind11/pybind11.h>

#include "../common/pybind_tensor.h"
#include "../common/registry.h"
#include "pca_project_cpu.h"

namespace py = pybind11;

VK_REGISTER_BINDINGS(pca_project_cpu) {
  module.def("pca_project_fused_cpu", &vk::pca::pca_project_fused_cpu, py::arg("x"), py::arg("shift"),
             py::arg("scale"), py::arg("basis"), py::arg("out"), py::call_guard<py::gil_scoped_release>(),
             "out = ((x - shift) * scale) @ basis for at most 16 rows, one pass over the basis "
             "(see vision_kernels.ops.pca_project).");
  module.def("pca_reconstruct_fused_cpu", &vk::pca::pca_reconstruct_fused_cpu, py::arg("coeffs"), py::arg("basis"),
             py::arg("scale"), py::arg("shift"), py::arg("out"), py::call_guard<py::gil_scoped_release>(),
             "out = (coeffs @ basis^T) * scale + shift for at most 16 rows, one pass over the basis "
             "(see vision_kernels.ops.pca_reconstruct).");
  module.def("pca_standardize_cpu", &vk::pca::pca_standardize_cpu, py::arg("x"), py::arg("shift"), py::arg("scale"),
             py::arg("out"), py::call_guard<py::gil_scoped_release>(),
             "out = (x - shift) * scale in the accumulation dtype (blocked path of pca_project).");
  module.def("pca_destandardize_cpu", &vk::pca::pca_destandardize_cpu, py::arg("accumulated"), py::arg("scale"),
             py::arg("shift"), py::arg("out"), py::call_guard<py::gil_scoped_release>(),
             "out = store(accumulated * scale + shift) (blocked path of pca_reconstruct; out may alias).");
}
