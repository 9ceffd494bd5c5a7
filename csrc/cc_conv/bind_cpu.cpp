#include <pybind11/pybind11.h>

#include "../common/pybind_tensor.h"
#include "../common/registry.h"
#include "cc_conv_cpu.h"
#include "cc_conv_micro_cpu.h"

namespace py = pybind11;

VK_REGISTER_BINDINGS(cc_conv_cpu) {
  module.def("cc_conv_gather_gemm_cpu", &vk::cc_conv::gather_gemm_cpu, py::arg("input"), py::arg("weight"),
             py::arg("bias"), py::arg("row_pairs"), py::arg("col_pairs"), py::arg("row_taps"), py::arg("row_group"), py::arg("row_order"), py::arg("row_offsets"),
             py::arg("col_taps"), py::arg("col_group"), py::arg("col_order"), py::arg("col_offsets"), py::arg("out"),
             py::call_guard<py::gil_scoped_release>(),
             "out[b, o, i, j] = bias[o] + sum_{c,t,u} weight[gy(i), gx(j), o, c, t, u] * input[b, c, ty(i,t), tx(j,u)] "
             "on host memory (see vision_kernels.ops.cc_conv2d).");
  module.def("cc_conv_weight_grad_cpu", &vk::cc_conv::weight_grad_cpu, py::arg("grad"), py::arg("input"),
             py::arg("row_taps"), py::arg("row_group"), py::arg("row_order"), py::arg("row_offsets"),
             py::arg("col_taps"), py::arg("col_group"), py::arg("col_order"), py::arg("col_offsets"),
             py::arg("grad_weight"), py::call_guard<py::gil_scoped_release>(),
             "grad_weight[gy, gx, o, c, t, u] = sum_{b, i in gy, j in gx} grad[b, o, i, j] * input[b, c, ty(i,t), tx(j,u)] "
             "on host memory (see vision_kernels.ops.cc_conv2d).");
  module.def("cc_conv_micro_kernel_isa", &vk::cc_conv::micro_kernel_isa,
             "The CPU micro-kernel cc_conv runs: 'avx512' or 'generic'.");
  module.def("cc_conv_set_micro_kernel_isa", &vk::cc_conv::set_micro_kernel_isa, py::arg("isa"),
             "'generic' forces the portable CPU micro-kernel (for tests), 'auto' picks the fastest supported.");
}
