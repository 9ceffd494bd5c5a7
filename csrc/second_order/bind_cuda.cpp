#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "../common/pybind_tensor.h"
#include "../common/registry.h"
#include "second_order_cuda.h"

namespace py = pybind11;

VK_REGISTER_BINDINGS(second_order_cuda) {
  module.def(
      "second_order_effects_cuda",
      [](const vk::TensorRef& attn, const vk::TensorRef& ln_std, const vk::TensorRef& activations,
         const vk::TensorRef& directions, const vk::TensorRef& scale, const std::optional<vk::TensorRef>& offset,
         const std::vector<vk::index_t>& layers, const vk::TensorRef& workspace, const vk::TensorRef& out,
         std::uintptr_t stream) {
        vk::second_order::second_order_effects_cuda(attn, ln_std, activations, directions, scale,
                                                    offset ? &*offset : nullptr, layers, workspace, out, stream);
      },
      py::arg("attn"), py::arg("ln_std"), py::arg("activations"), py::arg("directions"), py::arg("scale"),
      py::arg("offset"), py::arg("layers"), py::arg("workspace"), py::arg("out"), py::arg("stream"),
      py::call_guard<py::gil_scoped_release>(),
      "CUDA twin of second_order_effects_cpu, enqueued on `stream` (see vision_kernels.ops.second_order_effects).");
}
