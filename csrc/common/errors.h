// Exceptions thrown by the C++ core. bindings.cpp translates them to Python:
// ValueError, TypeError, IndexError, NotImplementedError and RuntimeError.
// Messages follow one form: "<function>: argument '<name>' <expected>, got <actual>".
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace vk {

enum class ErrorKind { Value, Type, Index, NotImplemented, Runtime };

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const noexcept { return kind_; }

 private:
  ErrorKind kind_;
};

// Concatenate anything streamable into one string: vk::str("got ", n, " dims").
template <typename... Parts>
std::string str(Parts&&... parts) {
  std::ostringstream out;
  (out << ... << std::forward<Parts>(parts));
  return out.str();
}

[[noreturn]] inline void fail(ErrorKind kind, const std::string& message) { throw Error(kind, message); }

}  // namespace vk

// VK_CHECK(condition, kind, message parts...): throw vk::Error(kind, str(parts...)) if false.
#define VK_CHECK(condition, kind, ...)                           \
  do {                                                           \
    if (!(condition)) ::vk::fail((kind), ::vk::str(__VA_ARGS__)); \
  } while (0)
