#include "server/service_metrics.h"

#include <grpcpp/grpcpp.h>

#include <cstdio>

#include "absl/strings/match.h"
#include "nlohmann/json.hpp"

#ifndef ATTENTION_VERSION
#define ATTENTION_VERSION "unknown"
#endif

namespace attention {
namespace server {
namespace {

constexpr char kNoModel[] = "none";
constexpr char kUnknownModel[] = "unknown";

double Seconds(CallRecord::Clock::duration d) { return std::chrono::duration<double>(d).count(); }

bool Reached(CallRecord::Clock::time_point t) { return t != CallRecord::Clock::time_point(); }

// The code the client receives: ToGrpcStatus sends UNKNOWN as INTERNAL.
absl::StatusCode SentCode(const absl::Status& status) {
  return status.code() == absl::StatusCode::kUnknown ? absl::StatusCode::kInternal : status.code();
}

const char* RefusalName(CallRecord::Refusal refusal) {
  switch (refusal) {
    case CallRecord::Refusal::kQueueFull:
      return "queue_full";
    case CallRecord::Refusal::kMemoryLimit:
      return "memory_limit";
    case CallRecord::Refusal::kWorkLimit:
      return "work_limit";
    case CallRecord::Refusal::kMemoryBudget:
      return "memory_budget";
    case CallRecord::Refusal::kConnectionShare:
      return "connection_share";
    case CallRecord::Refusal::kNone:
      break;
  }
  return "";
}

void AddShape(const char* name, const v1::Tensor& tensor, CallRecord* call) {
  if (tensor.shape_size() == 0) return;
  call->shapes.emplace_back(name,
                            std::vector<int64_t>(tensor.shape().begin(), tensor.shape().end()));
}

void DescribeOptions(const v1::AttentionOptions& options, CallRecord* call) {
  call->model = options.model().substr(0, 128);  // a log line, not a place for a novel
  AddShape("attn_mask", options.attn_mask(), call);
  AddShape("key_padding_mask", options.key_padding_mask(), call);
}

}  // namespace

void DescribeRequest(const v1::AttentionRequest& request, CallRecord* call) {
  AddShape("query", request.query(), call);
  AddShape("key", request.key(), call);
  AddShape("value", request.value(), call);
  DescribeOptions(request.options(), call);
}

void DescribeRequest(const v1::SelfAttentionRequest& request, CallRecord* call) {
  AddShape("input", request.input(), call);
  DescribeOptions(request.options(), call);
}

void DescribeRequest(const v1::DecodeRequest& request, CallRecord* call) {
  if (request.has_input()) AddShape("input", request.input(), call);
  if (request.has_query()) AddShape("query", request.query(), call);
  if (request.has_key()) AddShape("key", request.key(), call);
  if (request.has_value()) AddShape("value", request.value(), call);
  DescribeOptions(request.options(), call);
}

void DescribeRequest(const inference::ModelInferRequest& request, CallRecord* call) {
  call->model = request.model_name().substr(0, 128);
  for (const auto& input : request.inputs()) {
    if (call->shapes.size() >= 5) break;  // the model's inputs; more are refused anyway
    call->shapes.emplace_back(
        input.name().substr(0, 64),
        std::vector<int64_t>(input.shape().begin(),
                             input.shape().begin() + std::min(input.shape_size(), 8)));
  }
}

ServiceMetrics::DecodeMetrics::DecodeMetrics(Registry* registry)
    : sequences(registry
                    ->AddGauge("attention_decode_sequences",
                               "Sequences StreamDecode streams hold (their keys and "
                               "values kept between messages).")
                    .Labels({})),
      bytes(registry
                ->AddGauge("attention_decode_held_bytes",
                           "Bytes of keys and values StreamDecode streams hold (in "
                           "--max-memory-mb).")
                .Labels({})),
      tokens(registry
                 ->AddCounter("attention_decode_tokens_appended_total",
                              "Keys (tokens) appended to StreamDecode sequences.")
                 .Labels({})),
      expired(registry
                  ->AddCounter("attention_decode_sequences_expired_total",
                               "Sequences freed after --sequence-idle-seconds untouched.")
                  .Labels({})),
      batch_size(registry
                     ->AddHistogram("attention_decode_batch_size",
                                    "StreamDecode messages computed together (their "
                                    "projections as one product; --batch-delay-us above 0; "
                                    "1 = computed alone).",
                                    {}, {1, 2, 4, 8, 16, 32, 64, 128})
                     .Labels({})) {}

ServiceMetrics::ServiceMetrics(Registry* registry, Options options, AccessLog* access_log)
    : models_(options.models.begin(), options.models.end()),
      model_info_(registry->AddGauge("attention_model_info",
                                     "A model the server serves, with its version (value 1).",
                                     {"model", "version"})),
      model_loads_(registry->AddCounter(
          "attention_model_loads_total",
          "Loads of --model-dir's models while serving, by result: loaded, error (a file that "
          "does not validate: the old version serves on), over_budget (--max-memory-mb could not "
          "hold it), removed.",
          {"model", "result"})),
      access_log_(access_log),
      requests_(registry->AddCounter(
          "attention_requests_total",
          "Requests answered (unary calls, and each message of a stream), by status code.",
          {"rpc", "model", "code"})),
      duration_(registry->AddHistogram(
          "attention_request_duration_seconds",
          "Time from a request's arrival (fully received) to its answer being ready.",
          {"rpc", "model"}, LatencyBuckets())),
      queue_time_(registry->AddHistogram("attention_request_queue_seconds",
                                         "Time requests waited for a compute worker.",
                                         {"rpc", "model"}, LatencyBuckets())),
      compute_time_(registry->AddHistogram(
          "attention_request_compute_seconds",
          "Time requests spent computing (validation, attention, encoding the response).",
          {"rpc", "model"}, LatencyBuckets())),
      request_bytes_(registry->AddCounter("attention_request_bytes_total",
                                          "Bytes of request messages received.", {"rpc", "model"})),
      response_bytes_(registry->AddCounter("attention_response_bytes_total",
                                           "Bytes of response messages produced.",
                                           {"rpc", "model"})),
      refusals_(registry->AddCounter(
          "attention_refusals_total",
          "Requests refused with RESOURCE_EXHAUSTED, by reason: queue_full (every worker busy "
          "and --max-queue waiting), memory_limit (over --max-request-memory-mb or "
          "--max-message-mb, or an allocation failed), work_limit (over --max-request-gflop), "
          "memory_budget (the server's "
          "--max-memory-mb was in use), connection_share (the caller's connection held a quarter "
          "of "
          "--max-queue while three quarters of it were queued), stream_receive (a stream ended "
          "while reading: stream messages overshot the transport's share of --max-memory-mb).",
          {"rpc", "reason"})),
      queued_(
          registry->AddGauge("attention_requests_queued", "Requests waiting for a compute worker.")
              .Labels({})),
      computing_(registry->AddGauge("attention_requests_computing", "Requests being computed.")
                     .Labels({})),
      streams_open_(registry->AddGauge("attention_streams_open", "Streams open.", {"rpc"})),
      batch_size_(registry
                      ->AddHistogram("attention_batch_size",
                                     "Requests merged into each computation (--batch-delay-us "
                                     "above 0; 1 = computed alone).",
                                     {}, {1, 2, 4, 8, 16, 32, 64, 128})
                      .Labels({})),
      batch_wait_(registry
                      ->AddHistogram("attention_batch_wait_seconds",
                                     "Time requests waited in the batcher before their "
                                     "computation started (busy compute, or company).",
                                     {}, LatencyBuckets())
                      .Labels({})),
      decode_(registry) {
  for (const std::string& m : options.models) model_info_.Labels({m, "1"}).Set(1);
  registry
      ->AddGauge("attention_build_info", "The server's version and the gRPC library's (value 1).",
                 {"version", "grpc_version"})
      .Labels({ATTENTION_VERSION, grpc::Version()})
      .Set(1);
  registry
      ->AddGauge("attention_request_memory_limit_bytes",
                 "Estimated memory one request may use (--max-request-memory-mb).")
      .Labels({})
      .Set(static_cast<double>(options.max_request_memory_bytes));
  registry
      ->AddGauge("attention_message_limit_bytes",
                 "Largest request and response message (--max-message-mb).")
      .Labels({})
      .Set(static_cast<double>(options.max_message_bytes));
  registry
      ->AddGauge("attention_queue_limit_requests",
                 "Requests that may wait for compute (--max-queue).")
      .Labels({})
      .Set(options.max_queue);
  for (const char* rpc : {"StreamAttention", "StreamSelfAttention", "StreamDecode"}) {
    streams_open_.Labels({rpc});
  }
  if (access_log_ != nullptr) {
    registry->AddCallback("attention_access_log_dropped_total",
                          "Access log lines dropped because the writer fell behind.", "counter",
                          [log = access_log_] { return static_cast<double>(log->dropped()); });
  }
}

CallRecord ServiceMetrics::Begin(const char* rpc, std::string peer, int64_t bytes_in) const {
  CallRecord call;
  call.rpc = rpc;
  call.peer = std::move(peer);
  call.bytes_in = bytes_in;
  call.time = absl::Now();
  call.begin = CallRecord::Clock::now();
  return call;
}

void ServiceMetrics::Enqueued(CallRecord* call) {
  call->enqueued = CallRecord::Clock::now();
  queued_.Inc();
}

void ServiceMetrics::EnqueueFailed(CallRecord* call) {
  queued_.Dec();
  call->enqueued = {};
  call->refusal = CallRecord::Refusal::kQueueFull;
}

void ServiceMetrics::ComputeBegins(CallRecord* call) {
  call->compute_begin = CallRecord::Clock::now();
  queued_.Dec();
  computing_.Inc();
}

void ServiceMetrics::ComputeEnds(CallRecord* call, const absl::Status& status) {
  call->compute_end = CallRecord::Clock::now();
  computing_.Dec();
  if (status.code() == absl::StatusCode::kResourceExhausted) {
    call->refusal = CallRecord::Refusal::kMemoryLimit;
  }
}

bool ServiceMetrics::IsModel(const std::string& name) const {
  absl::MutexLock lock(&models_mu_);
  return models_.count(name) > 0;
}

std::string ServiceMetrics::ModelLabel(const std::string& requested) const {
  if (requested.empty()) return kNoModel;
  if (requested == kBuiltinModelName) return requested;  // the Open Inference Protocol's
  return IsModel(requested) ? requested : kUnknownModel;
}

void ServiceMetrics::ModelLoaded(const std::string& name, int64_t version, int64_t previous) {
  {
    absl::MutexLock lock(&models_mu_);
    models_.insert(name);
  }
  if (previous > 0) model_info_.Remove({name, absl::StrCat(previous)});
  model_info_.Labels({name, absl::StrCat(version)}).Set(1);
  model_loads_.Labels({name, "loaded"}).Inc();
}

void ServiceMetrics::ModelLoadFailed(const std::string& name, const std::string& result) {
  model_loads_.Labels({name, result}).Inc();
}

void ServiceMetrics::ModelRemoved(const std::string& name, int64_t version) {
  model_info_.Remove({name, absl::StrCat(version)});
  model_loads_.Labels({name, "removed"}).Inc();
}

void ServiceMetrics::Finish(const CallRecord& call, const absl::Status& status, int64_t bytes_out) {
  const std::string model = ModelLabel(call.model);
  const absl::StatusCode code = SentCode(status);
  requests_.Labels({call.rpc, model, absl::StatusCodeToString(code)}).Inc();
  request_bytes_.Labels({call.rpc, model}).Inc(static_cast<double>(call.bytes_in));
  response_bytes_.Labels({call.rpc, model}).Inc(static_cast<double>(bytes_out));
  duration_.Labels({call.rpc, model}).Observe(Seconds(CallRecord::Clock::now() - call.begin));
  if (Reached(call.compute_begin)) {
    queue_time_.Labels({call.rpc, model}).Observe(Seconds(call.compute_begin - call.enqueued));
  }
  if (Reached(call.compute_end)) {
    compute_time_.Labels({call.rpc, model}).Observe(Seconds(call.compute_end - call.compute_begin));
  }
  if (call.refusal != CallRecord::Refusal::kNone) {
    refusals_.Labels({call.rpc, RefusalName(call.refusal)}).Inc();
  }
  if (code == absl::StatusCode::kInternal) {
    std::fprintf(stderr, "attention-server: error: INTERNAL in %s (model \"%s\", peer %s): %s\n",
                 call.rpc, call.model.c_str(), call.peer.c_str(),
                 std::string(status.message()).c_str());
  }
  if (access_log_ != nullptr) Log(call, status, bytes_out);
  if (absl::StartsWith(call.rpc, "Model") &&
      (call.model == kBuiltinModelName || IsModel(call.model))) {
    CountInference(call, status);
  }
}

void ServiceMetrics::CountInference(const CallRecord& call, const absl::Status& status) {
  auto ns = [](CallRecord::Clock::duration d) {
    return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count());
  };
  int64_t batch = 1;
  for (const auto& [name, dims] : call.shapes) {
    if (name == "query" && dims.size() >= 3) batch = dims[0];
  }
  absl::MutexLock lock(&infer_mu_);
  InferStatistics& st = infer_stats_[call.model];
  const uint64_t total = ns(CallRecord::Clock::now() - call.begin);
  if (status.ok()) {
    ++st.success_count;
    st.success_ns += total;
    ++st.execution_count;
    st.inference_count += static_cast<uint64_t>(std::max<int64_t>(batch, 0));
    st.last_inference_ms = static_cast<uint64_t>(absl::ToUnixMillis(absl::Now()));
  } else {
    ++st.fail_count;
    st.fail_ns += total;
  }
  if (Reached(call.compute_begin)) {
    ++st.queue_count;
    st.queue_ns += ns(call.compute_begin - call.enqueued);
  }
  if (status.ok() && Reached(call.compute_end)) {
    ++st.compute_count;
    st.compute_ns += ns(call.compute_end - call.compute_begin);
  }
}

std::map<std::string, ServiceMetrics::InferStatistics> ServiceMetrics::InferStats() const {
  absl::MutexLock lock(&infer_mu_);
  return infer_stats_;
}

void ServiceMetrics::Log(const CallRecord& call, const absl::Status& status,
                         int64_t bytes_out) const {
  auto ms = [](CallRecord::Clock::duration d) {
    return std::chrono::duration<double, std::milli>(d).count();
  };
  nlohmann::ordered_json line;
  line["time"] = absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", call.time, absl::UTCTimeZone());
  line["peer"] = call.peer;
  line["rpc"] = call.rpc;
  if (call.stream_message >= 0) line["stream_message"] = call.stream_message;
  line["model"] = call.model;
  nlohmann::ordered_json shapes = nlohmann::ordered_json::object();
  for (const auto& [name, dims] : call.shapes) shapes[name] = dims;
  line["shapes"] = shapes;
  line["code"] = absl::StatusCodeToString(SentCode(status));
  if (!status.ok()) line["message"] = std::string(status.message());
  line["bytes_in"] = call.bytes_in;
  line["bytes_out"] = bytes_out;
  line["queue_ms"] = Reached(call.compute_begin) ? ms(call.compute_begin - call.enqueued) : 0.0;
  line["compute_ms"] = Reached(call.compute_end) ? ms(call.compute_end - call.compute_begin) : 0.0;
  line["total_ms"] = ms(CallRecord::Clock::now() - call.begin);
  // Replacement characters for invalid UTF-8 (a model name is the client's bytes).
  access_log_->Append(line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

void ServiceMetrics::DecodeHeld(int64_t sequences, int64_t bytes) {
  decode_.sequences.Inc(static_cast<double>(sequences));
  decode_.bytes.Inc(static_cast<double>(bytes));
}

void ServiceMetrics::DecodeAppended(int64_t tokens) {
  decode_.tokens.Inc(static_cast<double>(tokens));
}

void ServiceMetrics::DecodeExpired() { decode_.expired.Inc(); }
void ServiceMetrics::DecodeBatchStarted(int size) { decode_.batch_size.Observe(size); }

void ServiceMetrics::StreamOpened(const char* rpc) { streams_open_.Labels({rpc}).Inc(); }
void ServiceMetrics::StreamClosed(const char* rpc) { streams_open_.Labels({rpc}).Dec(); }
void ServiceMetrics::StreamEndedByGuard(const char* rpc) {
  refusals_.Labels({rpc, "stream_receive"}).Inc();
}

void ServiceMetrics::BatchStarted(int size) { batch_size_.Observe(size); }
void ServiceMetrics::BatchWaited(double seconds) { batch_wait_.Observe(seconds); }

}  // namespace server
}  // namespace attention
