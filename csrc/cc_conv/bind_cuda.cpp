#include <pybind11/pybind11.h>

#include "../common/pybind_tensor.h"
#include "../common/registry.h"
#include "cc_conv_cuda.h"

namespace py = pybind11;

VK_REGISTER_BINDINGS(cc_conv_cuda) {
  module.def("cc_conv_gather_gemm_cuda", &vk::cc_conv::gather_gemm_cuda, py::arg("input"), py::arg("weight"),
             py::arg("bias"), py::arg("row_pairs"), py::arg("col_pairs"), py::arg("row_taps"), py::arg("row_group"), py::arg("row_order"), py::arg("row_offsets"),
             py::arg("col_taps"), py::arg("col_group"), py::arg("col_order"), py::arg("col_offsets"), py::arg("out"),
             py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
             "CUDA twin of cc_conv_gather_gemm_cpu, enqueued on `stream` (see vision_kernels.ops.cc_conv2d).");
  module.def("cc_conv_weight_grad_cuda", &vk::cc_conv::weight_grad_cuda, py::arg("grad"), py::arg("input"),
             py::arg("row_taps"), py::arg("row_group"), py::arg("row_order"), py::arg("row_offsets"),
             py::arg("col_taps"), py::arg("col_group"), py::arg("col_order"), py::arg("col_offsets"),
             py::arg("partial"), py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
             "CUDA twin of cc_conv_weight_grad_cpu writing partial sums [S, Gy, Gx, O, C, Ty, Tx] "
             "(see vision_kernels.ops.cc_conv2d).");
}
