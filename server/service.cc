#include "server/service.h"

#include <chrono>
#include <cstdio>
#include <exception>
#include <memory>
#include <new>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/guard.h"
#include "server/response.h"
#include "server/stream_flow.h"

namespace attention {
namespace server {
namespace {

absl::Status Saturated(size_t waiting) {
  return absl::ResourceExhaustedError(
      absl::StrCat("server is saturated: ", waiting,
                   " requests already wait for compute; retry later or add replicas"));
}

// Aborts work whose caller has gone or whose deadline has passed.
absl::Status CheckAlive(grpc::CallbackServerContext* context, const std::atomic<bool>* cancelled) {
  if (cancelled != nullptr ? cancelled->load() : context->IsCancelled()) {
    return absl::CancelledError("the call was cancelled");
  }
  if (context->deadline() < std::chrono::system_clock::now()) {
    return absl::DeadlineExceededError("the call's deadline passed before it was computed");
  }
  return absl::OkStatus();
}

// Queues `compute` on the executor with its time in the queue and computing
// recorded in `call` (which `compute` keeps alive); `done` then gets its
// status, on the executor thread. False when the queue is full (the refusal
// recorded; neither runs).
bool SubmitTimed(AttentionServiceImpl* service, CallRecord* call,
                 std::function<absl::Status()> compute,
                 std::function<void(const absl::Status&)> done) {
  ServiceMetrics* metrics = service->metrics();
  metrics->Enqueued(call);
  const bool queued = service->executor()->TrySubmit(
      [metrics, call, compute = std::move(compute), done = std::move(done)] {
        metrics->ComputeBegins(call);
        const absl::Status s = compute();
        metrics->ComputeEnds(call, s);
        done(s);
      });
  if (!queued) metrics->EnqueueFailed(call);
  return queued;
}

// A unary call's reactor, counted as active until gRPC is done with it.
// Its reservation of the memory budget and its connection's ticket go when
// gRPC is done with the call (the response written).
class UnaryReactor final : public grpc::ServerUnaryReactor {
 public:
  explicit UnaryReactor(AttentionServiceImpl* service)
      : scope_(service), held_(service->limits().memory_budget) {}
  void OnDone() override { delete this; }
  Reservation* held() { return &held_; }
  ConnectionShares::Ticket* ticket() { return &ticket_; }
  // Gives back what a refused request held, at once.
  void Release() {
    held_.Reset();
    ticket_.Reset();
  }

 private:
  AttentionServiceImpl::CallScope scope_;
  Reservation held_;
  ConnectionShares::Ticket ticket_;
};

// What an open stream holds of its own (gRPC's call and HTTP/2 stream, the
// reactor): 17 KB measured (tests/hardening_test.cc). Counted as freed when
// it closes, so that the memory of many closed streams goes back to the
// system (the budget trims after large releases).
constexpr int64_t kStreamBytes = 16 << 10;

// A bidirectional stream: each message an independent request, answered in
// order. When to read, write, compute and finish is StreamFlow's to decide.
template <typename Request>
class StreamReactor final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>,
                            private StreamFlow {
 public:
  StreamReactor(AttentionServiceImpl* service, grpc::CallbackServerContext* context,
                const char* rpc)
      : StreamFlow(service->limits().max_stream_in_flight),
        scope_(service),
        service_(service),
        context_(context),
        rpc_(rpc),
        peer_(context->peer()) {
    service_->metrics()->StreamOpened(rpc_);
    Begin();
  }
  ~StreamReactor() override {
    service_->metrics()->StreamClosed(rpc_);
    if (MemoryBudget* budget = service_->limits().memory_budget) budget->Freed(kStreamBytes);
  }

  void OnReadDone(bool ok) override {
    // The flow starts no other read before this one is reported, so incoming_
    // is parsed (it may be --max-message-mb large) outside the flow's lock.
    std::shared_ptr<Item> item;
    if (ok) {
      item = std::make_shared<Item>();
      item->call = service_->metrics()->Begin(rpc_, peer_, incoming_.Length());
      item->call.stream_message = messages_++;
      const int64_t bytes = incoming_.Length();
      absl::Status admitted = service_->Received(bytes, &item->call, &item->held);
      if (admitted.ok()) admitted = ParseRequest(incoming_, &item->request);
      incoming_.Clear();
      service_->Parsed(bytes, &item->held);
      if (admitted.ok()) {
        DescribeRequest(item->request, &item->call);
        admitted = service_->Admit(item->request, peer_, &item->call, &item->held, &item->ticket);
      }
      if (!admitted.ok()) {  // answered like any failed message, its memory given back
        item->Release();
        item->response = EncodeError(item->request.id(), admitted);
        item->answered = true;
        service_->metrics()->Finish(item->call, admitted, item->response.Length());
      }
    }
    ReadDone(std::move(item));
  }
  void OnWriteDone(bool ok) override { WriteDone(ok); }
  void OnCancel() override { Cancelled(); }
  void OnDone() override { delete this; }

 private:
  // Its reservation and ticket go with it, once its response has been written.
  struct Item : Slot {
    Request request;
    CallRecord call;
    Reservation held;
    ConnectionShares::Ticket ticket;
    void Release() {
      held.Reset();
      ticket.Reset();
    }
  };

  void IssueRead() override { this->StartRead(&incoming_); }
  void IssueWrite(const Slot& slot) override { this->StartWrite(&slot.response); }
  bool IssueCompute(const std::shared_ptr<Slot>& slot) override {
    auto item = std::static_pointer_cast<Item>(slot);
    auto response = std::make_shared<grpc::ByteBuffer>();
    const bool queued = service_->Submit(
        std::shared_ptr<const Request>(item, &item->request), context_, cut(), &item->call,
        response.get(), [this, item, response](const absl::Status& s) {
          grpc::ByteBuffer answer = s.ok() ? std::move(*response) : EncodeError(item->request.id(), s);
          service_->metrics()->Finish(item->call, s, answer.Length());
          Computed(item, std::move(answer));
        });
    if (!queued) {
      item->Release();
      const absl::Status saturated = Saturated(service_->Waiting());
      item->response = EncodeError(item->request.id(), saturated);
      service_->metrics()->Finish(item->call, saturated, item->response.Length());
    }
    return queued;
  }
  void IssueFinish(bool cut) override {
    this->Finish(cut ? grpc::Status(grpc::StatusCode::CANCELLED, "stream cancelled")
                           : grpc::Status::OK);
  }

  AttentionServiceImpl::CallScope scope_;
  AttentionServiceImpl* service_;
  grpc::CallbackServerContext* context_;
  const char* const rpc_;
  const std::string peer_;
  int64_t messages_ = 0;  // read so far (only OnReadDone touches it: one read at a time)
  grpc::ByteBuffer incoming_;
};

}  // namespace

AttentionServiceImpl::AttentionServiceImpl(const ModelRegistry* models, Executor* executor,
                                           ServiceLimits limits, ServiceMetrics* metrics)
    : models_(models),
      executor_(executor),
      limits_(limits),
      metrics_(metrics),
      shares_(std::max(1, limits.max_queue / 4)) {
  if (limits_.batch_delay_us > 0) {
    Batcher::Options options;
    options.delay_us = limits_.batch_delay_us;
    options.max_size = limits_.batch_max_size;
    options.max_threads = executor_->threads_per_worker();
    options.max_request_memory_bytes = limits_.max_request_memory_bytes;
    options.budget = limits_.memory_budget;
    options.on_batch = [metrics](int size) { metrics->BatchStarted(size); };
    options.on_wait = [metrics](double seconds) { metrics->BatchWaited(seconds); };
    batcher_ = std::make_unique<Batcher>(executor_, std::move(options));
  }
}

template <typename Request>
bool AttentionServiceImpl::Submit(std::shared_ptr<const Request> request,
                                  grpc::CallbackServerContext* context,
                                  const std::atomic<bool>* cancelled, CallRecord* call,
                                  grpc::ByteBuffer* response,
                                  std::function<void(const absl::Status&)> done) {
  if (batcher_ != nullptr) {
    const std::optional<bool> batched =
        SubmitBatched(request, context, cancelled, call, response, done);
    if (batched.has_value()) return *batched;
  }
  return SubmitTimed(
      this, call,
      [this, request, context, cancelled, response] {
        return Run(*request, context, cancelled, response);
      },
      std::move(done));
}

template <typename Request>
std::optional<bool> AttentionServiceImpl::SubmitBatched(
    std::shared_ptr<const Request> request, grpc::CallbackServerContext* context,
    const std::atomic<bool>* cancelled, CallRecord* call, grpc::ByteBuffer* response,
    const std::function<void(const absl::Status&)>& done) {
  struct Batched {
    std::shared_ptr<const Request> request;  // the views of `call` point into it
    Call call;
    std::optional<ResponseOutputs> outputs;
  };
  auto state = std::make_shared<Batched>();
  state->request = request;
  // Validated alone, so that a request that would fail never joins a batch
  // (the usual path answers it with its error).
  ComputeOptions plan;
  plan.max_memory_bytes = limits_.max_request_memory_bytes;
  const absl::Status prepared = GuardStatus([&] {
    if (absl::Status s = PrepareCall(*request, *models_, &state->call); !s.ok()) return s;
    return PlanAttention(state->call.args, plan).status();
  });
  if (!prepared.ok() || !Batcher::Batchable(state->call.args, &state->call.projection)) {
    return std::nullopt;
  }
  state->outputs.emplace(state->call.output_dtype);
  Batcher::Request r;
  r.args = &state->call.args;
  r.outputs = &*state->outputs;
  r.check = [context, cancelled] { return CheckAlive(context, cancelled); };
  r.started = [this, call] { metrics_->ComputeBegins(call); };
  r.done = [this, call, state, response, done](const absl::Status& computed) {
    const absl::Status s =
        computed.ok() ? Encode(&*state->outputs, state->request->id(),
                              EffectivePrecision(state->call.args.precision), response)
                     : computed;
    metrics_->ComputeEnds(call, s);
    done(s);
  };
  metrics_->Enqueued(call);
  const bool queued = batcher_->Submit(std::move(r));
  if (!queued) metrics_->EnqueueFailed(call);
  return queued;
}

ComputeOptions AttentionServiceImpl::Options(grpc::CallbackServerContext* context,
                                             const std::atomic<bool>* cancelled) const {
  ComputeOptions options;
  options.max_threads = executor_->threads_per_worker();
  options.max_memory_bytes = limits_.max_request_memory_bytes;
  if (context != nullptr) {
    options.check = [context, cancelled] { return CheckAlive(context, cancelled); };
  }
  return options;
}

absl::Status AttentionServiceImpl::Received(int64_t bytes, CallRecord* call, Reservation* held) {
  absl::Status s = held->Add(2 * bytes);
  if (!s.ok()) call->refusal = CallRecord::Refusal::kMemoryBudget;
  return s;
}

template <typename Request>
absl::Status AttentionServiceImpl::Admit(const Request& request, const std::string& peer,
                                         CallRecord* call, Reservation* held,
                                         ConnectionShares::Ticket* ticket) {
  absl::StatusOr<int64_t> planned =
      PlanCall(request, *models_, Options(nullptr, nullptr), limits_.max_message_bytes);
  absl::Status s = planned.ok() ? held->Add(*planned) : planned.status();
  if (s.code() == absl::StatusCode::kResourceExhausted) {
    call->refusal = planned.ok() ? CallRecord::Refusal::kMemoryBudget
                                 : CallRecord::Refusal::kMemoryLimit;
  }
  if (!s.ok()) return s;
  // The last quarter of the queue is kept for connections below their share.
  const bool busy = 4 * static_cast<int64_t>(Waiting()) >= 3 * limits_.max_queue;
  s = shares_.Enter(peer, busy, ticket);
  if (!s.ok()) call->refusal = CallRecord::Refusal::kConnectionShare;
  return s;
}

template <typename Request>
absl::Status AttentionServiceImpl::Run(const Request& request, grpc::CallbackServerContext* context,
                                       const std::atomic<bool>* cancelled,
                                       grpc::ByteBuffer* response) {
  if (absl::Status s = CheckAlive(context, cancelled); !s.ok()) return s;  // not computed
  // Nothing may escape: the caller's Finish (or the stream's Computed) must
  // follow, or the call would never end.
  try {
    Call call;
    if (absl::Status s = PrepareCall(request, *models_, &call); !s.ok()) return s;
    if (limits_.fault_delay_ms > 0) {  // test-only: a computation that stalls
      std::this_thread::sleep_for(std::chrono::milliseconds(limits_.fault_delay_ms));
    }
    return Compute(call, Options(context, cancelled), request.id(), response);
  } catch (const std::bad_alloc&) {
    CallRecord described;
    DescribeRequest(request, &described);
    std::string shapes;
    for (const auto& [name, dims] : described.shapes) {
      absl::StrAppend(&shapes, shapes.empty() ? "" : " ", name, "[", absl::StrJoin(dims, ","), "]");
    }
    std::fprintf(stderr,
                 "attention-server: error: out of memory computing a request (model \"%s\", %s); "
                 "lower --max-request-memory-mb or --workers, or give the server more memory\n",
                 described.model.c_str(), shapes.c_str());
    return absl::ResourceExhaustedError("out of memory computing the request");
  } catch (const std::exception& e) {
    return absl::InternalError(e.what());
  }
}

template <typename Request>
grpc::ServerUnaryReactor* AttentionServiceImpl::Unary(const char* rpc,
                                                      grpc::CallbackServerContext* context,
                                                      const grpc::ByteBuffer* request_bytes,
                                                      grpc::ByteBuffer* response) {
  auto* reactor = new UnaryReactor(this);
  const auto bytes = static_cast<int64_t>(request_bytes->Length());
  auto call = std::make_shared<CallRecord>(metrics_->Begin(rpc, context->peer(), bytes));
  // Counted before the client can see the answer.
  auto finish = [this, reactor, call](const absl::Status& s, int64_t bytes_out) {
    metrics_->Finish(*call, s, bytes_out);
    reactor->Finish(ToGrpcStatus(s));
  };
  auto request = std::make_shared<Request>();
  absl::Status admitted = Received(bytes, call.get(), reactor->held());
  if (admitted.ok()) admitted = ParseRequest(*request_bytes, request.get());
  // gRPC keeps the received bytes until the call ends; once parsed they are
  // not needed, so they go now and a queued request is held once, not twice.
  // (The buffer is gRPC's own mutable object, handed to handlers as const.)
  const_cast<grpc::ByteBuffer*>(request_bytes)->Clear();
  Parsed(bytes, reactor->held());
  if (admitted.ok()) {
    DescribeRequest(*request, call.get());
    admitted = Admit(*request, context->peer(), call.get(), reactor->held(), reactor->ticket());
  }
  if (!admitted.ok()) {
    reactor->Release();  // a refused request's memory goes at once
    finish(admitted, 0);
    return reactor;
  }
  const bool queued = Submit<Request>(
      request, context, nullptr, call.get(), response,
      [response, finish](const absl::Status& s) {
        finish(s, s.ok() ? static_cast<int64_t>(response->Length()) : 0);
      });
  if (!queued) {
    reactor->Release();
    finish(Saturated(Waiting()), 0);
  }
  return reactor;
}

grpc::ServerUnaryReactor* AttentionServiceImpl::Attention(grpc::CallbackServerContext* context,
                                                          const grpc::ByteBuffer* request,
                                                          grpc::ByteBuffer* response) {
  return Unary<v1::AttentionRequest>("Attention", context, request, response);
}

grpc::ServerUnaryReactor* AttentionServiceImpl::SelfAttention(grpc::CallbackServerContext* context,
                                                              const grpc::ByteBuffer* request,
                                                              grpc::ByteBuffer* response) {
  return Unary<v1::SelfAttentionRequest>("SelfAttention", context, request, response);
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* AttentionServiceImpl::StreamAttention(
    grpc::CallbackServerContext* context) {
  return new StreamReactor<v1::AttentionRequest>(this, context, "StreamAttention");
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>*
AttentionServiceImpl::StreamSelfAttention(grpc::CallbackServerContext* context) {
  return new StreamReactor<v1::SelfAttentionRequest>(this, context, "StreamSelfAttention");
}

grpc::ServerUnaryReactor* AttentionServiceImpl::ListModels(grpc::CallbackServerContext* context,
                                                           const v1::ListModelsRequest*,
                                                           v1::ListModelsResponse* response) {
  for (const Model* m : models_->All()) {
    v1::ModelInfo* info = response->add_models();
    info->set_name(m->info().name);
    info->set_embed_dim(m->info().embed_dim);
    info->set_num_heads(m->info().num_heads);
    info->set_kdim(m->info().kdim);
    info->set_vdim(m->info().vdim);
    info->set_bias(m->info().bias);
  }
  v1::ServerLimits* l = response->mutable_limits();
  l->set_max_message_bytes(limits_.max_receive_bytes > 0
                              ? std::min(limits_.max_receive_bytes, limits_.max_message_bytes)
                              : limits_.max_message_bytes);
  l->set_max_request_memory_bytes(limits_.max_request_memory_bytes);
  l->set_compute_threads(executor_->workers() * executor_->threads_per_worker());
  l->set_max_queue(limits_.max_queue);
  l->set_max_stream_in_flight(limits_.max_stream_in_flight);
  response->set_native_bfloat16(EffectivePrecision(Precision::kBFloat16) ==
                                Precision::kBFloat16);
  grpc::ServerUnaryReactor* reactor = new UnaryReactor(this);
  metrics_->Finish(metrics_->Begin("ListModels", context->peer(), 0), absl::OkStatus(),
                   static_cast<int64_t>(response->ByteSizeLong()));
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

// The request types served (the methods above use them; the request fuzzers,
// tests/fuzz/fuzz_request.cc, call them directly).
template absl::Status AttentionServiceImpl::Admit(const v1::AttentionRequest&, const std::string&,
                                                  CallRecord*, Reservation*,
                                                  ConnectionShares::Ticket*);
template absl::Status AttentionServiceImpl::Admit(const v1::SelfAttentionRequest&,
                                                  const std::string&, CallRecord*, Reservation*,
                                                  ConnectionShares::Ticket*);
template absl::Status AttentionServiceImpl::Run(const v1::AttentionRequest&,
                                                grpc::CallbackServerContext*,
                                                const std::atomic<bool>*, grpc::ByteBuffer*);
template absl::Status AttentionServiceImpl::Run(const v1::SelfAttentionRequest&,
                                                grpc::CallbackServerContext*,
                                                const std::atomic<bool>*, grpc::ByteBuffer*);

}  // namespace server
}  // namespace attention
