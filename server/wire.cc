#include "server/wire.h"

#include "absl/strings/str_cat.h"
#include "core/guard.h"
#include "grpcpp/support/proto_buffer_reader.h"
#include "proto/convert.h"
#include "server/response.h"

namespace attention {
namespace server {
namespace {

// Resolves options.model (NotFound when unknown) after wire::FromWire filled
// everything else.
absl::Status ResolveModel(const v1::AttentionOptions& o, const ModelRegistry& models,
                          AttentionArgs& a) {
  if (o.model().empty()) return absl::OkStatus();
  if (o.has_projection()) {
    return absl::InvalidArgumentError("options: give a model or projection weights, not both");
  }
  const Model* m = models.Find(o.model());
  if (m == nullptr) {
    return absl::NotFoundError(absl::StrCat("options.model: no model '", o.model(),
                                            "' on this server (it has: ", models.Names(), ")"));
  }
  if (a.num_heads == 0) {
    a.num_heads = m->info().num_heads;
  } else if (a.num_heads != m->info().num_heads) {
    return absl::InvalidArgumentError(
        absl::StrCat("options.num_heads: ", a.num_heads, " does not match model '", o.model(),
                     "' (", m->info().num_heads, " heads); send 0 or ", m->info().num_heads));
  }
  a.projection = &m->weights();
  return absl::OkStatus();
}

template <typename Request>
absl::Status Prepare(const Request& r, const ModelRegistry& models, Call* call) {
  if (absl::Status s = wire::FromWire(r, &call->args, &call->projection); !s.ok()) return s;
  call->output_dtype = call->args.query.dtype;
  return ResolveModel(r.options(), models, call->args);
}

template <typename Request>
absl::Status Parse(const grpc::ByteBuffer& bytes, Request* request) {
  grpc::ByteBuffer shared(bytes);  // the same slices, not a copy
  grpc::ProtoBufferReader reader(&shared);
  if (!reader.status().ok() || !request->ParseFromZeroCopyStream(&reader)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "request: not a valid ", Request::descriptor()->full_name(), " message"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status PrepareCall(const v1::AttentionRequest& r, const ModelRegistry& models,
                         Call* call) {
  return Prepare(r, models, call);
}

absl::Status PrepareCall(const v1::SelfAttentionRequest& r, const ModelRegistry& models,
                         Call* call) {
  return Prepare(r, models, call);
}

absl::Status ParseRequest(const grpc::ByteBuffer& bytes, v1::AttentionRequest* request) {
  return Parse(bytes, request);
}

absl::Status ParseRequest(const grpc::ByteBuffer& bytes, v1::SelfAttentionRequest* request) {
  return Parse(bytes, request);
}

absl::Status Compute(const Call& call, const ComputeOptions& options, const std::string& id,
                     grpc::ByteBuffer* response) {
  ResponseOutputs outputs(call.output_dtype);
  if (absl::Status s = ComputeAttention(call.args, options, &outputs); !s.ok()) return s;
  return GuardStatus(
      [&] {
        *response = outputs.Encode(id, EffectivePrecision(call.args.precision));
        return absl::OkStatus();
      },
      "out of memory encoding the response");
}

}  // namespace server
}  // namespace attention
