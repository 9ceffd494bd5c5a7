#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <vector>

#include "../common/pybind_tensor.h"
#include "../common/registry.h"
#include "second_order_cpu.h"

namespace py = pybind11;

VK_REGISTER_BINDINGS(second_order_cpu) {
  module.def(
      "second_order_effects_cpu",
      [](const vk::TensorRef& attn, const vk::TensorRef& ln_std, const vk::TensorRef& activations,
         const vk::TensorRef& directions, const vk::TensorRef& scale, const std::optional<vk::TensorRef>& offset,
         const std::vector<vk::index_t>& layers, const vk::TensorRef& out) {
        vk::second_order::second_order_effects_cpu(attn, ln_std, activations, directions, scale,
                                                   offset ? &*offset : nullptr, layers, out);
      },
      py::arg("attn"), py::arg("ln_std"), py::arg("activations"), py::arg("directions"), py::arg("scale"),
      py::arg("offset"), py::arg("layers"), py::arg("out"), py::call_guard<py::gil_scoped_release>(),
      "out[b, n] = sum_(s,h) coef[b, s, h, n] directions[s, h, n] + offset[b] with per-image coefficients from the "
      "attention rows, LayerNorm stds and activations, on host memory (see vision_kernels.ops.second_order_effects).");
}
