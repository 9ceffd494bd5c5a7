#include <pybind11/pybind11.h>

#include "../common/pybind_tensor.h"
#include "../common/registry.h"
#include "patch_nn_cpu.h"

namespace py = pybind11;

VK_REGISTER_BINDINGS(patch_nn_cpu) {
  module.def("patch_nn_cpu", &vk::patch_nn::patch_nn_cpu, py::arg("queries"), py::arg("keys"), py::arg("query_mask"),
             py::arg("key_mask"), py::arg("pt"), py::arg("ph"), py::arg("pw"), py::arg("alpha"), py::arg("out_index"),
             py::arg("out_distance"), py::call_guard<py::gil_scoped_release>(),
             "Exact patch nearest neighbours on host memory (see vision_kernels.ops.patch_nn).");
  module.def("patch_vote_cpu", &vk::patch_nn::patch_vote_cpu, py::arg("values"), py::arg("index"), py::arg("weights"),
             py::arg("pt"), py::arg("ph"), py::arg("pw"), py::arg("reduction"), py::arg("sigma_t"), py::arg("sigma_s"),
             py::arg("fill"), py::arg("out"), py::call_guard<py::gil_scoped_release>(),
             "Fold chosen value patches into an array on host memory (see vision_kernels.ops.patch_vote).");
  module.def("patch_match_cpu", &vk::patch_nn::patch_match_cpu, py::arg("queries"), py::arg("keys"),
             py::arg("query_mask"), py::arg("key_mask"), py::arg("key_den"), py::arg("pt"), py::arg("ph"),
             py::arg("pw"), py::arg("iterations"), py::arg("seed"), py::arg("init_index"), py::arg("out_index"),
             py::arg("out_ssd"), py::call_guard<py::gil_scoped_release>(),
             "PatchMatch on host memory (see vision_kernels.ops.patch_match).");
}
