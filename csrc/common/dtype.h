// Element types understood by the core, 16-bit float storage types with exact conversions
// usable on host and device, the accumulation type of each, and the dispatch macro.
//
// The integer codes of DType are part of the Python <-> C++ contract: vision_kernels/_native.py
// maps torch dtypes to the same codes.
#pragma once

#include <cstdint>
#include <cstring>

#include "defs.h"
#include "errors.h"

namespace vk {

enum class DType : int {
  Float32 = 0,
  Float64 = 1,
  Float16 = 2,
  BFloat16 = 3,
  Int64 = 4,
  Int32 = 5,
  UInt8 = 6,
  Bool = 7,
};

inline const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
    case DType::Int64: return "int64";
    case DType::Int32: return "int32";
    case DType::UInt8: return "uint8";
    case DType::Bool: return "bool";
  }
  return "unknown";
}

inline int dtype_size(DType dtype) {
  switch (dtype) {
    case DType::Float64:
    case DType::Int64: return 8;
    case DType::Float32:
    case DType::Int32: return 4;
    case DType::Float16:
    case DType::BFloat16: return 2;
    case DType::UInt8:
    case DType::Bool: return 1;
  }
  return 0;
}

VK_HOST_DEVICE inline std::uint32_t float_bits(float value) {
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

VK_HOST_DEVICE inline float bits_float(std::uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

// IEEE binary16 storage. Conversions round to nearest even and keep NaN/Inf/subnormals.
struct f16 {
  std::uint16_t bits;
};

// bfloat16 storage (the top half of a binary32). Conversion rounds to nearest even.
struct bf16 {
  std::uint16_t bits;
};

VK_HOST_DEVICE inline float to_float(f16 h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h.bits & 0x8000u) << 16;
  const std::uint32_t exponent = (h.bits >> 10) & 0x1fu;
  std::uint32_t mantissa = h.bits & 0x3ffu;
  if (exponent == 0x1f) return bits_float(sign | 0x7f800000u | (mantissa << 13));  // Inf/NaN
  if (exponent == 0) {
    if (mantissa == 0) return bits_float(sign);  // signed zero
    // Subnormal half: value = mantissa * 2^-24, exactly representable in float.
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return sign ? -magnitude : magnitude;
  }
  return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

VK_HOST_DEVICE inline f16 to_f16(float value) {
  const std::uint32_t x = float_bits(value);
  const std::uint16_t sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
  const std::uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // Inf or NaN (keep NaN quiet)
    return f16{static_cast<std::uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u))};
  }
  if (abs >= 0x477ff000u) return f16{static_cast<std::uint16_t>(sign | 0x7c00u)};  // rounds to Inf
  if (abs < 0x38800000u) {
    // Result is subnormal or zero: scale so that the half ulp (2^-24) becomes 1 and round.
    const float scaled = bits_float(abs) * 16777216.0f;  // exact: multiply by 2^24
    // Round half to even on the integer part.
    std::uint32_t integer = static_cast<std::uint32_t>(scaled);
    const float remainder = scaled - static_cast<float>(integer);
    if (remainder > 0.5f || (remainder == 0.5f && (integer & 1u))) ++integer;
    return f16{static_cast<std::uint16_t>(sign | integer)};
  }
  // Normal: rebias exponent, round mantissa from 23 to 10 bits, half to even.
  const std::uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);
  return f16{static_cast<std::uint16_t>(sign | ((rounded - 0x38000000u) >> 13))};
}

VK_HOST_DEVICE inline float to_float(bf16 b) { return bits_float(static_cast<std::uint32_t>(b.bits) << 16); }

VK_HOST_DEVICE inline bf16 to_bf16(float value) {
  const std::uint32_t x = float_bits(value);
  if ((x & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<std::uint16_t>((x >> 16) | 0x40u)};  // quiet NaN
  const std::uint32_t rounded = x + 0x7fffu + ((x >> 16) & 1u);
  return bf16{static_cast<std::uint16_t>(rounded >> 16)};
}

VK_HOST_DEVICE inline float to_float(float v) { return v; }
VK_HOST_DEVICE inline double to_float(double v) { return v; }

// Load an element as its accumulation type, store an accumulator back as the element type.
template <typename T>
struct Scalar {
  using acc_t = float;
  VK_HOST_DEVICE static acc_t load(T v) { return to_float(v); }
  VK_HOST_DEVICE static T store(acc_t v) { return static_cast<T>(v); }
};
template <>
struct Scalar<double> {
  using acc_t = double;
  VK_HOST_DEVICE static acc_t load(double v) { return v; }
  VK_HOST_DEVICE static double store(acc_t v) { return v; }
};
template <>
struct Scalar<f16> {
  using acc_t = float;
  VK_HOST_DEVICE static acc_t load(f16 v) { return to_float(v); }
  VK_HOST_DEVICE static f16 store(acc_t v) { return to_f16(v); }
};
template <>
struct Scalar<bf16> {
  using acc_t = float;
  VK_HOST_DEVICE static acc_t load(bf16 v) { return to_float(v); }
  VK_HOST_DEVICE static bf16 store(acc_t v) { return to_bf16(v); }
};

template <typename T>
using acc_t = typename Scalar<T>::acc_t;

}  // namespace vk

// VK_DISPATCH_FLOATING(dtype, function_name, body): run `body` (a lambda-like block) with
// `scalar_t` bound to the C++ type of a floating dtype; any other dtype raises TypeError.
#define VK_DISPATCH_CASE(ENUM, TYPE, ...) \
  case ::vk::DType::ENUM: {               \
    using scalar_t = TYPE;                \
    __VA_ARGS__();                        \
    break;                                \
  }

#define VK_DISPATCH_FLOATING(DTYPE, FUNCTION, ...)                                                 \
  do {                                                                                             \
    switch (DTYPE) {                                                                               \
      VK_DISPATCH_CASE(Float32, float, __VA_ARGS__)                                                \
      VK_DISPATCH_CASE(Float64, double, __VA_ARGS__)                                               \
      VK_DISPATCH_CASE(Float16, ::vk::f16, __VA_ARGS__)                                            \
      VK_DISPATCH_CASE(BFloat16, ::vk::bf16, __VA_ARGS__)                                          \
      default:                                                                                     \
        ::vk::fail(::vk::ErrorKind::Type, ::vk::str(FUNCTION, ": unsupported dtype ",              \
                                                    ::vk::dtype_name(DTYPE),                       \
                                                    "; expected float32, float64, float16 or bfloat16")); \
    }                                                                                              \
  } while (0)
