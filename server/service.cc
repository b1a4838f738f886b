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
#include "grpcpp/impl/codegen/server_callback_handlers.h"
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

}  // namespace

// ListModels' reactor, counted as active until gRPC is done with it.
class UnaryReactor final : public grpc::ServerUnaryReactor {
 public:
  explicit UnaryReactor(AttentionServiceImpl* service) : scope_(service) {}
  void OnDone() override { delete this; }

 private:
  AttentionServiceImpl::CallScope scope_;
};

// Lets the receive gate's watchdog cancel a call whose request is too slow to
// arrive without racing the call's own end (its context is gone once the
// call is finished): the reactor finishes through Close, which waits for a
// cancellation in progress. Shared by the reactor and the gate's callback.
class CallCanceller {
 public:
  explicit CallCanceller(grpc::CallbackServerContext* context) : context_(context) {}

  // The gate's watchdog: cancels the call unless it is finishing.
  void Expire() {
    int state = kOpen;
    if (!state_.compare_exchange_strong(state, kCancelling)) return;
    expired_ = true;
    context_->TryCancel();  // may run the reactor's reactions on this thread
    state = kCancelling;
    if (state_.compare_exchange_strong(state, kOpen)) return;
    // The call was answered meanwhile: its finish waited for the cancellation.
    state_ = kClosed;
    std::function<void()> finish = std::move(deferred_);
    finish();
  }

  // The reactor's one way to finish: runs `finish` now, or as soon as a
  // cancellation in progress is over.
  void Close(const std::function<void()>& finish) {
    while (true) {
      int state = state_.load();
      if (state == kOpen) {
        if (state_.compare_exchange_strong(state, kClosed)) {
          finish();
          return;
        }
      } else if (state == kCancelling) {
        deferred_ = finish;
        if (state_.compare_exchange_strong(state, kDeferred)) return;
      } else {
        return;  // closed already
      }
    }
  }

  bool expired() const { return expired_; }

 private:
  static constexpr int kOpen = 0, kCancelling = 1, kDeferred = 2, kClosed = 3;
  grpc::CallbackServerContext* const context_;
  std::atomic<int> state_{kOpen};
  std::atomic<bool> expired_{false};
  std::function<void()> deferred_;  // written before kDeferred, read after
};

// A unary call (Attention, SelfAttention), which gRPC serves as a stream of
// one message each way (see the constructor of AttentionServiceImpl): the
// request is read only once the receive gate gives it a slot, admitted (its
// bytes then move to the memory budget and the slot to the next upload),
// computed, and answered with one message and the status, as a unary call
// is. What its request holds (its Admission) goes when gRPC is done with the
// call, or at once when the request is refused.
template <typename Request>
class UnaryCallReactor final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  UnaryCallReactor(AttentionServiceImpl* service, grpc::CallbackServerContext* context,
                   const char* rpc)
      : scope_(service),
        service_(service),
        context_(context),
        rpc_(rpc),
        admission_(std::make_shared<Admission>(service->limits().memory_budget)),
        canceller_(std::make_shared<CallCanceller>(context)) {
    service_->receive_gate_.Enter(
        &slot_, [this] { StartRead(&incoming_); },
        [canceller = canceller_] { canceller->Expire(); });
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // cancelled, or the client closed without sending a request
      slot_.Reset();
      if (canceller_->expired()) {
        Answer(absl::DeadlineExceededError(
                   absl::StrCat("request: not received within --receive-timeout-seconds (",
                                service_->limits().receive_timeout_seconds,
                                " s) while other uploads waited; send it faster or retry")),
               /*counted=*/false);
      } else {
        Answer(context_->IsCancelled()
                   ? absl::CancelledError("the call was cancelled")
                   : absl::InvalidArgumentError("the call carried no request message"),
               /*counted=*/false);
      }
      return;
    }
    service_->ServeUnary<Request>(rpc_, context_, &incoming_, admission_, &response_,
                                  [this](const absl::Status& s) { Answer(s, true); });
    slot_.Reset();  // the request's bytes are in the memory budget now (or gone)
  }
  void OnCancel() override {
    if (slot_.Cancel()) Answer(absl::CancelledError("the call was cancelled"), false);
  }
  void OnDone() override { delete this; }

 private:
  using Admission = AttentionServiceImpl::Admission<Request>;

  // The response (when `s` is OK) and the status; `counted`: reported to the
  // metrics (a call that never sent its request is not).
  void Answer(const absl::Status& s, bool counted) {
    if (counted) {
      service_->metrics()->Finish(admission_->call, s,
                                  s.ok() ? static_cast<int64_t>(response_.Length()) : 0);
    }
    if (s.ok()) {
      canceller_->Close(
          [this] { StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK); });
    } else {
      admission_->Release();  // a refused request's memory goes at once
      canceller_->Close([this, status = ToGrpcStatus(s)] { Finish(status); });
    }
  }

  AttentionServiceImpl::CallScope scope_;
  AttentionServiceImpl* const service_;
  grpc::CallbackServerContext* const context_;
  const char* const rpc_;
  // Shared with the computation, which may outlive an answer to a
  // cancelled call until it notices.
  std::shared_ptr<Admission> admission_;
  std::shared_ptr<CallCanceller> canceller_;
  ReceiveGate::Ticket slot_;
  grpc::ByteBuffer incoming_;
  grpc::ByteBuffer response_;
};

// A bidirectional stream: each message an independent request, answered in
// order. When to read, write, compute and finish is StreamFlow's to decide.
template <typename Request>
class StreamReactor final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>,
                            private StreamFlow {
 public:
  StreamReactor(AttentionServiceImpl* service, grpc::CallbackServerContext* context,
                const char* rpc)
      : StreamFlow(service->limits().max_stream_in_flight, service->limits().read_guard),
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
    if (MemoryBudget* budget = service_->limits().memory_budget) budget->Freed(kStreamStateBytes);
  }

  void OnReadDone(bool ok) override {
    // The flow starts no other read before this one is reported, so incoming_
    // is parsed (it may be --max-message-mb large) outside the flow's lock.
    const auto bytes = ok ? static_cast<int64_t>(incoming_.Length()) : 0;
    std::shared_ptr<Item> item;
    if (ok) {
      item = std::make_shared<Item>(service_->limits().memory_budget);
      Admission& a = item->admission;
      const absl::Status admitted = service_->Admit(rpc_, peer_, messages_++, &incoming_, &a);
      if (!admitted.ok()) {  // answered like any failed message, its memory given back
        a.Release();
        item->response = StreamAnswer(a.request, admitted, {});
        item->answered = true;
        service_->metrics()->Finish(a.call, admitted, item->response.Length());
      }
    }
    ReadDone(item, bytes);
  }
  void OnWriteDone(bool ok) override { WriteDone(ok); }
  void OnCancel() override { Cancelled(); }
  void OnDone() override { delete this; }

 private:
  using Admission = AttentionServiceImpl::Admission<Request>;
  // What it holds goes with it, once its response has been written.
  struct Item : Slot {
    explicit Item(MemoryBudget* budget) : admission(budget) {}
    Admission admission;
  };

  void IssueRead() override { this->StartRead(&incoming_); }
  void IssueWrite(const Slot& slot) override { this->StartWrite(&slot.response); }
  bool IssueCompute(const std::shared_ptr<Slot>& slot) override {
    auto item = std::static_pointer_cast<Item>(slot);
    Admission& a = item->admission;
    auto response = std::make_shared<grpc::ByteBuffer>();
    const bool queued =
        service_->Submit(std::shared_ptr<const Request>(item, &a.request), context_, cut(), &a.call,
                         response.get(), [this, item, response](const absl::Status& s) {
                           Admission& done = item->admission;
                           grpc::ByteBuffer answer = StreamAnswer(done.request, s, *response);
                           service_->metrics()->Finish(done.call, s, answer.Length());
                           Computed(item, answer);
                         });
    if (!queued) {
      a.Release();
      const absl::Status saturated = Saturated(service_->Waiting());
      item->response = StreamAnswer(a.request, saturated, {});
      service_->metrics()->Finish(a.call, saturated, item->response.Length());
    }
    return queued;
  }
  void IssueFinish(bool cut) override {
    if (ended_by_guard()) service_->metrics()->StreamEndedByGuard(rpc_);
    this->Finish(ended_by_guard() ? EndedByGuard()
                 : cut            ? grpc::Status(grpc::StatusCode::CANCELLED, "stream cancelled")
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

AttentionServiceImpl::AttentionServiceImpl(const ModelRegistry* models, Executor* executor,
                                           ServiceLimits limits, ServiceMetrics* metrics)
    : models_(models),
      executor_(executor),
      limits_(limits),
      metrics_(metrics),
      shares_(std::max(1, limits.max_queue / 4)),
      receive_gate_(limits.receive_slots, limits.receive_timeout_seconds > 0
                                              ? absl::Seconds(limits.receive_timeout_seconds)
                                              : absl::InfiniteDuration()) {
  if (limits_.batch_delay_us > 0) {
    Batcher::Options options;
    options.delay_us = limits_.batch_delay_us;
    options.max_size = limits_.batch_max_size;
    options.max_threads = executor_->threads_per_worker();
    options.max_request_memory_bytes = limits_.max_request_memory_bytes;
    options.budget = limits_.memory_budget;
    options.on_batch = [metrics](int size) { metrics->BatchStarted(size); };
    options.on_wait = [metrics](double seconds) { metrics->BatchWaited(seconds); };
    Batcher::Options decode = options;
    decode.on_batch = [metrics](int size) { metrics->DecodeBatchStarted(size); };
    batcher_ = std::make_unique<Batcher>(executor_, std::move(options));
    decode_batcher_ = std::make_unique<Batcher>(executor_, std::move(decode));
  }
  ServeAsStream<v1::AttentionRequest>(kAttentionMethod, "Attention");
  ServeAsStream<v1::SelfAttentionRequest>(kSelfAttentionMethod, "SelfAttention");
}

template <typename Request>
void AttentionServiceImpl::ServeAsStream(int method, const char* rpc) {
  auto handler = [this, rpc] {
    return new grpc::internal::CallbackBidiHandler<grpc::ByteBuffer, grpc::ByteBuffer>(
        [this, rpc](grpc::CallbackServerContext* context) {
          return new UnaryCallReactor<Request>(this, context, rpc);
        });
  };
  // MarkMethodStreamed makes the method a stream at the transport (each
  // call replaces the handler, so each gets its own), MarkMethodRawCallback
  // serves it on the callback API with raw bytes.
  MarkMethodStreamed(method, handler());
  MarkMethodRawCallback(method, handler());
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
  metrics_->Enqueued(call);
  const bool queued = executor_->TrySubmit(
      [this, request, context, cancelled, response, call, done = std::move(done)] {
        metrics_->ComputeBegins(call);
        const absl::Status s = Run(*request, context, cancelled, response);
        metrics_->ComputeEnds(call, s);
        done(s);
      });
  if (!queued) metrics_->EnqueueFailed(call);
  return queued;
}

template <typename Request>
std::optional<bool> AttentionServiceImpl::SubmitBatched(
    std::shared_ptr<const Request> request, grpc::CallbackServerContext* context,
    const std::atomic<bool>* cancelled, CallRecord* call, grpc::ByteBuffer* response,
    const std::function<void(const absl::Status&)>& done) {
  struct Batched {
    std::shared_ptr<const Request> request;  // the views of `call` point into it
    PreparedCall call;
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
        computed.ok() ? Encode(&*state->outputs, state->call, state->request->id(), response)
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
  options.max_work = limits_.max_request_work;
  if (context != nullptr) {
    options.check = [context, cancelled] { return CheckAlive(context, cancelled); };
  }
  return options;
}

template <typename Request>
absl::Status AttentionServiceImpl::Admit(const char* rpc, const std::string& peer,
                                         int64_t stream_message, grpc::ByteBuffer* received,
                                         Admission<Request>* admission) {
  CallRecord& call = admission->call;
  const auto bytes = static_cast<int64_t>(received->Length());
  call = metrics_->Begin(rpc, peer, bytes);
  call.stream_message = stream_message;
  absl::Status s = admission->held.Add(2 * bytes);
  if (!s.ok()) {
    call.refusal = CallRecord::Refusal::kMemoryBudget;
    admission->request.set_id(PeekRequestId(*received, kIdField<Request>));  // for the answer
  }
  if (s.ok()) s = ParseRequest(*received, &admission->request);
  // Once parsed, the received bytes are not needed: a queued request is held
  // once, not twice.
  received->Clear();
  admission->held.Shrink(bytes);
  if (!s.ok()) return s;
  DescribeRequest(admission->request, &call);
  absl::StatusOr<int64_t> planned =
      PlanCall(admission->request, *models_, Options(nullptr, nullptr), limits_.max_message_bytes);
  s = planned.ok() ? admission->held.Add(*planned) : planned.status();
  if (s.code() == absl::StatusCode::kResourceExhausted) {
    call.refusal = planned.ok()                           ? CallRecord::Refusal::kMemoryBudget
                   : IsWorkLimitRefusal(planned.status()) ? CallRecord::Refusal::kWorkLimit
                                                          : CallRecord::Refusal::kMemoryLimit;
  }
  if (!s.ok()) return s;
  // The last quarter of the queue is kept for connections below their share.
  const bool busy = 4 * static_cast<int64_t>(Waiting()) >= 3 * limits_.max_queue;
  s = shares_.Enter(peer, busy, &admission->ticket);
  if (!s.ok()) call.refusal = CallRecord::Refusal::kConnectionShare;
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
    PreparedCall call;
    if (absl::Status s = PrepareCall(request, *models_, &call); !s.ok()) return s;
    if (test_compute_delay_ms_ > 0) {  // test seam: a computation that stalls
      std::this_thread::sleep_for(std::chrono::milliseconds(test_compute_delay_ms_));
    }
    return ComputeResponse(call, Options(context, cancelled), request.id(), response);
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
void AttentionServiceImpl::ServeUnary(const char* rpc, grpc::CallbackServerContext* context,
                                      grpc::ByteBuffer* received,
                                      const std::shared_ptr<Admission<Request>>& admission,
                                      grpc::ByteBuffer* response,
                                      std::function<void(const absl::Status&)> answer) {
  absl::Status admitted = Admit(rpc, context->peer(), -1, received, admission.get());
  if (admitted.ok()) {
    const bool queued =
        Submit<Request>(std::shared_ptr<const Request>(admission, &admission->request), context,
                        nullptr, &admission->call, response, answer);
    if (queued) return;
    admitted = Saturated(Waiting());
  }
  answer(admitted);
}

template <typename Request>
absl::Status AttentionServiceImpl::TEST_ServeUnary(const char* rpc, grpc::ByteBuffer received,
                                                   grpc::ByteBuffer* response) {
  Admission<Request> admission(limits_.memory_budget);
  absl::Status s = Admit(rpc, "test", -1, &received, &admission);
  if (s.ok()) {
    grpc::CallbackServerContext context;  // no deadline
    const std::atomic<bool> cancelled{false};
    metrics_->Enqueued(&admission.call);
    metrics_->ComputeBegins(&admission.call);
    s = Run(admission.request, &context, &cancelled, response);
    metrics_->ComputeEnds(&admission.call, s);
  }
  metrics_->Finish(admission.call, s, s.ok() ? static_cast<int64_t>(response->Length()) : 0);
  return s;
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* AttentionServiceImpl::StreamAttention(
    grpc::CallbackServerContext* context) {
  return new StreamReactor<v1::AttentionRequest>(this, context, "StreamAttention");
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>*
AttentionServiceImpl::StreamSelfAttention(grpc::CallbackServerContext* context) {
  return new StreamReactor<v1::SelfAttentionRequest>(this, context, "StreamSelfAttention");
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* AttentionServiceImpl::InferCall(
    grpc::CallbackServerContext* context) {
  return new UnaryCallReactor<inference::ModelInferRequest>(this, context, "ModelInfer");
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* AttentionServiceImpl::InferStream(
    grpc::CallbackServerContext* context) {
  return new StreamReactor<inference::ModelInferRequest>(this, context, "ModelStreamInfer");
}

grpc::ServerUnaryReactor* AttentionServiceImpl::ListModels(grpc::CallbackServerContext* context,
                                                           const v1::ListModelsRequest*,
                                                           v1::ListModelsResponse* response) {
  for (const ModelRegistry::Entry& e : models_->All()) {
    const Model* m = e.model.get();
    v1::ModelInfo* info = response->add_models();
    info->set_version(e.version);
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
  l->set_max_sequence_tokens(limits_.max_sequence_tokens);
  l->set_max_sequences_per_stream(limits_.max_sequences_per_stream);
  response->set_native_bfloat16(EffectivePrecision(Precision::kBFloat16) == Precision::kBFloat16);
  grpc::ServerUnaryReactor* reactor = new UnaryReactor(this);
  metrics_->Finish(metrics_->Begin("ListModels", context->peer(), 0), absl::OkStatus(),
                   static_cast<int64_t>(response->ByteSizeLong()));
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

// The request types the fuzzers serve (tests/fuzz/fuzz_request.cc).
template absl::Status AttentionServiceImpl::TEST_ServeUnary<v1::AttentionRequest>(
    const char*, grpc::ByteBuffer, grpc::ByteBuffer*);
template absl::Status AttentionServiceImpl::TEST_ServeUnary<v1::SelfAttentionRequest>(
    const char*, grpc::ByteBuffer, grpc::ByteBuffer*);
template absl::Status AttentionServiceImpl::TEST_ServeUnary<inference::ModelInferRequest>(
    const char*, grpc::ByteBuffer, grpc::ByteBuffer*);

}  // namespace server
}  // namespace attention
