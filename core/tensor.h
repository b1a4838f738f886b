// Tensors as the core sees them: views of caller-owned bytes, owned float32
// tensors, checked element counts and the float16/bfloat16 wire conversions.
//
//   TensorView q{DType::kFloat32, {2, 10, 64}, bytes.data(), bytes.size()};
//   absl::StatusOr<int64_t> n = CheckedElements(q, "query");   // validates
//   std::vector<float> f(n.value());
//   ConvertToFloat32(q, f.data());                           // any float dtype
//
// Nothing here allocates on behalf of a caller before a shape has been
// validated; every function is thread-safe (no shared state).
#ifndef CORE_TENSOR_H_
#define CORE_TENSOR_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace attention {

// Element types. kFloat16 and kBFloat16 are storage/wire formats: compute is
// always float32. kBool is one byte per element (0 = false, anything else true).
enum class DType { kFloat32, kFloat16, kBFloat16, kBool };

// Bytes per element of `dtype`.
size_t DTypeSize(DType dtype);
// "FLOAT32", "FLOAT16", "BFLOAT16" or "BOOL" (the wire names).
const char* DTypeName(DType dtype);
bool IsFloat(DType dtype);

// The largest element count any tensor may have (2^40): far beyond any memory
// limit, small enough that products of a few counts cannot overflow int64.
inline constexpr int64_t kMaxElements = int64_t{1} << 40;

// A non-owning view of a packed, row-major, little-endian tensor. The bytes are
// owned by the caller and must outlive every use of the view.
struct TensorView {
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t byte_size = 0;
};

// An owned float32 tensor (model weights, test data, outputs).
struct FloatTensor {
  std::vector<int64_t> shape;
  std::vector<float> data;

  TensorView view() const {
    return {DType::kFloat32, shape, data.data(), data.size() * sizeof(float)};
  }
};

// Product of `shape` with overflow checks. Every dimension must be positive.
// Errors are InvalidArgument naming `name`, e.g.
// "key: dimension 1 is -3; every dimension must be positive".
absl::StatusOr<int64_t> CheckedProduct(absl::Span<const int64_t> shape, absl::string_view name);

// CheckedProduct of view.shape, plus a check that view.byte_size equals
// elements x DTypeSize and that data is non-null.
absl::StatusOr<int64_t> CheckedElements(const TensorView& view, absl::string_view name);

// CheckedElements, and a float dtype (FLOAT32, FLOAT16 or BFLOAT16): else
// InvalidArgument "NAME: dtype BOOL is not supported; ...".
absl::Status CheckFloatTensor(const TensorView& view, absl::string_view name);

// InvalidArgument "NAME: WHAT": the form of every validation error.
absl::Status InvalidField(absl::string_view name, absl::string_view what);

// The product of a shape already validated (CheckedProduct): no checks. T =
// double for figures that may exceed int64 (products over several tensors'
// dimensions, as memory estimates take them).
template <typename T = int64_t>
T ShapeProduct(absl::Span<const int64_t> shape) {
  T n = 1;
  for (int64_t d : shape) n *= static_cast<T>(d);
  return n;
}

// Whether float32 compute reads the view's bytes in place: aligned FLOAT32.
bool ReadableAsFloat32(const TensorView& view);

// A float32 pointer to the elements of `view` (validated, float dtype): the
// view's own bytes when ReadableAsFloat32, else a converted copy kept in
// `storage` (valid while `storage` is, unchanged).
const float* AsFloat32(const TensorView& view, std::vector<float>& storage);

// Likewise for bfloat16 compute: the view's own bytes when it is BFLOAT16
// with 2-byte alignment, else a copy rounded to bfloat16 in `storage`.
bool ReadableAsBFloat16(const TensorView& view);
const uint16_t* AsBFloat16(const TensorView& view, std::vector<uint16_t>& storage);

// "[2,7,64]"; a shape of more than 8 dims shows its first 6 and its rank,
// "[1,1,1,1,1,1,...(100000 dims)]", so that messages stay short.
std::string ShapeString(absl::Span<const int64_t> shape);

// Converts `view` (FLOAT32, FLOAT16 or BFLOAT16, already validated) to float32
// into `out`, which holds the view's element count.
void ConvertToFloat32(const TensorView& view, float* out);

// Scalar and bulk conversions. Float -> half/bfloat16 round to nearest even;
// NaN stays NaN, overflow becomes infinity.
float HalfToFloat(uint16_t h);
uint16_t FloatToHalf(float f);
float BFloat16ToFloat(uint16_t b);
uint16_t FloatToBFloat16(float f);
// n floats to bfloat16 (as FloatToBFloat16, in SIMD lanes).
void FloatsToBFloat16(const float* in, int64_t n, uint16_t* out);
// Writes n floats as `dtype` (FLOAT32, FLOAT16 or BFLOAT16) little-endian to out,
// which holds n * DTypeSize(dtype) bytes.
void ConvertFromFloat32(const float* in, int64_t n, DType dtype, void* out);

}  // namespace attention

#endif  // CORE_TENSOR_H_
