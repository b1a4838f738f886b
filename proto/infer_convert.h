// The one mapping between the Open Inference Protocol's messages (package
// `inference`, proto/inference/grpc_service.proto) and the core's types, as
// proto/convert.h is for attention.v1: a ModelInferRequest's inputs become an
// AttentionArgs of views (no copies), its parameters the options; the model
// is left for the caller to resolve (the server's registry).
//
//   convert::InferCall call;
//   absl::Status s = convert::FromInfer(request, /*builtin=*/false, &call);
//   ... call.args.projection = &model->weights(); then ComputeAttention ...
//
// What a model takes (docs/inference.md): inputs `query` (required), `key`
// and `value` (both or neither: without them, self-attention over `query`),
// `attn_mask` and `key_padding_mask` (BOOL or FP32), tensors FP32, FP16 or
// BF16; request parameters `causal` (bool), `weights` ("average" or
// "per-head"), `precision` ("float32" or "bfloat16"), `scale` (double, or a
// string holding a number); the built-in model (`builtin`) also needs key
// and value and takes `num_heads` (int64, required) and `num_kv_heads`.
// Outputs `output` (the query's datatype) and `weights` (FP32, only when
// asked for: requested by name, or with the `weights` parameter).
#ifndef PROTO_INFER_CONVERT_H_
#define PROTO_INFER_CONVERT_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/attention.h"
#include "core/tensor.h"
#include "inference/grpc_service.pb.h"

namespace attention {
namespace convert {

// The protocol's datatype names ("FP32", "FP16", "BF16", "BOOL") and ours.
// InvalidArgument naming `input` for another name.
absl::StatusOr<DType> FromDatatype(absl::string_view datatype, absl::string_view input);
const char* ToDatatype(DType dtype);

// What an inference request asks for.
struct InferCall {
  AttentionArgs args;  // views into the request; projection left unset
  bool send_output = true;
  bool send_weights = false;
};

// Reads `request` (see the file comment). InvalidArgument naming the input,
// parameter or output for: an unknown or repeated input, a missing `query`,
// `key` without `value`, an unknown datatype or one the input does not take,
// contents that do not match the datatype, raw_input_contents not one per
// input, more than 8 dimensions, an unknown parameter or one of the wrong
// type, an unknown output, output or input parameters (shared memory,
// classification: not served). Shapes and sizes are the core's to check.
absl::Status FromInfer(const inference::ModelInferRequest& request, bool builtin, InferCall* call);

}  // namespace convert
}  // namespace attention

#endif  // PROTO_INFER_CONVERT_H_
