#include "server/decode_stream.h"

#include <algorithm>
#include <exception>
#include <new>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/guard.h"
#include "server/prepared_call.h"
#include "server/response.h"
#include "server/service.h"
#include "server/stream_flow.h"

namespace attention {
namespace server {
namespace {

constexpr size_t kExpiredNames = 1024;

std::string Quoted(const std::string& name) { return absl::StrCat("sequence '", name, "'"); }

}  // namespace

DecodeSequences::DecodeSequences(DecodeLimits limits, MemoryBudget* budget, ServiceMetrics* metrics)
    : limits_(limits), budget_(budget), metrics_(metrics) {}

DecodeSequences::~DecodeSequences() { Clear(); }

void DecodeSequences::Free(Map::iterator it, bool expired) {
  metrics_->DecodeHeld(-1, -it->second.held.bytes());
  if (expired) {
    metrics_->DecodeExpired();
    expired_.push_back(std::hash<std::string>()(it->first));
    if (expired_.size() > kExpiredNames) expired_.pop_front();
  }
  sequences_.erase(it);  // its reservation goes back to the budget
}

bool DecodeSequences::WasExpired(const std::string& name) const {
  return std::find(expired_.begin(), expired_.end(), std::hash<std::string>()(name)) !=
         expired_.end();
}

void DecodeSequences::Clear() {
  absl::MutexLock lock(&mu_);
  while (!sequences_.empty()) Free(sequences_.begin(), false);
}

bool DecodeSequences::ExpireIdle(absl::Time now) {
  if (!mu_.TryLock()) return false;
  for (auto it = sequences_.begin(); it != sequences_.end();) {
    auto next = std::next(it);
    if (now - it->second.used >= limits_.idle) Free(it, true);
    it = next;
  }
  mu_.Unlock();
  return true;
}

int DecodeSequences::sequences() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(sequences_.size());
}

int64_t DecodeSequences::Length(const std::string& sequence) const {
  absl::MutexLock lock(&mu_);
  auto it = sequences_.find(sequence);
  return it == sequences_.end() ? 0 : it->second.cache->length();
}

int64_t DecodeSequences::held_bytes() const {
  absl::MutexLock lock(&mu_);
  int64_t bytes = 0;
  for (const auto& [name, s] : sequences_) bytes += s.held.bytes();
  return bytes;
}

absl::Status DecodeSequences::Serve(const v1::DecodeRequest& request, const ModelRegistry& models,
                                    const ComputeOptions& options, Reservation* step,
                                    grpc::ByteBuffer* response) {
  absl::MutexLock lock(&mu_);
  const std::string& name = request.sequence();
  auto it = sequences_.find(name);
  if (it != sequences_.end() && absl::Now() - it->second.used >= limits_.idle) {
    Free(it, true);
    it = sequences_.end();
  }
  const int64_t held = it == sequences_.end() ? 0 : it->second.cache->length();
  if (request.position() != held) {
    if (it == sequences_.end() && WasExpired(name)) {
      return absl::FailedPreconditionError(absl::StrCat(
          Quoted(name), ": freed after ", absl::FormatDuration(limits_.idle),
          " untouched (--sequence-idle-seconds); start it again at position 0 with its tokens"));
    }
    if (it == sequences_.end()) {
      return absl::FailedPreconditionError(
          absl::StrCat("position: ", request.position(), ", but this stream holds no ",
                       Quoted(name), " (a sequence starts at position 0); nothing was changed"));
    }
    return absl::FailedPreconditionError(
        absl::StrCat("position: ", request.position(), ", but ", Quoted(name), " holds ", held,
                     " keys; nothing was changed (was a message lost, repeated or reordered?)"));
  }
  // Nothing may escape: the stream's next messages wait for this one's answer.
  try {
    return Step(request, models, options, it, step, response);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("out of memory computing the message");
  } catch (const std::exception& e) {
    return absl::InternalError(e.what());
  }
}

absl::Status DecodeSequences::Step(const v1::DecodeRequest& request, const ModelRegistry& models,
                                   const ComputeOptions& options, Map::iterator it,
                                   Reservation* step, grpc::ByteBuffer* response) {
  PreparedCall call;
  if (absl::Status s = PrepareCall(request, models, &call); !s.ok()) return s;
  const bool fresh = it == sequences_.end();
  if (!request.has_input() && !request.has_query() && !request.has_key() &&
      !request.has_value()) {  // only ends the sequence (PrepareCall refused it without `end`)
    if (!fresh) Free(it, false);
    ResponseOutputs none(DType::kFloat32);
    *response = none.Encode(request.id());
    return absl::OkStatus();
  }
  if (fresh && static_cast<int>(sequences_.size()) >= limits_.max_sequences_per_stream) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "sequence: this stream holds ", sequences_.size(),
        " sequences, the most --max-sequences-per-stream allows; end one (end: true) first"));
  }
  SequenceCache* cache = fresh ? nullptr : it->second.cache.get();
  absl::StatusOr<DecodePlan> plan = PlanDecode(call.args, cache, options);
  if (!plan.ok()) return plan.status();
  if (plan->length_after > limits_.max_sequence_tokens) {
    return absl::ResourceExhaustedError(
        absl::StrCat(Quoted(request.sequence()), ": would hold ", plan->length_after,
                     " keys, over --max-sequence-tokens ", limits_.max_sequence_tokens,
                     "; end it and start another"));
  }
  const double out_bytes = ShapeProduct<double>(plan->output_shape) * DTypeSize(call.output_dtype);
  const double weight_bytes =
      plan->weights_shape.empty() ? 0 : 4 * ShapeProduct<double>(plan->weights_shape);
  if (out_bytes + weight_bytes + 1024 > static_cast<double>(limits_.max_message_bytes)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the response would be over --max-message-mb (output ", ShapeString(plan->output_shape),
        ", weights ", ShapeString(plan->weights_shape), "); ask for fewer weights"));
  }
  if (absl::Status s = step->Add(plan->memory_bytes + static_cast<int64_t>(out_bytes)); !s.ok()) {
    return s;
  }
  if (fresh) {
    it = sequences_
             .emplace(request.sequence(), Sequence{std::make_unique<SequenceCache>(plan->shape),
                                                   Reservation(budget_), absl::Now()})
             .first;
    metrics_->DecodeHeld(1, 0);
  }
  Sequence& seq = it->second;
  absl::Status s = seq.held.Add(plan->append_bytes);
  ResponseOutputs outputs(call.output_dtype);
  if (s.ok()) s = DecodeStep(call.args, seq.cache.get(), options, &outputs);
  if (!s.ok()) {
    if (fresh) {
      seq.held.Reset();  // never reported as held
      Free(it, false);
    } else {
      seq.held.Shrink(seq.held.bytes() - seq.cache->bytes());  // what the append did not keep
    }
    return s;
  }
  metrics_->DecodeHeld(0, plan->append_bytes);
  metrics_->DecodeAppended(plan->new_keys);
  seq.used = absl::Now();
  int64_t length = seq.cache->length();
  if (request.end()) {
    Free(it, false);
    length = 0;
  }
  const Precision precision = plan->shape.bfloat16 ? Precision::kBFloat16 : Precision::kFloat32;
  return GuardStatus([&] {
    *response = outputs.Encode(request.id(), precision, length);
    return absl::OkStatus();
  });
}

DecodeStreams::DecodeStreams(absl::Duration period) : sweeper_([this, period] { Sweep(period); }) {}

DecodeStreams::~DecodeStreams() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  sweeper_.join();
}

void DecodeStreams::Add(const std::shared_ptr<DecodeStream>& stream) {
  bool drain = false;
  {
    absl::MutexLock lock(&mu_);
    streams_.erase(std::remove_if(streams_.begin(), streams_.end(),
                                  [](const std::weak_ptr<DecodeStream>& w) { return w.expired(); }),
                   streams_.end());
    streams_.push_back(stream);
    drain = draining_;
  }
  if (drain) stream->Drain();
}

std::vector<std::shared_ptr<DecodeStream>> DecodeStreams::Open() {
  std::vector<std::shared_ptr<DecodeStream>> open;
  absl::MutexLock lock(&mu_);
  for (const std::weak_ptr<DecodeStream>& w : streams_) {
    if (std::shared_ptr<DecodeStream> s = w.lock()) open.push_back(std::move(s));
  }
  return open;
}

void DecodeStreams::DrainAll() {
  {
    absl::MutexLock lock(&mu_);
    draining_ = true;
  }
  // Outside the lock: a stream that ends here unregisters by expiring.
  for (const std::shared_ptr<DecodeStream>& s : Open()) s->Drain();
}

void DecodeStreams::Sweep(absl::Duration period) {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_; };
      if (mu_.AwaitWithTimeout(absl::Condition(&stopping), period)) return;
    }
    const absl::Time now = absl::Now();
    for (const std::shared_ptr<DecodeStream>& s : Open()) s->ExpireIdle(now);
  }
}

// One StreamDecode stream. Owned by shared pointers: its own (dropped when
// gRPC is done with it), its computations' and the sweep's, so that none of
// them outlives it.
class DecodeReactor final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>,
                            public DecodeStream,
                            private StreamFlow,
                            public std::enable_shared_from_this<DecodeReactor> {
 public:
  DecodeReactor(AttentionServiceImpl* service, grpc::CallbackServerContext* context)
      : StreamFlow(service->limits().max_stream_in_flight),
        scope_(service),
        service_(service),
        context_(context),
        peer_(context->peer()),
        sequences_(Limits(service->limits()), service->limits().memory_budget, service->metrics()) {
    service_->metrics()->StreamOpened(kRpc);
  }
  ~DecodeReactor() override { service_->metrics()->StreamClosed(kRpc); }

  void Start() {
    self_ = shared_from_this();
    service_->decode_streams_.Add(self_);
    Begin();
  }

  void OnReadDone(bool ok) override {
    std::shared_ptr<Item> item;
    if (ok) {
      item = std::make_shared<Item>(service_->limits().memory_budget);
      if (absl::Status s = Admit(item.get()); !s.ok()) {
        item->held.Reset();
        item->response = EncodeError(item->request.id(), s);
        item->answered = true;
        service_->metrics()->Finish(item->call, s, item->response.Length());
      }
    }
    ReadDone(item);
  }
  void OnWriteDone(bool ok) override { WriteDone(ok); }
  void OnCancel() override { Cancelled(); }
  void OnDone() override {
    std::shared_ptr<DecodeReactor> last = std::move(self_);  // may delete this on return
  }

  void ExpireIdle(absl::Time now) override { sequences_.ExpireIdle(now); }
  void Drain() override { StreamFlow::Drain(); }

 private:
  static constexpr char kRpc[] = "StreamDecode";
  struct Item : Slot {
    explicit Item(MemoryBudget* budget) : held(budget) {}
    v1::DecodeRequest request;
    CallRecord call;
    Reservation held;  // the message, then its step's memory and response
  };

  static DecodeLimits Limits(const ServiceLimits& l) {
    DecodeLimits d;
    d.max_sequence_tokens = l.max_sequence_tokens;
    d.max_sequences_per_stream = l.max_sequences_per_stream;
    d.idle = absl::Seconds(l.sequence_idle_seconds);
    d.max_message_bytes = l.max_message_bytes;
    return d;
  }

  // The message's bytes in the budget (twice while parsing), parsed.
  absl::Status Admit(Item* item) {
    const auto bytes = static_cast<int64_t>(incoming_.Length());
    item->call = service_->metrics()->Begin(kRpc, peer_, bytes);
    item->call.stream_message = messages_++;
    absl::Status s = item->held.Add(2 * bytes);
    if (!s.ok()) {
      item->call.refusal = CallRecord::Refusal::kMemoryBudget;
      item->request.set_id(PeekRequestId(incoming_));
    }
    if (s.ok()) s = ParseRequest(incoming_, &item->request);
    incoming_.Clear();
    item->held.Shrink(bytes);
    if (s.ok()) DescribeRequest(item->request, &item->call);
    return s;
  }

  void IssueRead() override { StartRead(&incoming_); }
  void IssueWrite(const Slot& slot) override { StartWrite(&slot.response); }

  // One message at a time: the next waits for the one computing.
  bool IssueCompute(const std::shared_ptr<Slot>& slot) override {
    auto item = std::static_pointer_cast<Item>(slot);
    service_->metrics()->Enqueued(&item->call);
    absl::MutexLock lock(&chain_mu_);
    if (running_) {
      chain_.push_back(std::move(item));
      return true;
    }
    if (!Submit(item)) {
      item->held.Reset();
      item->response = Refused(item.get());
      return false;
    }
    running_ = true;
    return true;
  }

  bool Submit(const std::shared_ptr<Item>& item) {
    return service_->executor_->TrySubmit(
        [self = shared_from_this(), item] { self->Compute(item); });
  }

  grpc::ByteBuffer Refused(Item* item) {
    service_->metrics()->EnqueueFailed(&item->call);
    const absl::Status s = absl::ResourceExhaustedError(
        absl::StrCat("server is saturated: ", service_->Waiting(),
                     " requests already wait for compute; retry later or add replicas"));
    grpc::ByteBuffer answer = EncodeError(item->request.id(), s);
    service_->metrics()->Finish(item->call, s, answer.Length());
    return answer;
  }

  // Computes `item`, then starts the next message, then answers `item`:
  // Computed is always reached (the stream cannot finish while a computation
  // is pending). Where even an error's answer cannot be allocated, the stream
  // is cancelled instead.
  void Compute(const std::shared_ptr<Item>& item) {
    grpc::ByteBuffer answer;
    try {
      ServiceMetrics* metrics = service_->metrics();
      metrics->ComputeBegins(&item->call);
      absl::Status s = cut()->load() ? absl::CancelledError("the stream was cancelled")
                                     : sequences_.Serve(item->request, *service_->models_,
                                                        service_->Options(context_, cut()),
                                                        &item->held, &answer);
      metrics->ComputeEnds(&item->call, s);
      if (!s.ok()) {
        if (absl::StartsWith(s.message(), "memory budget")) {
          item->call.refusal = CallRecord::Refusal::kMemoryBudget;
        }
        item->held.Reset();
        answer = EncodeError(item->request.id(), s);
      }
      metrics->Finish(item->call, s, answer.Length());
    } catch (...) {
      context_->TryCancel();
    }
    StartNext();
    Computed(item, answer);
  }

  // The next message of the chain, if any: submitted, or answered as refused.
  void StartNext() {
    while (true) {
      std::shared_ptr<Item> next;
      {
        absl::MutexLock lock(&chain_mu_);
        if (chain_.empty()) {
          running_ = false;
          return;
        }
        next = std::move(chain_.front());
        chain_.pop_front();
      }
      grpc::ByteBuffer refused;
      try {
        if (Submit(next)) return;
        next->held.Reset();
        refused = Refused(next.get());
      } catch (...) {
        context_->TryCancel();
      }
      Computed(next, refused);
    }
  }

  void IssueFinish(bool cut) override {
    sequences_.Clear();  // their memory back at once
    Finish(cut ? grpc::Status(grpc::StatusCode::CANCELLED, "stream cancelled")
           : draining()
               ? grpc::Status(grpc::StatusCode::UNAVAILABLE,
                              "the server is draining: open a new stream (another replica) and "
                              "send each sequence's tokens again from position 0")
               : grpc::Status::OK);
  }

  AttentionServiceImpl::CallScope scope_;
  AttentionServiceImpl* const service_;
  grpc::CallbackServerContext* const context_;
  const std::string peer_;
  DecodeSequences sequences_;
  std::shared_ptr<DecodeReactor> self_;  // until gRPC is done with the stream
  int64_t messages_ = 0;                 // read so far (one read at a time)
  grpc::ByteBuffer incoming_;
  absl::Mutex chain_mu_;
  std::deque<std::shared_ptr<Item>> chain_ ABSL_GUARDED_BY(chain_mu_);
  bool running_ ABSL_GUARDED_BY(chain_mu_) = false;
};

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* AttentionServiceImpl::StreamDecode(
    grpc::CallbackServerContext* context) {
  auto reactor = std::make_shared<DecodeReactor>(this, context);
  reactor->Start();
  return reactor.get();
}

}  // namespace server
}  // namespace attention
