#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "../common/pybind_tensor.h"
#include "../common/registry.h"
#include "attention_decomp_cuda.h"

namespace py = pybind11;

VK_REGISTER_BINDINGS(attention_decomp_cuda) {
  module.def(
      "attention_decomposition_cuda",
      [](const vk::TensorRef& values, const vk::TensorRef& attn, const vk::TensorRef& folded,
         const vk::TensorRef& scale, const std::optional<vk::TensorRef>& offset, const std::vector<vk::index_t>& layers,
         bool keep_layers, bool keep_heads, bool keep_tokens, const vk::TensorRef& out, std::uintptr_t stream) {
        vk::attention_decomp::attention_decomposition_cuda(values, attn, folded, scale, offset ? &*offset : nullptr,
                                                           layers, keep_layers, keep_heads, keep_tokens, out, stream);
      },
      py::arg("values"), py::arg("attn"), py::arg("folded"), py::arg("scale"), py::arg("offset"), py::arg("layers"),
      py::arg("keep_layers"), py::arg("keep_heads"), py::arg("keep_tokens"), py::arg("out"), py::arg("stream"),
      py::call_guard<py::gil_scoped_release>(),
      "CUDA twin of attention_decomposition_cpu, enqueued on `stream` (see vision_kernels.ops.attention_decomposition).");
}
