#include "proto/tensor_view.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace attention {
namespace wire {

absl::StatusOr<DType> FromWire(v1::DataType dtype, absl::string_view field) {
  switch (dtype) {
    case v1::FLOAT32:
      return DType::kFloat32;
    case v1::FLOAT16:
      return DType::kFloat16;
    case v1::BFLOAT16:
      return DType::kBFloat16;
    case v1::BOOL:
      return DType::kBool;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": unknown dtype ", static_cast<int>(dtype)));
  }
}

v1::DataType ToWire(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return v1::FLOAT32;
    case DType::kFloat16:
      return v1::FLOAT16;
    case DType::kBFloat16:
      return v1::BFLOAT16;
    case DType::kBool:
      return v1::BOOL;
  }
  return v1::FLOAT32;
}

absl::StatusOr<TensorView> View(const v1::Tensor& t, absl::string_view field) {
  absl::StatusOr<DType> dtype = FromWire(t.dtype(), field);
  if (!dtype.ok()) return dtype.status();
  return TensorView{*dtype, {t.shape().begin(), t.shape().end()}, t.data().data(), t.data().size()};
}

}  // namespace wire
}  // namespace attention
