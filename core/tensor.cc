#include "core/tensor.h"

#include <cstdint>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace attention {

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return 4;
    case DType::kFloat16:
    case DType::kBFloat16:
      return 2;
    case DType::kBool:
      return 1;
  }
  return 0;
}

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "FLOAT32";
    case DType::kFloat16:
      return "FLOAT16";
    case DType::kBFloat16:
      return "BFLOAT16";
    case DType::kBool:
      return "BOOL";
  }
  return "?";
}

bool IsFloat(DType dtype) { return dtype != DType::kBool; }

std::string ShapeString(absl::Span<const int64_t> shape) {
  constexpr size_t kShown = 6;  // dims written out of a longer shape
  if (shape.size() > kShown + 2) {
    return absl::StrCat("[", absl::StrJoin(shape.subspan(0, kShown), ","), ",...(", shape.size(),
                        " dims)]");
  }
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

absl::StatusOr<int64_t> CheckedProduct(absl::Span<const int64_t> shape, absl::string_view name) {
  int64_t n = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(name, ": dimension ", i, " of shape ",
                                                     ShapeString(shape), " is ", shape[i],
                                                     "; every dimension must be positive"));
    }
    if (__builtin_mul_overflow(n, shape[i], &n) || n > kMaxElements) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": shape ", ShapeString(shape), " has more than 2^40 elements"));
    }
  }
  return n;
}

absl::StatusOr<int64_t> CheckedElements(const TensorView& view, absl::string_view name) {
  absl::StatusOr<int64_t> n = CheckedProduct(view.shape, name);
  if (!n.ok()) return n.status();
  const uint64_t want = static_cast<uint64_t>(*n) * DTypeSize(view.dtype);
  if (view.byte_size != want) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": data has ", view.byte_size,
                                                   " bytes but shape ", ShapeString(view.shape),
                                                   " of ", DTypeName(view.dtype), " needs ", want));
  }
  if (view.data == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": no data"));
  }
  return n;
}

absl::Status CheckFloatTensor(const TensorView& view, absl::string_view name) {
  if (!IsFloat(view.dtype)) {
    return InvalidField(name, absl::StrCat("dtype ", DTypeName(view.dtype),
                                           " is not supported; use FLOAT32, FLOAT16 or BFLOAT16"));
  }
  return CheckedElements(view, name).status();
}

absl::Status InvalidField(absl::string_view name, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(name, ": ", what));
}

bool ReadableAsFloat32(const TensorView& view) {
  return view.dtype == DType::kFloat32 &&
         reinterpret_cast<uintptr_t>(view.data) % alignof(float) == 0;
}

const float* AsFloat32(const TensorView& view, std::vector<float>& storage) {
  if (ReadableAsFloat32(view)) return static_cast<const float*>(view.data);
  storage.resize(ShapeProduct(view.shape));
  ConvertToFloat32(view, storage.data());
  return storage.data();
}

bool ReadableAsBFloat16(const TensorView& view) {
  return view.dtype == DType::kBFloat16 &&
         reinterpret_cast<uintptr_t>(view.data) % alignof(uint16_t) == 0;
}

const uint16_t* AsBFloat16(const TensorView& view, std::vector<uint16_t>& storage) {
  if (ReadableAsBFloat16(view)) return static_cast<const uint16_t*>(view.data);
  storage.resize(ShapeProduct(view.shape));
  std::vector<float> f32;
  FloatsToBFloat16(AsFloat32(view, f32), static_cast<int64_t>(storage.size()), storage.data());
  return storage.data();
}

namespace {

uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float BitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t Load16(const void* base, int64_t i) {
  uint16_t v;
  std::memcpy(&v, static_cast<const char*>(base) + 2 * i, 2);
  return v;
}

}  // namespace

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  if (exp == 0x1f) return BitsFloat(sign | 0x7f800000 | (mant << 13));
  if (exp != 0) return BitsFloat(sign | ((exp + 112) << 23) | (mant << 13));
  if (mant == 0) return BitsFloat(sign);
  // Subnormal half: value = mant * 2^-24.
  const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
  return sign ? -v : v;
}

uint16_t FloatToHalf(float f) {
  const uint32_t u = FloatBits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000);
  const uint32_t abs = u & 0x7fffffff;
  if (abs > 0x7f800000) return sign | 0x7e00;   // NaN
  if (abs >= 0x477ff000) return sign | 0x7c00;  // overflow -> inf
  if (abs < 0x38800000) {                       // subnormal or zero
    if (abs < 0x33000000) return sign;          // < 2^-25 rounds to 0
    const uint32_t exp = abs >> 23;
    const uint32_t mant = (abs & 0x7fffff) | 0x800000;
    const uint32_t shift = 126 - exp;  // 14..24
    uint32_t r = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1))) ++r;
    return sign | static_cast<uint16_t>(r);
  }
  uint32_t r = abs - 0x38000000;  // rebias exponent
  const uint32_t rem = r & 0x1fff;
  r >>= 13;
  if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) ++r;
  return sign | static_cast<uint16_t>(r);
}

float BFloat16ToFloat(uint16_t b) { return BitsFloat(static_cast<uint32_t>(b) << 16); }

uint16_t FloatToBFloat16(float f) {
  const uint32_t u = FloatBits(f);
  if ((u & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((u >> 16) | 0x40);
  const uint32_t rounding = 0x7fff + ((u >> 16) & 1);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

void FloatsToBFloat16(const float* in, int64_t n, uint16_t* out) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = FloatBits(in[i]);
    const uint32_t rounded = (u + 0x7fff + ((u >> 16) & 1)) >> 16;
    const uint32_t quiet_nan = (u >> 16) | 0x40;
    out[i] = static_cast<uint16_t>((u & 0x7fffffff) > 0x7f800000 ? quiet_nan : rounded);
  }
}

void ConvertToFloat32(const TensorView& view, float* out) {
  const int64_t n = ShapeProduct(view.shape);
  switch (view.dtype) {
    case DType::kFloat32:
      std::memcpy(out, view.data, n * sizeof(float));
      return;
    case DType::kFloat16:
      for (int64_t i = 0; i < n; ++i) out[i] = HalfToFloat(Load16(view.data, i));
      return;
    case DType::kBFloat16:
      for (int64_t i = 0; i < n; ++i) out[i] = BFloat16ToFloat(Load16(view.data, i));
      return;
    case DType::kBool:
      for (int64_t i = 0; i < n; ++i) {
        out[i] = static_cast<const uint8_t*>(view.data)[i] ? 1.0f : 0.0f;
      }
      return;
  }
}

void ConvertFromFloat32(const float* in, int64_t n, DType dtype, void* out) {
  char* dst = static_cast<char*>(out);
  switch (dtype) {
    case DType::kFloat32:
      std::memcpy(dst, in, n * sizeof(float));
      return;
    case DType::kFloat16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = FloatToHalf(in[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
      return;
    case DType::kBFloat16:
      if (reinterpret_cast<uintptr_t>(out) % alignof(uint16_t) == 0) {
        FloatsToBFloat16(in, n, static_cast<uint16_t*>(out));
        return;
      }
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t b = FloatToBFloat16(in[i]);
        std::memcpy(dst + 2 * i, &b, 2);
      }
      return;
    case DType::kBool:
      for (int64_t i = 0; i < n; ++i) dst[i] = in[i] != 0.0f;
      return;
  }
}

}  // namespace attention
