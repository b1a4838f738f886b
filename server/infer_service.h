// The Open Inference Protocol (KServe v2 gRPC, `inference.GRPCInferenceService`)
// on the serving port, beside attention.v1: what Triton's and KServe's
// clients and tools call (docs/inference.md).
//
// ModelInfer and ModelStreamInfer are served by the attention service's own
// machinery (server/service.h: the receive gate, admission into the memory
// budget, the executor and the batcher, streams' flow control, cancellation,
// metrics with rpc labels ModelInfer and ModelStreamInfer, the access log,
// the drain); their requests become core calls through
// proto/infer_convert.h and their answers are framed as ModelInferResponse
// around the core's result buffers. The other methods answer from the model
// registry and the metrics: readiness (false while starting or draining),
// server and model metadata, a model configuration in Triton's terms,
// per-model statistics, the repository index, and loading or unloading a
// model of --model-dir on request (RepositoryModelLoad/Unload).
//
// Models: every loaded model NAME, and the built-in `attention` (plain
// attention with query, key and value; heads as parameters) unless a loaded
// model takes that name. Version: "" or the model's version now (the
// registry's counter; "1" for the built-in); anything else NOT_FOUND.
#ifndef SERVER_INFER_SERVICE_H_
#define SERVER_INFER_SERVICE_H_

#include <atomic>
#include <string>
#include <vector>

#include "inference/grpc_service.grpc.pb.h"
#include "server/model_directory.h"
#include "server/model_registry.h"
#include "server/service.h"
#include "server/service_metrics.h"

namespace attention {
namespace server {

// Typed callbacks, but raw bytes for the two inference methods (their
// responses are framed around the core's buffers, server/response.h).
using Infer = inference::GRPCInferenceService;
using InferServiceBase = Infer::WithCallbackMethod_ServerLive<Infer::WithCallbackMethod_ServerReady<
    Infer::WithCallbackMethod_ModelReady<Infer::WithCallbackMethod_ServerMetadata<
        Infer::WithCallbackMethod_ModelMetadata<Infer::WithRawCallbackMethod_ModelInfer<
            Infer::WithRawCallbackMethod_ModelStreamInfer<Infer::WithCallbackMethod_ModelConfig<
                Infer::WithCallbackMethod_ModelStatistics<Infer::WithCallbackMethod_RepositoryIndex<
                    Infer::WithCallbackMethod_RepositoryModelLoad<
                        Infer::WithCallbackMethod_RepositoryModelUnload<Infer::Service>>>>>>>>>>>>;

class InferenceServiceImpl final : public InferServiceBase {
 public:
  // `attention` (whose machinery serves inference), `models` and `metrics`
  // must outlive this. `batch_delay_us`: the server's --batch-delay-us (what
  // ModelConfig says of dynamic batching).
  InferenceServiceImpl(AttentionServiceImpl* attention, const ModelRegistry* models,
                       ServiceMetrics* metrics, std::string server_version, int64_t batch_delay_us);

  // The --model-dir the repository requests act on (null: none); set before
  // serving, must outlive this.
  void SetModelDirectory(ModelDirectory* dir) { dir_ = dir; }

  // Readiness, as ServerReady and ModelReady report it: set once serving,
  // cleared when draining.
  void SetReady(bool ready) { ready_ = ready; }

  grpc::ServerUnaryReactor* ServerLive(grpc::CallbackServerContext* context,
                                       const inference::ServerLiveRequest* request,
                                       inference::ServerLiveResponse* response) override;
  grpc::ServerUnaryReactor* ServerReady(grpc::CallbackServerContext* context,
                                        const inference::ServerReadyRequest* request,
                                        inference::ServerReadyResponse* response) override;
  grpc::ServerUnaryReactor* ModelReady(grpc::CallbackServerContext* context,
                                       const inference::ModelReadyRequest* request,
                                       inference::ModelReadyResponse* response) override;
  grpc::ServerUnaryReactor* ServerMetadata(grpc::CallbackServerContext* context,
                                           const inference::ServerMetadataRequest* request,
                                           inference::ServerMetadataResponse* response) override;
  grpc::ServerUnaryReactor* ModelMetadata(grpc::CallbackServerContext* context,
                                          const inference::ModelMetadataRequest* request,
                                          inference::ModelMetadataResponse* response) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* ModelStreamInfer(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* ModelConfig(grpc::CallbackServerContext* context,
                                        const inference::ModelConfigRequest* request,
                                        inference::ModelConfigResponse* response) override;
  grpc::ServerUnaryReactor* ModelStatistics(grpc::CallbackServerContext* context,
                                            const inference::ModelStatisticsRequest* request,
                                            inference::ModelStatisticsResponse* response) override;
  grpc::ServerUnaryReactor* RepositoryIndex(grpc::CallbackServerContext* context,
                                            const inference::RepositoryIndexRequest* request,
                                            inference::RepositoryIndexResponse* response) override;
  grpc::ServerUnaryReactor* RepositoryModelLoad(
      grpc::CallbackServerContext* context, const inference::RepositoryModelLoadRequest* request,
      inference::RepositoryModelLoadResponse* response) override;
  grpc::ServerUnaryReactor* RepositoryModelUnload(
      grpc::CallbackServerContext* context, const inference::RepositoryModelUnloadRequest* request,
      inference::RepositoryModelUnloadResponse* response) override;

 private:
  // The method's index in grpc_service.proto's service.
  static constexpr int kModelInferMethod = 5;

  // What a model (or the built-in) takes and returns.
  struct Shape {
    int64_t embed = -1, kdim = -1, vdim = -1;
    bool builtin = false;
    std::string version;  // the one served now
  };
  // A model served now: its name and version.
  struct Served {
    std::string name, version;
  };
  // Every model served now (the loaded ones, then the built-in).
  std::vector<Served> Models() const;
  // The model `name` at `version`: NotFound naming what is wrong.
  absl::StatusOr<Shape> Find(const std::string& name, const std::string& version) const;
  // Answers a metadata call with `status` (counted in the metrics as `rpc`).
  grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* context, const char* rpc,
                                   const absl::Status& status,
                                   const google::protobuf::Message* response);

  AttentionServiceImpl* const attention_;
  const ModelRegistry* const models_;
  ServiceMetrics* const metrics_;
  const std::string version_;
  const int64_t batch_delay_us_;
  ModelDirectory* dir_ = nullptr;
  std::atomic<bool> ready_{false};
};

}  // namespace server
}  // namespace attention

#endif  // SERVER_INFER_SERVICE_H_
