// attention.v1.AttentionService on gRPC's callback API.
//
// Every request takes its share of the memory budget (server/memory_budget.h)
// as it arrives: its received bytes, then, once validated, the memory its
// computation and response take; a request that does not fit, or whose
// response would exceed the message limit, is refused before it is queued.
// The share is given back when the response has been written.
//
// Handlers never compute inside a reaction: each request becomes a task on
// the core's bounded Executor, which calls Finish / StartWrite when done. A
// full executor answers RESOURCE_EXHAUSTED at once. Streams keep at most
// `max_stream_in_flight` messages read but not yet written, so a client that
// stops reading stops the server reading too (HTTP/2 flow control does the
// rest) instead of making it buffer without bound.
//
// Every call, and every message of a stream, is reported to ServiceMetrics
// (counters, latency histograms, the access log) once answered.
#ifndef SERVER_SERVICE_H_
#define SERVER_SERVICE_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>

#include "attention/v1/attention.grpc.pb.h"
#include "core/executor.h"
#include "server/batcher.h"
#include "server/connection_shares.h"
#include "server/decode_stream.h"
#include "server/memory_budget.h"
#include "server/prepared_call.h"
#include "server/receive_gate.h"
#include "server/service_metrics.h"
#include "server/stream_read_guard.h"

namespace attention {
namespace server {

struct ServiceLimits {
  int64_t max_message_bytes = 0;
  // The largest request gRPC receives: max_message_bytes, or less when the
  // transport's share of --max-memory-mb is smaller (0: max_message_bytes).
  // What ListModels tells clients.
  int64_t max_receive_bytes = 0;
  int64_t max_request_memory_bytes = int64_t{1} << 30;
  // One request's estimated work, flop-equivalents (AttentionPlanInfo::work);
  // 0: none.
  double max_request_work = 0;
  int max_stream_in_flight = 4;
  // Unary requests received at once (server/receive_gate.h); 0: no limit.
  int receive_slots = 0;
  // How long an upload may hold a slot while others wait; 0: no limit.
  int receive_timeout_seconds = 0;
  int max_queue = 64;
  // The server's budget for what it holds for requests (--max-memory-mb);
  // null: none. Not owned.
  MemoryBudget* memory_budget = nullptr;
  // Ends streams whose messages overshoot the transport's share
  // (server/stream_read_guard.h); null: none. Not owned.
  StreamReadGuard* read_guard = nullptr;
  // Dynamic batching (server/batcher.h): 0 = off.
  int64_t batch_delay_us = 0;
  int batch_max_size = 32;
  // StreamDecode (server/decode_stream.h).
  int64_t max_sequence_tokens = 32768;
  int max_sequences_per_stream = 64;
  int sequence_idle_seconds = 600;
};

// The attention methods take and return raw bytes, parsed and encoded by
// server/prepared_call.h, so that result tensors go to the wire from the
// buffers the core wrote them into (protobuf serialization would copy them
// once more); ListModels stays typed.
using ServiceBase = v1::AttentionService::WithRawCallbackMethod_Attention<
    v1::AttentionService::WithRawCallbackMethod_SelfAttention<
        v1::AttentionService::WithRawCallbackMethod_StreamAttention<
            v1::AttentionService::WithRawCallbackMethod_StreamSelfAttention<
                v1::AttentionService::WithCallbackMethod_ListModels<
                    v1::AttentionService::WithRawCallbackMethod_StreamDecode<
                        v1::AttentionService::Service>>>>>>;

class UnaryReactor;
class DecodeReactor;
template <typename Request>
class UnaryCallReactor;
template <typename Request>
class StreamReactor;

class AttentionServiceImpl final : public ServiceBase {
 public:
  // `models`, `executor` and `metrics` must outlive the service.
  AttentionServiceImpl(const ModelRegistry* models, Executor* executor, ServiceLimits limits,
                       ServiceMetrics* metrics);

  // Attention (AttentionRequest in, AttentionResponse out) and SelfAttention
  // (SelfAttentionRequest in) are unary for clients, served as streams of
  // one message each way (UnaryCallReactor), so that uploads wait for the
  // receive gate (server/receive_gate.h) instead of being read at once.
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* StreamAttention(
      grpc::CallbackServerContext* context) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* StreamSelfAttention(
      grpc::CallbackServerContext* context) override;
  // StreamDecode (server/decode_stream.h): one message at a time per stream,
  // its sequences kept until it ends.
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* StreamDecode(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const v1::ListModelsRequest* request,
                                       v1::ListModelsResponse* response) override;

  // The Open Inference Protocol's inference methods (server/infer_service.h),
  // served by this service's machinery: ModelInfer (unary for clients, served
  // as a stream of one message each way, as Attention is) and
  // ModelStreamInfer.
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* InferCall(
      grpc::CallbackServerContext* context);
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* InferStream(
      grpc::CallbackServerContext* context);

  // Calls being served (the attention methods and ListModels), each from its
  // handler until gRPC is done with it (OnDone): once this is 0 after
  // shutdown began, nothing is left but idle connections.
  int active_calls() const { return active_calls_.load(); }

  // The server drains: decode streams answer what they read, then end with
  // UNAVAILABLE (so do those opened from now on).
  void DrainDecodeStreams() { decode_streams_.DrainAll(); }

  // Test seam: every computation first sleeps `ms` (batched ones do not).
  // Call before serving.
  void TEST_SetComputeDelayMs(int ms) { test_compute_delay_ms_ = ms; }

  // Test seam (the request fuzzers, tests/fuzz): serves `received` as the
  // unary method `rpc` does (the same admission, then the computation on the
  // calling thread, counted in the metrics) and gives back everything it
  // reserved before returning. The response's bytes go to `response`.
  template <typename Request>
  absl::Status TEST_ServeUnary(const char* rpc, grpc::ByteBuffer received,
                               grpc::ByteBuffer* response);

 private:
  friend class UnaryReactor;
  friend class DecodeReactor;
  template <typename Request>
  friend class UnaryCallReactor;
  template <typename Request>
  friend class StreamReactor;

  // The methods' indexes in attention.proto's service.
  static constexpr int kAttentionMethod = 0;
  static constexpr int kSelfAttentionMethod = 1;

  // Counts one call for as long as it lives (a member of its reactor).
  class CallScope {
   public:
    explicit CallScope(AttentionServiceImpl* service) : count_(&service->active_calls_) {
      ++*count_;
    }
    ~CallScope() { --*count_; }
    CallScope(const CallScope&) = delete;
    CallScope& operator=(const CallScope&) = delete;

   private:
    std::atomic<int>* count_;
  };

  // One request on its way through the service, from the arrival of its
  // bytes until its response has been written: the parsed request, its
  // record for the metrics, its share of the memory budget and of its
  // connection's queue (both given back when it is destroyed or released).
  template <typename Request>
  struct Admission {
    explicit Admission(MemoryBudget* budget) : held(budget) {}
    Request request;
    CallRecord call;
    Reservation held;
    ConnectionShares::Ticket ticket;
    void Release() {
      held.Reset();
      ticket.Reset();
    }
  };

  // The one way in, for unary calls, stream messages (`stream_message`: its
  // index; -1 for a unary call) and the fuzzers: begins the call's record,
  // reserves the received bytes (twice: the bytes and their parsed copy,
  // until parsing is done and `received` is cleared), parses and describes
  // the request, validates and plans it, reserves its computation and
  // response, and counts it into the share of its connection `peer`
  // (refused when that connection holds its share while the queue is busy).
  // Refusals are marked in the record; on error the caller answers it.
  template <typename Request>
  absl::Status Admit(const char* rpc, const std::string& peer, int64_t stream_message,
                     grpc::ByteBuffer* received, Admission<Request>* admission);

  // Queues `request` for computation into `response` (through the batcher
  // when batching is on and the request may join others); `done` then gets
  // its status on an executor thread. False when the queue is full (the
  // refusal recorded in `call`; `done` is not called). `call` must stay
  // valid until `done` is called.
  template <typename Request>
  bool Submit(std::shared_ptr<const Request> request, grpc::CallbackServerContext* context,
              const std::atomic<bool>* cancelled, CallRecord* call, grpc::ByteBuffer* response,
              std::function<void(const absl::Status&)> done);

  // Submit through the batcher; nullopt when the request is not one to
  // batch (it fails validation, or cannot be merged).
  template <typename Request>
  std::optional<bool> SubmitBatched(std::shared_ptr<const Request> request,
                                    grpc::CallbackServerContext* context,
                                    const std::atomic<bool>* cancelled, CallRecord* call,
                                    grpc::ByteBuffer* response,
                                    const std::function<void(const absl::Status&)>& done);

  // Validates and computes one request into an encoded AttentionResponse (on
  // an executor thread). `cancelled` is polled between units of work; the
  // context's deadline too (neither without a context). Never throws (out of
  // memory: ResourceExhausted).
  template <typename Request>
  absl::Status Run(const Request& request, grpc::CallbackServerContext* context,
                   const std::atomic<bool>* cancelled, grpc::ByteBuffer* response);

  // The core's options for a call: the deadline and cancellation polled
  // (none without a context: planning only).
  ComputeOptions Options(grpc::CallbackServerContext* context,
                         const std::atomic<bool>* cancelled) const;

  // Serves unary method `method` (its index) as a stream (UnaryCallReactor).
  template <typename Request>
  void ServeAsStream(int method, const char* rpc);

  // A unary call's request, received: admits it and queues its computation
  // into `response`; `answer` gets the status (on an executor thread, or at
  // once when the request is refused).
  template <typename Request>
  void ServeUnary(const char* rpc, grpc::CallbackServerContext* context, grpc::ByteBuffer* received,
                  const std::shared_ptr<Admission<Request>>& admission, grpc::ByteBuffer* response,
                  std::function<void(const absl::Status&)> answer);

  ServiceMetrics* metrics() { return metrics_; }
  const ServiceLimits& limits() const { return limits_; }

  // Requests waiting for compute: the executor's queue, less the tasks of
  // requests a batch already answered.
  size_t Waiting() const {
    const size_t queued = executor_->queued();
    size_t answered = batcher_ ? batcher_->answered_queued() : 0;
    if (decode_batcher_) answered += decode_batcher_->answered_queued();
    return queued - std::min(queued, answered);
  }

  const ModelRegistry* models_;
  Executor* executor_;
  ServiceLimits limits_;
  ServiceMetrics* metrics_;
  ConnectionShares shares_;           // a quarter of --max-queue each, once 3/4 of it is queued
  ReceiveGate receive_gate_;          // unary requests being received
  std::unique_ptr<Batcher> batcher_;  // null when batching is off
  std::unique_ptr<Batcher> decode_batcher_;  // StreamDecode's steps; null likewise
  std::atomic<int> active_calls_{0};
  int test_compute_delay_ms_ = 0;
  // Last: its sweep may hold the last reference to a stream, whose end
  // touches the members above.
  DecodeStreams decode_streams_;  // open StreamDecode streams
};

}  // namespace server
}  // namespace attention

#endif  // SERVER_SERVICE_H_
