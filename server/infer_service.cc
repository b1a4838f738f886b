#include "server/infer_service.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "grpcpp/impl/codegen/server_callback_handlers.h"
#include "server/grpc_status.h"
#include "server/prepared_call.h"

namespace attention {
namespace server {
namespace {

// The protocol extensions served (ServerMetadata).
const char* const kExtensions[] = {"model_configuration", "statistics", "model_repository",
                                   "parameters"};

using TensorMetadata = inference::ModelMetadataResponse::TensorMetadata;

void AddTensor(const char* name, const char* datatype, std::vector<int64_t> shape,
               google::protobuf::RepeatedPtrField<TensorMetadata>* out) {
  TensorMetadata* t = out->Add();
  t->set_name(name);
  t->set_datatype(datatype);
  t->mutable_shape()->Assign(shape.begin(), shape.end());
}

void AddInput(const char* name, inference::DataType type, std::vector<int64_t> dims, bool optional,
              inference::ModelConfig* config) {
  inference::ModelInput* in = config->add_input();
  in->set_name(name);
  in->set_data_type(type);
  in->mutable_dims()->Assign(dims.begin(), dims.end());
  in->set_optional(optional);
}

}  // namespace

InferenceServiceImpl::InferenceServiceImpl(AttentionServiceImpl* attention,
                                           const ModelRegistry* models, ServiceMetrics* metrics,
                                           std::string server_version, int64_t batch_delay_us)
    : attention_(attention),
      models_(models),
      metrics_(metrics),
      version_(std::move(server_version)),
      batch_delay_us_(batch_delay_us) {
  // ModelInfer: unary for clients, a stream of one message each way here (as
  // attention.v1's Attention: the request waits for the receive gate).
  auto handler = [this] {
    return new grpc::internal::CallbackBidiHandler<grpc::ByteBuffer, grpc::ByteBuffer>(
        [this](grpc::CallbackServerContext* context) { return attention_->InferCall(context); });
  };
  MarkMethodStreamed(kModelInferMethod, handler());
  MarkMethodRawCallback(kModelInferMethod, handler());
}

absl::StatusOr<InferenceServiceImpl::Shape> InferenceServiceImpl::Find(
    const std::string& name, const std::string& version) const {
  Shape shape;
  const ModelRegistry::Entry e = models_->FindEntry(name);
  if (e.model == nullptr && name != kBuiltinModel) {
    return absl::NotFoundError(absl::StrCat("name: no model '", name.substr(0, 256),
                                            "' on this server (it has: ", models_->Names(),
                                            ", and the built-in '", kBuiltinModel, "')"));
  }
  shape.version = e.model == nullptr ? "1" : absl::StrCat(e.version);
  if (!version.empty() && version != shape.version) {
    return absl::NotFoundError(
        absl::StrCat("version: '", version.substr(0, 64), "' of model '", name,
                     "' is not served (its version now: ", shape.version, ")"));
  }
  if (e.model == nullptr) {
    shape.builtin = true;
    return shape;
  }
  shape.embed = e.model->info().embed_dim;
  shape.kdim = e.model->info().kdim;
  shape.vdim = e.model->info().vdim;
  return shape;
}

std::vector<InferenceServiceImpl::Served> InferenceServiceImpl::Models() const {
  std::vector<Served> served;
  for (const ModelRegistry::Entry& e : models_->All()) {
    served.push_back({e.name, absl::StrCat(e.version)});
  }
  if (models_->Find(kBuiltinModel) == nullptr) served.push_back({kBuiltinModel, "1"});
  return served;
}

grpc::ServerUnaryReactor* InferenceServiceImpl::Answer(grpc::CallbackServerContext* context,
                                                       const char* rpc, const absl::Status& status,
                                                       const google::protobuf::Message* response) {
  metrics_->Finish(metrics_->Begin(rpc, context->peer(), 0), status,
                   status.ok() ? static_cast<int64_t>(response->ByteSizeLong()) : 0);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

grpc::ServerUnaryReactor* InferenceServiceImpl::ServerLive(grpc::CallbackServerContext* context,
                                                           const inference::ServerLiveRequest*,
                                                           inference::ServerLiveResponse* r) {
  r->set_live(true);
  return Answer(context, "ServerLive", absl::OkStatus(), r);
}

grpc::ServerUnaryReactor* InferenceServiceImpl::ServerReady(grpc::CallbackServerContext* context,
                                                            const inference::ServerReadyRequest*,
                                                            inference::ServerReadyResponse* r) {
  r->set_ready(ready_);
  return Answer(context, "ServerReady", absl::OkStatus(), r);
}

grpc::ServerUnaryReactor* InferenceServiceImpl::ModelReady(
    grpc::CallbackServerContext* context, const inference::ModelReadyRequest* request,
    inference::ModelReadyResponse* r) {
  const absl::StatusOr<Shape> shape = Find(request->name(), request->version());
  r->set_ready(shape.ok() && ready_);
  return Answer(context, "ModelReady", shape.status(), r);
}

grpc::ServerUnaryReactor* InferenceServiceImpl::ServerMetadata(
    grpc::CallbackServerContext* context, const inference::ServerMetadataRequest*,
    inference::ServerMetadataResponse* r) {
  r->set_name("attention-server");
  r->set_version(version_);
  for (const char* e : kExtensions) r->add_extensions(e);
  return Answer(context, "ServerMetadata", absl::OkStatus(), r);
}

grpc::ServerUnaryReactor* InferenceServiceImpl::ModelMetadata(
    grpc::CallbackServerContext* context, const inference::ModelMetadataRequest* request,
    inference::ModelMetadataResponse* r) {
  const absl::StatusOr<Shape> shape = Find(request->name(), request->version());
  if (shape.ok()) {
    r->set_name(request->name());
    r->add_versions(shape->version);
    r->set_platform("attention");
    // Batched [B, L, E]; the server also takes unbatched [L, E] (and the
    // built-in rank 4 [B, H, L, D]). Tensors may also be FP16 or BF16.
    AddTensor("query", "FP32", {-1, -1, shape->embed}, r->mutable_inputs());
    AddTensor("key", "FP32", {-1, -1, shape->kdim}, r->mutable_inputs());
    AddTensor("value", "FP32", {-1, -1, shape->vdim}, r->mutable_inputs());
    AddTensor("attn_mask", "BOOL", {-1, -1}, r->mutable_inputs());
    AddTensor("key_padding_mask", "BOOL", {-1, -1}, r->mutable_inputs());
    AddTensor("output", "FP32", {-1, -1, shape->embed}, r->mutable_outputs());
    AddTensor("weights", "FP32", {-1, -1, -1}, r->mutable_outputs());
  }
  return Answer(context, "ModelMetadata", shape.status(), r);
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* InferenceServiceImpl::ModelStreamInfer(
    grpc::CallbackServerContext* context) {
  return attention_->InferStream(context);
}

grpc::ServerUnaryReactor* InferenceServiceImpl::ModelConfig(
    grpc::CallbackServerContext* context, const inference::ModelConfigRequest* request,
    inference::ModelConfigResponse* r) {
  const absl::StatusOr<Shape> shape = Find(request->name(), request->version());
  if (shape.ok()) {
    inference::ModelConfig* c = r->mutable_config();
    c->set_name(request->name());
    c->set_platform("attention");
    c->set_backend("attention");
    c->set_max_batch_size(0);  // the inputs carry their own batch dimension
    AddInput("query", inference::TYPE_FP32, {-1, -1, shape->embed}, false, c);
    AddInput("key", inference::TYPE_FP32, {-1, -1, shape->kdim}, !shape->builtin, c);
    AddInput("value", inference::TYPE_FP32, {-1, -1, shape->vdim}, !shape->builtin, c);
    AddInput("attn_mask", inference::TYPE_BOOL, {-1, -1}, true, c);
    AddInput("key_padding_mask", inference::TYPE_BOOL, {-1, -1}, true, c);
    for (const auto& [name, dims] :
         {std::pair<const char*, std::vector<int64_t>>{"output", {-1, -1, shape->embed}},
          {"weights", {-1, -1, -1}}}) {
      inference::ModelOutput* out = c->add_output();
      out->set_name(name);
      out->set_data_type(inference::TYPE_FP32);
      out->mutable_dims()->Assign(dims.begin(), dims.end());
    }
    if (batch_delay_us_ > 0) {
      c->mutable_dynamic_batching()->set_max_queue_delay_microseconds(
          static_cast<uint64_t>(batch_delay_us_));
    }
  }
  return Answer(context, "ModelConfig", shape.status(), r);
}

grpc::ServerUnaryReactor* InferenceServiceImpl::ModelStatistics(
    grpc::CallbackServerContext* context, const inference::ModelStatisticsRequest* request,
    inference::ModelStatisticsResponse* r) {
  std::vector<Served> names;
  absl::Status status;
  if (!request->name().empty()) {
    const absl::StatusOr<Shape> shape = Find(request->name(), request->version());
    status = shape.status();
    if (shape.ok()) names.push_back({request->name(), shape->version});
  } else {
    names = Models();
  }
  if (status.ok()) {
    const auto all = metrics_->InferStats();
    for (const auto& [name, version] : names) {
      auto it = all.find(name);
      const ServiceMetrics::InferStatistics st =
          it == all.end() ? ServiceMetrics::InferStatistics{} : it->second;
      inference::ModelStatistics* m = r->add_model_stats();
      m->set_name(name);
      m->set_version(version);
      m->set_last_inference(st.last_inference_ms);
      m->set_inference_count(st.inference_count);
      m->set_execution_count(st.execution_count);
      inference::InferStatistics* s = m->mutable_inference_stats();
      s->mutable_success()->set_count(st.success_count);
      s->mutable_success()->set_ns(st.success_ns);
      s->mutable_fail()->set_count(st.fail_count);
      s->mutable_fail()->set_ns(st.fail_ns);
      s->mutable_queue()->set_count(st.queue_count);
      s->mutable_queue()->set_ns(st.queue_ns);
      s->mutable_compute_infer()->set_count(st.compute_count);
      s->mutable_compute_infer()->set_ns(st.compute_ns);
    }
  }
  return Answer(context, "ModelStatistics", status, r);
}

grpc::ServerUnaryReactor* InferenceServiceImpl::RepositoryIndex(
    grpc::CallbackServerContext* context, const inference::RepositoryIndexRequest* request,
    inference::RepositoryIndexResponse* r) {
  absl::Status status;
  if (!request->repository_name().empty()) {
    status = absl::NotFoundError(absl::StrCat("repository_name: '",
                                              request->repository_name().substr(0, 64),
                                              "' is not a repository of this server (send \"\")"));
  } else {
    for (const auto& [name, version] : Models()) {
      if (request->ready() && !ready_) continue;
      auto* m = r->add_models();
      m->set_name(name);
      m->set_version(version);
      m->set_state(ready_ ? "READY" : "UNAVAILABLE");
    }
  }
  return Answer(context, "RepositoryIndex", status, r);
}

namespace {

// What a repository request names: a model of --model-dir.
template <typename Request>
absl::Status CheckRepositoryRequest(const Request& r, const ModelDirectory* dir) {
  if (dir == nullptr) {
    return absl::FailedPreconditionError(
        "model_repository: this server has no --model-dir (its models are fixed at start)");
  }
  if (!r.repository_name().empty()) {
    return absl::NotFoundError(absl::StrCat("repository_name: '", r.repository_name().substr(0, 64),
                                            "' is not a repository of this server (send \"\")"));
  }
  if (!r.parameters().empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "parameters: '", r.parameters().begin()->first.substr(0, 64), "' is not taken here"));
  }
  return absl::OkStatus();
}

}  // namespace

grpc::ServerUnaryReactor* InferenceServiceImpl::RepositoryModelLoad(
    grpc::CallbackServerContext* context, const inference::RepositoryModelLoadRequest* request,
    inference::RepositoryModelLoadResponse* r) {
  absl::Status status = CheckRepositoryRequest(*request, dir_);
  if (status.ok()) status = dir_->LoadNow(request->model_name());
  return Answer(context, "RepositoryModelLoad", status, r);
}

grpc::ServerUnaryReactor* InferenceServiceImpl::RepositoryModelUnload(
    grpc::CallbackServerContext* context, const inference::RepositoryModelUnloadRequest* request,
    inference::RepositoryModelUnloadResponse* r) {
  absl::Status status = CheckRepositoryRequest(*request, dir_);
  if (status.ok()) status = dir_->Unload(request->model_name());
  return Answer(context, "RepositoryModelUnload", status, r);
}

}  // namespace server
}  // namespace attention
