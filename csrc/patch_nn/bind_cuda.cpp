#include <pybind11/pybind11.h>

#include "../common/pybind_tensor.h"
#include "../common/registry.h"
#include "patch_nn_cuda.h"

namespace py = pybind11;

VK_REGISTER_BINDINGS(patch_nn_cuda) {
  module.def("patch_nn_cuda", &vk::patch_nn::patch_nn_cuda, py::arg("queries"), py::arg("keys"), py::arg("query_mask"),
             py::arg("key_mask"), py::arg("pt"), py::arg("ph"), py::arg("pw"), py::arg("alpha"), py::arg("wide"),
             py::arg("out_index"), py::arg("out_distance"), py::arg("workspace_f64"), py::arg("workspace_f32"),
             py::arg("workspace_i64"), py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
             "CUDA twin of patch_nn_cpu, enqueued on `stream` (see vision_kernels.ops.patch_nn).");
  module.def("patch_vote_cuda", &vk::patch_nn::patch_vote_cuda, py::arg("values"), py::arg("index"),
             py::arg("weights"), py::arg("pt"), py::arg("ph"), py::arg("pw"), py::arg("reduction"), py::arg("sigma_t"),
             py::arg("sigma_s"), py::arg("fill"), py::arg("out"), py::arg("stream"),
             py::call_guard<py::gil_scoped_release>(),
             "CUDA twin of patch_vote_cpu, enqueued on `stream` (see vision_kernels.ops.patch_vote).");
  module.def("patch_match_cuda", &vk::patch_nn::patch_match_cuda, py::arg("queries"), py::arg("keys"),
             py::arg("query_mask"), py::arg("key_mask"), py::arg("key_den"), py::arg("pt"), py::arg("ph"),
             py::arg("pw"), py::arg("iterations"), py::arg("seed"), py::arg("init_index"), py::arg("out_index"),
             py::arg("out_ssd"), py::arg("state_keys"), py::arg("state_scores"), py::arg("key_weight"),
             py::arg("stream"),
             py::call_guard<py::gil_scoped_release>(),
             "CUDA twin of patch_match_cpu, enqueued on `stream` (see vision_kernels.ops.patch_match).");
}
