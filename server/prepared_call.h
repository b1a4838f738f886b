// The bridge between the wire API (attention.v1 messages) and the core:
// request bytes are parsed, requests become AttentionArgs (views of the
// request's bytes, no copies) with their model resolved, and ComputeResponse runs the
// core into a framed response (server/response.h). The models live in
// server/model_registry.h; statuses become gRPC statuses in
// server/grpc_status.h.
//
// Usage (what the service does for each request):
//
//   v1::SelfAttentionRequest request;
//   absl::Status s = ParseRequest(bytes, &request);
//   PreparedCall call;
//   if (s.ok()) s = PrepareCall(request, models, &call);
//   if (s.ok()) s = ComputeResponse(call, options, request.id(), &response);
#ifndef SERVER_PREPARED_CALL_H_
#define SERVER_PREPARED_CALL_H_

#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attention/v1/attention.pb.h"
#include "core/attention.h"
#include "grpcpp/support/byte_buffer.h"
#include "inference/grpc_service.pb.h"
#include "server/grpc_status.h"
#include "server/model_registry.h"
#include "server/response.h"

namespace attention {
namespace server {

// A request as the core sees it. Views point into the request message, which
// must outlive the call (and must not change).
struct PreparedCall {
  AttentionArgs args;
  ProjectionWeights projection;
  DType output_dtype = DType::kFloat32;
  // Set for an Open Inference Protocol request: the response is a
  // ModelInferResponse framed so (server/response.h).
  std::optional<InferFraming> infer;
  // The model the call resolved (args.projection points into it): held, so
  // that a model replaced meanwhile (server/model_directory.h) stays whole
  // until the call is done.
  std::shared_ptr<const Model> model;
};

// Validates what the core does not see (the sizes of `id` and of the model's
// name, the rank of every tensor, dtype enums, model, projection choice)
// before copying anything out of the request, and fills `call`.
// InvalidArgument / NotFound naming the field.
absl::Status PrepareCall(const v1::AttentionRequest& request, const ModelRegistry& models,
                         PreparedCall* call);
absl::Status PrepareCall(const v1::SelfAttentionRequest& request, const ModelRegistry& models,
                         PreparedCall* call);
// A StreamDecode message: as above; its model must be loaded, and inline
// projection weights are refused (a sequence outlives its first message).
absl::Status PrepareCall(const v1::DecodeRequest& request, const ModelRegistry& models,
                         PreparedCall* call);
// An Open Inference Protocol request (proto/infer_convert.h): `model_name` a
// loaded model or the built-in "attention" (plain attention, when no loaded
// model has that name), `model_version` "" or "1" (NotFound otherwise).
// Errors name the input or parameter as the protocol does ("key: ...",
// "parameter num_heads: ..."), not attention.v1's fields.
absl::Status PrepareCall(const inference::ModelInferRequest& request, const ModelRegistry& models,
                         PreparedCall* call);

// The name of the Open Inference Protocol's built-in model: plain attention
// (query, key and value; heads as parameters).
inline constexpr char kBuiltinModel[] = "attention";

// Validates `request` as ComputeResponse will (PrepareCall, then the core's plan
// under `options`) without computing, and returns the memory its
// computation takes, the response's buffers included. ResourceExhausted when
// the response would be larger than `max_message_bytes` (gRPC could not send
// it) or the plan is over options.max_memory_bytes; other errors as
// PrepareCall and PlanAttention give them.
absl::StatusOr<int64_t> PlanCall(const v1::AttentionRequest& request, const ModelRegistry& models,
                                 const ComputeOptions& options, int64_t max_message_bytes);
absl::StatusOr<int64_t> PlanCall(const v1::SelfAttentionRequest& request,
                                 const ModelRegistry& models, const ComputeOptions& options,
                                 int64_t max_message_bytes);
absl::StatusOr<int64_t> PlanCall(const inference::ModelInferRequest& request,
                                 const ModelRegistry& models, const ComputeOptions& options,
                                 int64_t max_message_bytes);

// Parses a request from the bytes gRPC received (the service's methods take
// raw bytes so that responses can be sent without a copy). InvalidArgument
// when the bytes are not such a message; `request` is then empty (a stream's
// answer to it carries no id).
absl::Status ParseRequest(const grpc::ByteBuffer& bytes, v1::AttentionRequest* request);
absl::Status ParseRequest(const grpc::ByteBuffer& bytes, v1::SelfAttentionRequest* request);
absl::Status ParseRequest(const grpc::ByteBuffer& bytes, v1::DecodeRequest* request);
absl::Status ParseRequest(const grpc::ByteBuffer& bytes, inference::ModelInferRequest* request);

// The request's `id` read from its bytes without parsing the rest, for an
// answer to a request refused before it is parsed (its memory did not fit):
// a stream's client matches answers by id. "" when the bytes are malformed
// or the id is not valid UTF-8 or longer than 1024 bytes.
std::string PeekRequestId(const grpc::ByteBuffer& bytes, int id_field = 1);
// The field number of `id` in a request type.
template <typename Request>
constexpr int kIdField = 1;
template <>
inline constexpr int kIdField<inference::ModelInferRequest> = 3;

// Computes `call` and encodes the attention.v1.AttentionResponse (`id`, the
// output in call.output_dtype, float32 weights when asked for) into
// `response`. The core writes the tensors into 64-byte aligned buffers that
// become the message's bytes fields as they are: gRPC sends them from there
// (float16/bfloat16 output is computed in float32 and converted into its
// buffer once).
absl::Status ComputeResponse(const PreparedCall& call, const ComputeOptions& options,
                             const std::string& id, grpc::ByteBuffer* response);

// A stream's answer to a message: the response as computed, or (refused)
// the error, in the stream's message type: attention.v1.AttentionResponse,
// or inference.ModelStreamInferResponse (the ModelInferResponse wrapped; an
// error as error_message).
grpc::ByteBuffer StreamAnswer(const v1::AttentionRequest& request, const absl::Status& status,
                              const grpc::ByteBuffer& response);
grpc::ByteBuffer StreamAnswer(const v1::SelfAttentionRequest& request, const absl::Status& status,
                              const grpc::ByteBuffer& response);
grpc::ByteBuffer StreamAnswer(const inference::ModelInferRequest& request,
                              const absl::Status& status, const grpc::ByteBuffer& response);

// Encodes results the core already wrote into `outputs` (ComputeResponse's last
// step, for callers that run the core themselves), saying `precision` was
// used. ResourceExhausted when memory runs out.
absl::Status Encode(ResponseOutputs* outputs, const std::string& id, Precision precision,
                    grpc::ByteBuffer* response);
// The same, framed as `call` asks (an Open Inference Protocol response, or
// attention.v1's with `id`).
absl::Status Encode(ResponseOutputs* outputs, const PreparedCall& call, const std::string& id,
                    grpc::ByteBuffer* response);

}  // namespace server
}  // namespace attention

#endif  // SERVER_PREPARED_CALL_H_
