// The bridge between the wire API (attention.v1 messages) and the core:
// requests become AttentionArgs (views of the request's bytes, no copies),
// results are written by the core into buffers that gRPC sends as they are
// (no serialization copy), and absl statuses become gRPC statuses (in exactly
// one place: ToGrpcStatus).
#ifndef SERVER_WIRE_H_
#define SERVER_WIRE_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attention/v1/attention.pb.h"
#include "core/attention.h"
#include "core/model.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/status.h"

namespace attention {
namespace server {

// The preloaded models, by name. Immutable after construction: share freely.
class ModelRegistry {
 public:
  // Loads "NAME=PATH" specs; the first error names the spec and the problem.
  static absl::StatusOr<std::unique_ptr<ModelRegistry>> Load(const std::vector<std::string>& specs);
  // nullptr when unknown.
  const Model* Find(const std::string& name) const;
  std::vector<const Model*> All() const;
  std::string Names() const;  // "demo, big" (for error messages)

 private:
  std::map<std::string, std::unique_ptr<const Model>> models_;
};

// A request as the core sees it. Views point into the request message, which
// must outlive the call (and must not change).
struct Call {
  AttentionArgs args;
  ProjectionWeights projection;
  DType output_dtype = DType::kFloat32;
};

// Validates what the core does not see (dtype enums, model, projection
// choice) and fills `call`. InvalidArgument / NotFound naming the field.
absl::Status PrepareCall(const v1::AttentionRequest& request, const ModelRegistry& models,
                         Call* call);
absl::Status PrepareCall(const v1::SelfAttentionRequest& request, const ModelRegistry& models,
                         Call* call);

// Parses a request from the bytes gRPC received (the service's methods take
// raw bytes so that responses can be sent without a copy). InvalidArgument
// when the bytes are not such a message.
absl::Status ParseRequest(const grpc::ByteBuffer& bytes, v1::AttentionRequest* request);
absl::Status ParseRequest(const grpc::ByteBuffer& bytes, v1::SelfAttentionRequest* request);

// Computes `call` and encodes the attention.v1.AttentionResponse (`id`, the
// output in call.output_dtype, float32 weights when asked for) into
// `response`. The core writes the tensors into 64-byte aligned buffers that
// become the message's bytes fields as they are: gRPC sends them from there
// (float16/bfloat16 output is computed in float32 and converted into its
// buffer once).
absl::Status Compute(const Call& call, const ComputeOptions& options, const std::string& id,
                     grpc::ByteBuffer* response);

// An AttentionResponse carrying only `id` and `status` as its error (stream
// messages that failed).
grpc::ByteBuffer EncodeError(const std::string& id, const absl::Status& status);

// The gRPC status for an absl status: same code, same message. Codes the
// service never means to send (UNKNOWN) become INTERNAL.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace server
}  // namespace attention

#endif  // SERVER_WIRE_H_
