// The one mapping between the wire messages (attention.v1) and the core's
// types, in both directions, shared by the server, the client, the load
// tester, the benchmark and the tests.
//
//   AttentionArgs args;
//   ProjectionWeights inline_weights;
//   absl::Status s = convert::FromWire(request, &args, &inline_weights);  // views, no copies
//   request.mutable_options()->CopyFrom(convert::ToWire(args));           // the other way
#ifndef PROTO_CONVERT_H_
#define PROTO_CONVERT_H_

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "attention/v1/attention.pb.h"
#include "core/attention.h"
#include "core/tensor.h"

namespace attention {
namespace convert {

// InvalidArgument "FIELD: unknown dtype N" for a value outside the enum
// (proto3 enums are open: any number can arrive).
absl::StatusOr<DType> FromWire(v1::DataType dtype, absl::string_view field);
v1::DataType ToWire(DType dtype);
v1::Precision ToWire(Precision precision);

// The most dimensions a wire tensor may have (the service takes rank 4 at
// most; the margin keeps error messages about wrong ranks meaningful).
inline constexpr int kMaxWireRank = 8;

// A view of the tensor's bytes (not validated beyond the dtype and a rank of
// at most kMaxWireRank, checked before the shape is copied: see
// CheckedElements). Valid while `tensor` is alive and unchanged.
absl::StatusOr<TensorView> View(const v1::Tensor& tensor, absl::string_view field);
// A wire tensor with a copy of the view's bytes, in the view's dtype.
v1::Tensor ToWire(const TensorView& view);

// The request's tensors and options as views (no copies; valid while the
// request is). Inline projection weights go to `*inline_weights`, and
// args->projection points at them; a model name is left for the caller (the
// server resolves it). InvalidArgument naming the field for a missing tensor,
// an unknown dtype, weights mode or precision, or a negative head count.
absl::Status FromWire(const v1::AttentionRequest& request, AttentionArgs* args,
                      ProjectionWeights* inline_weights);
absl::Status FromWire(const v1::SelfAttentionRequest& request, AttentionArgs* args,
                      ProjectionWeights* inline_weights);
// A StreamDecode message: `input` (self-attention) or `query` with optional
// `key` and `value` (absent: queries over what the sequence holds).
absl::Status FromWire(const v1::DecodeRequest& request, AttentionArgs* args,
                      ProjectionWeights* inline_weights);

// Options carrying what `args` says (heads, scale, causal, masks, weights
// mode, precision, and args.projection as inline weights); tensors copied as they are.
v1::AttentionOptions ToWire(const AttentionArgs& args);
v1::Projection ToWire(const ProjectionWeights& weights);

}  // namespace convert
}  // namespace attention

#endif  // PROTO_CONVERT_H_
