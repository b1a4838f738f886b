#include "server/decode_stream.h"

#include <algorithm>
#include <exception>
#include <new>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/guard.h"
#include "server/prepared_call.h"
#include "server/response.h"
#include "server/service.h"
#include "server/stream_flow.h"

namespace attention {
namespace server {
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
      : StreamFlow(service->limits().max_stream_in_flight, service->limits().read_guard),
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
    const auto bytes = ok ? static_cast<int64_t>(incoming_.Length()) : 0;
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
    ReadDone(item, bytes);
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
    std::unique_ptr<DecodeSequences::Message> message;  // begun, until answered
    bool computing = false;                             // in the metrics' computing requests
    bool saturated = false;                             // refused for a full queue
  };

  void ComputeBegins(Item* item) {
    service_->metrics()->ComputeBegins(&item->call);
    item->computing = true;
  }

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

  // A message computes once no earlier message of its sequence waits or
  // computes; one that starts a sequence (position 0) waits for every
  // earlier message (the stream's count of sequences is then what its
  // client sent before it), and the messages after it wait for it.
  bool IssueCompute(const std::shared_ptr<Slot>& slot) override {
    auto item = std::static_pointer_cast<Item>(slot);
    service_->metrics()->Enqueued(&item->call);
    {
      absl::MutexLock lock(&chain_mu_);
      waiting_.push_back(item);
      if (!Ready(waiting_.size() - 1)) return true;
      waiting_.pop_back();
      Starting(*item);
    }
    // Answered at once (refused, or nothing to compute): no later message
    // waits for it yet.
    return Launch(item, &item->response);
  }

  // Whether waiting_[index] may start.
  bool Ready(size_t index) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(chain_mu_) {
    const v1::DecodeRequest& r = waiting_[index]->request;
    if (r.position() == 0 && (running_ > 0 || index > 0)) return false;
    if (busy_.count(r.sequence()) > 0) return false;
    for (size_t i = 0; i < index; ++i) {
      const v1::DecodeRequest& earlier = waiting_[i]->request;
      if (earlier.position() == 0 || earlier.sequence() == r.sequence()) return false;
    }
    return true;
  }
  void Starting(const Item& item) ABSL_EXCLUSIVE_LOCKS_REQUIRED(chain_mu_) {
    busy_.insert(item.request.sequence());
    ++running_;
  }
  void Stopped(const Item& item) ABSL_LOCKS_EXCLUDED(chain_mu_) {
    absl::MutexLock lock(&chain_mu_);
    busy_.erase(item.request.sequence());
    --running_;
  }

  absl::Status Saturated() const {
    return absl::ResourceExhaustedError(
        absl::StrCat("server is saturated: ", service_->Waiting(),
                     " requests already wait for compute; retry later or add replicas"));
  }

  // Starts `item` (marked Starting): without batching, a task that begins
  // and computes it (Compute); with batching, its message begun here and
  // queued in the decode batcher (one hop fewer). True when it will be
  // answered through Answered; false when it is answered already into
  // `answer` (refused, or nothing to compute), its sequence released.
  bool Launch(const std::shared_ptr<Item>& item, grpc::ByteBuffer* answer) {
    Batcher* batcher = service_->decode_batcher_.get();
    absl::Status s;
    try {
      if (batcher == nullptr) {
        if (service_->executor_->TrySubmit(
                [self = shared_from_this(), item] { self->Compute(item); })) {
          return true;
        }
        service_->metrics()->EnqueueFailed(&item->call);
        item->saturated = true;
        s = Saturated();
      } else {
        ComputeBegins(item.get());
        const ComputeOptions options = service_->Options(context_, cut());
        s = BeginMessage(item, options);
        if (s.ok() && item->message->computes()) {
          Batcher::Request r;
          r.args = &item->message->args();
          r.sequence = item->message->cache();
          r.outputs = item->message->outputs();
          r.check = options.check;
          r.done = [self = shared_from_this(), item](const absl::Status& status) {
            self->Answered(item, status);
          };
          if (batcher->Submit(std::move(r))) return true;
          item->saturated = true;
          s = Saturated();
        }
      }
    } catch (...) {
      context_->TryCancel();
      s = absl::InternalError("the message could not be started");
    }
    *answer = Conclude(item.get(), s);
    Stopped(*item);
    return false;
  }

  // Begins `item`'s message (DecodeSequences::Begin) unless the stream was
  // cancelled.
  absl::Status BeginMessage(const std::shared_ptr<Item>& item, const ComputeOptions& options) {
    if (cut()->load()) return absl::CancelledError("the stream was cancelled");
    absl::StatusOr<std::unique_ptr<DecodeSequences::Message>> begun =
        sequences_.Begin(item->request, *service_->models_, options, &item->held);
    if (!begun.ok()) return begun.status();
    item->message = *std::move(begun);
    return absl::OkStatus();
  }

  // On the executor (no batching): begins and computes `item`, then answers it.
  void Compute(const std::shared_ptr<Item>& item) {
    absl::Status s;
    try {
      ComputeBegins(item.get());
      const ComputeOptions options = service_->Options(context_, cut());
      s = BeginMessage(item, options);
      if (s.ok() && item->message->computes()) {
        DecodeSequences::Message& m = *item->message;
        s = DecodeStep(m.args(), m.cache(), options, m.outputs());
      }
    } catch (...) {
      context_->TryCancel();
      s = absl::InternalError("the message could not be computed");
    }
    Answered(item, s);
  }

  // `item`'s computation ended with `computed` (or it was refused): ends its
  // message (DecodeSequences::End) and returns its answer, the call recorded.
  // Where even an error's answer cannot be made, the stream is cancelled.
  grpc::ByteBuffer Conclude(Item* item, const absl::Status& computed) {
    grpc::ByteBuffer answer;
    try {
      ServiceMetrics* metrics = service_->metrics();
      absl::Status s = computed;
      if (item->message != nullptr) {
        s = sequences_.End(std::move(item->message), computed, &answer);
      }
      if (item->computing) metrics->ComputeEnds(&item->call, s);
      if (!s.ok()) {
        if (item->saturated) {
          item->call.refusal = CallRecord::Refusal::kQueueFull;
        } else if (absl::StartsWith(s.message(), "memory budget")) {
          item->call.refusal = CallRecord::Refusal::kMemoryBudget;
        }
        item->held.Reset();
        answer = EncodeError(item->request.id(), s);
      }
      metrics->Finish(item->call, s, answer.Length());
    } catch (...) {
      context_->TryCancel();
    }
    return answer;
  }

  // `item` computed: answers it, then starts what waited for it.
  void Answered(const std::shared_ptr<Item>& item, const absl::Status& computed) {
    const grpc::ByteBuffer answer = Conclude(item.get(), computed);
    Stopped(*item);
    StartReady();
    Computed(item, answer);
  }

  // Starts the waiting messages that may start now; those answered at once
  // are answered so.
  void StartReady() {
    while (true) {
      std::vector<std::shared_ptr<Item>> ready;
      {
        absl::MutexLock lock(&chain_mu_);
        for (size_t i = 0; i < waiting_.size();) {
          if (!Ready(i)) {
            ++i;
            continue;
          }
          Starting(*waiting_[i]);
          ready.push_back(std::move(waiting_[i]));
          waiting_.erase(waiting_.begin() + static_cast<std::ptrdiff_t>(i));
        }
      }
      bool answered_any = false;
      for (const std::shared_ptr<Item>& next : ready) {
        grpc::ByteBuffer answer;
        if (Launch(next, &answer)) continue;
        answered_any = true;
        Computed(next, answer);
      }
      if (!answered_any) return;
    }
  }

  void IssueFinish(bool cut) override {
    sequences_.Clear();  // their memory back at once
    if (ended_by_guard()) service_->metrics()->StreamEndedByGuard(kRpc);
    Finish(ended_by_guard() ? EndedByGuard()
           : cut            ? grpc::Status(grpc::StatusCode::CANCELLED, "stream cancelled")
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
  // Messages read, waiting for an earlier one (in the order read).
  std::deque<std::shared_ptr<Item>> waiting_ ABSL_GUARDED_BY(chain_mu_);
  std::set<std::string> busy_ ABSL_GUARDED_BY(chain_mu_);  // sequences of those computing
  int running_ ABSL_GUARDED_BY(chain_mu_) = 0;             // messages computing
};

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* AttentionServiceImpl::StreamDecode(
    grpc::CallbackServerContext* context) {
  auto reactor = std::make_shared<DecodeReactor>(this, context);
  reactor->Start();
  return reactor.get();
}

}  // namespace server
}  // namespace attention
