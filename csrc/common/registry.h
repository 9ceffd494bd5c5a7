// Binding registration without a central list: each family's bind_cpu.cpp / bind_cuda.cpp
// registers its functions with VK_REGISTER_BINDINGS, and bindings.cpp calls every registered
// function when the module is created. Adding a family touches no shared file.
//
//   VK_REGISTER_BINDINGS(distance_cpu) {
//     module.def("sq_l2_distance_cpu", &vk::distance::sq_l2_distance_cpu, ...);
//   }
#pragma once

#include <pybind11/pybind11.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace vk {

using BindFunction = void (*)(pybind11::module_&);

inline std::vector<std::pair<std::string, BindFunction>>& binding_registry() {
  static std::vector<std::pair<std::string, BindFunction>> registry;
  return registry;
}

struct RegisterBindings {
  RegisterBindings(const char* name, BindFunction bind) { binding_registry().emplace_back(name, bind); }
};

}  // namespace vk

#define VK_REGISTER_BINDINGS(name)                                                        \
  static void vk_bind_##name(pybind11::module_& module);                                  \
  static const ::vk::RegisterBindings vk_register_##name(#name, &vk_bind_##name);        \
  static void vk_bind_##name(pybind11::module_& module)

// VK_BIND_OP(module, namespace, name, doc): bind the native entry point namespace::name under its own
// name, GIL released, arguments positional. The argument list is declared once, in the family's
// <family>_ops.h, never restated here.
#define VK_BIND_OP(module, ns, name, doc) \
  (module).def(#name, &ns::name, ::pybind11::call_guard<::pybind11::gil_scoped_release>(), doc)
