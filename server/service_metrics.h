// What the service reports about its calls: Prometheus metrics (in a
// Registry, served by the admin endpoint), the access log, and the errors an
// operator must see on stderr. The service fills a CallRecord as a call (or
// one stream message) goes through parsing, the queue and compute, and hands
// it to Finish.
//
//   ServiceMetrics metrics(&registry, options, access_log);
//   CallRecord call = metrics.Begin("Attention", context->peer(), request_bytes);
//   DescribeRequest(request, &call);
//   metrics.Enqueued(&call);            // then, on an executor thread:
//   metrics.ComputeBegins(&call); ...; metrics.ComputeEnds(&call, status);
//   metrics.Finish(&call, status, response_bytes);
//
// Labels stay few: rpc (the method's name), model (a loaded model's name,
// "none" when the request names none, "unknown" when it names one not
// loaded) and code (the gRPC status code's name). Thread-safe.
#ifndef SERVER_SERVICE_METRICS_H_
#define SERVER_SERVICE_METRICS_H_

#include <chrono>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "attention/v1/attention.pb.h"
#include "inference/grpc_service.pb.h"
#include "server/access_log.h"
#include "server/metrics.h"

namespace attention {
namespace server {

// One unary call or one stream message.
struct CallRecord {
  using Clock = std::chrono::steady_clock;
  enum class Refusal {
    kNone,
    kQueueFull,
    kMemoryLimit,
    kWorkLimit,
    kMemoryBudget,
    kConnectionShare
  };

  const char* rpc = "";
  std::string peer;
  int64_t stream_message = -1;  // index within its stream; -1 for a unary call
  std::string model;            // as requested (the access log's; labels use ModelLabel)
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes;  // tensor name, dims
  int64_t bytes_in = 0;
  absl::Time time;  // when it began (wall clock, for the log)
  Clock::time_point begin, enqueued, compute_begin, compute_end;  // unset: not reached
  Refusal refusal = Refusal::kNone;
};

// The model and the tensor shapes of a request (never their data).
void DescribeRequest(const v1::AttentionRequest& request, CallRecord* call);
void DescribeRequest(const v1::SelfAttentionRequest& request, CallRecord* call);
void DescribeRequest(const v1::DecodeRequest& request, CallRecord* call);
void DescribeRequest(const inference::ModelInferRequest& request, CallRecord* call);

class ServiceMetrics {
 public:
  struct Options {
    std::vector<std::string> models;  // the loaded models' names
    int64_t max_request_memory_bytes = 0;
    int64_t max_message_bytes = 0;
    int max_queue = 0;
  };
  // Adds the service's families to `registry` (which must outlive this).
  // `access_log` may be null (no log); it must outlive this object.
  ServiceMetrics(Registry* registry, Options options, AccessLog* access_log);

  // A record for a call whose request (`bytes_in` bytes) has just arrived.
  CallRecord Begin(const char* rpc, std::string peer, int64_t bytes_in) const;
  // Around the executor: call Enqueued before submitting, EnqueueFailed when
  // the queue refused it, ComputeBegins/ComputeEnds around the computation
  // (`status` its result: ResourceExhausted counts as a memory refusal).
  void Enqueued(CallRecord* call);
  void EnqueueFailed(CallRecord* call);
  void ComputeBegins(CallRecord* call);
  void ComputeEnds(CallRecord* call, const absl::Status& status);
  // The call is answered with `status` and `bytes_out` response bytes:
  // counts it, observes its latencies, logs it; INTERNAL also goes to stderr.
  void Finish(const CallRecord& call, const absl::Status& status, int64_t bytes_out);

  // StreamDecode: sequences and bytes held (changes), tokens appended, a
  // sequence freed for being idle.
  void DecodeHeld(int64_t sequences, int64_t bytes);
  void DecodeAppended(int64_t tokens);
  void DecodeExpired();
  // Decode messages batched (server/batcher.h): `size` computed together.
  void DecodeBatchStarted(int size);

  void StreamOpened(const char* rpc);
  void StreamClosed(const char* rpc);
  // The read guard ended a stream (server/stream_read_guard.h): a refusal,
  // reason "stream_receive".
  void StreamEndedByGuard(const char* rpc);

  // Dynamic batching (server/batcher.h): a computation of `size` requests
  // starts; a request waited `seconds` in the batcher before it.
  void BatchStarted(int size);
  void BatchWaited(double seconds);

  // Models loaded while serving (--model-dir, server/model_directory.h):
  // `name` now serves `version` (replacing `previous`, 0 for none); a load
  // that failed (`result`: "error" or "over_budget": the old version, if
  // any, serves on); a model removed.
  void ModelLoaded(const std::string& name, int64_t version, int64_t previous)
      ABSL_LOCKS_EXCLUDED(models_mu_);
  void ModelLoadFailed(const std::string& name, const std::string& result);
  void ModelRemoved(const std::string& name, int64_t version) ABSL_LOCKS_EXCLUDED(models_mu_);

  // The Open Inference Protocol's statistics of one model (ModelStatistics):
  // its inference calls (ModelInfer, and each ModelStreamInfer message)
  // answered and failed, with their times in nanoseconds.
  struct InferStatistics {
    uint64_t success_count = 0, success_ns = 0, fail_count = 0, fail_ns = 0;
    uint64_t queue_count = 0, queue_ns = 0, compute_count = 0, compute_ns = 0;
    uint64_t inference_count = 0;  // batch entries of the successful calls
    uint64_t execution_count = 0;  // successful calls
    uint64_t last_inference_ms = 0;
  };
  // By model name (loaded models and the built-in one; others are not kept).
  std::map<std::string, InferStatistics> InferStats() const ABSL_LOCKS_EXCLUDED(infer_mu_);
  static constexpr char kBuiltinModelName[] = "attention";

 private:
  std::string ModelLabel(const std::string& requested) const ABSL_LOCKS_EXCLUDED(models_mu_);
  bool IsModel(const std::string& name) const ABSL_LOCKS_EXCLUDED(models_mu_);
  void CountInference(const CallRecord& call, const absl::Status& status)
      ABSL_LOCKS_EXCLUDED(infer_mu_);
  void Log(const CallRecord& call, const absl::Status& status, int64_t bytes_out) const;

  mutable absl::Mutex models_mu_;
  // Names that label series as themselves (others: "unknown"): every model
  // ever served, so that a label never changes meaning.
  std::set<std::string> models_ ABSL_GUARDED_BY(models_mu_);
  Family<Gauge>& model_info_;
  Family<Counter>& model_loads_;
  AccessLog* const access_log_;
  Family<Counter>& requests_;
  Family<Histogram>& duration_;
  Family<Histogram>& queue_time_;
  Family<Histogram>& compute_time_;
  Family<Counter>& request_bytes_;
  Family<Counter>& response_bytes_;
  Family<Counter>& refusals_;
  Gauge& queued_;
  Gauge& computing_;
  Family<Gauge>& streams_open_;
  Histogram& batch_size_;
  Histogram& batch_wait_;
  // StreamDecode's families.
  struct DecodeMetrics {
    explicit DecodeMetrics(Registry* registry);
    Gauge& sequences;
    Gauge& bytes;
    Counter& tokens;
    Counter& expired;
    Histogram& batch_size;
  };
  DecodeMetrics decode_;
  mutable absl::Mutex infer_mu_;
  std::map<std::string, InferStatistics> infer_stats_ ABSL_GUARDED_BY(infer_mu_);
};

}  // namespace server
}  // namespace attention

#endif  // SERVER_SERVICE_METRICS_H_
