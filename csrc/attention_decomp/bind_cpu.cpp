#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <vector>

#include "../common/pybind_tensor.h"
#include "../common/registry.h"
#include "attention_decomp_cpu.h"

namespace py = pybind11;

VK_REGISTER_BINDINGS(attention_decomp_cpu) {
  module.def(
      "attention_decomposition_cpu",
      [](const vk::TensorRef& values, const vk::TensorRef& attn, const vk::TensorRef& folded,
         const vk::TensorRef& scale, const std::optional<vk::TensorRef>& offset, const std::vector<vk::index_t>& layers,
         bool keep_layers, bool keep_heads, bool keep_tokens, const vk::TensorRef& out) {
        vk::attention_decomp::attention_decomposition_cpu(values, attn, folded, scale, offset ? &*offset : nullptr,
                                                          layers, keep_layers, keep_heads, keep_tokens, out);
      },
      py::arg("values"), py::arg("attn"), py::arg("folded"), py::arg("scale"), py::arg("offset"), py::arg("layers"),
      py::arg("keep_layers"), py::arg("keep_heads"), py::arg("keep_tokens"), py::arg("out"),
      py::call_guard<py::gil_scoped_release>(),
      "out = scale * A * (values @ folded) + offset per (layer, head, token) term, summed over the axes not kept, "
      "on host memory (see vision_kernels.ops.attention_decomposition).");
}
