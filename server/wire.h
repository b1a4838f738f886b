// The bridge between the wire API (attention.v1 messages) and the core:
// requests become AttentionArgs (views of the request's bytes, no copies),
// results are written straight into the response, and absl statuses become
// gRPC statuses (in exactly one place: ToGrpcStatus).
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

// Computes `call` into `response` (output in call.output_dtype, weights
// float32, both written in place into the response's bytes).
absl::Status Compute(const Call& call, const ComputeOptions& options,
                     v1::AttentionResponse* response);

// The gRPC status for an absl status: same code, same message. Codes the
// service never means to send (UNKNOWN) become INTERNAL.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace server
}  // namespace attention

#endif  // SERVER_WIRE_H_
