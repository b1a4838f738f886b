// The one mapping between wire tensors (attention.v1.Tensor) and the core's
// types, shared by the server and the client.
//
//   absl::StatusOr<TensorView> q = wire::View(request.query(), "query");
//   response_tensor.set_dtype(wire::ToWire(DType::kFloat16));
#ifndef PROTO_TENSOR_VIEW_H_
#define PROTO_TENSOR_VIEW_H_

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "attention/v1/attention.pb.h"
#include "core/tensor.h"

namespace attention {
namespace wire {

// InvalidArgument "FIELD: unknown dtype N" for a value outside the enum
// (proto3 enums are open: any number can arrive).
absl::StatusOr<DType> FromWire(v1::DataType dtype, absl::string_view field);
v1::DataType ToWire(DType dtype);

// A view of the tensor's bytes (not validated beyond the dtype: see
// CheckedElements). Valid while `tensor` is alive and unchanged.
absl::StatusOr<TensorView> View(const v1::Tensor& tensor, absl::string_view field);

}  // namespace wire
}  // namespace attention

#endif  // PROTO_TENSOR_VIEW_H_
