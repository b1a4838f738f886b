// DecodeSequences (server/decode_stream.h): the sequences of one StreamDecode
// stream, their positions, limits, idle expiry and share of the memory budget.
#include <algorithm>
#include <exception>
#include <memory>
#include <new>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/guard.h"
#include "server/decode_stream.h"

namespace attention {
namespace server {
namespace {

constexpr size_t kExpiredNames = 1024;

std::string Quoted(const std::string& name) { return absl::StrCat("sequence '", name, "'"); }

}  // namespace

DecodeSequences::DecodeSequences(DecodeLimits limits, MemoryBudget* budget, ServiceMetrics* metrics)
    : limits_(limits), budget_(budget), metrics_(metrics) {}

DecodeSequences::~DecodeSequences() { Clear(); }

void DecodeSequences::Free(Map::iterator it, bool expired, bool reported) {
  if (reported) metrics_->DecodeHeld(-1, -it->second.held.bytes());
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

void DecodeSequences::ExpireIdle(absl::Time now) {
  absl::MutexLock lock(&mu_);
  for (auto it = sequences_.begin(); it != sequences_.end();) {
    auto next = std::next(it);
    if (!it->second.busy && now - it->second.used >= limits_.idle) Free(it, true);
    it = next;
  }
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
  absl::StatusOr<std::unique_ptr<Message>> message = Begin(request, models, options, step);
  if (!message.ok()) return message.status();
  absl::Status computed;
  if ((*message)->computes()) {
    computed = DecodeStep((*message)->args(), (*message)->cache(), options, (*message)->outputs());
  }
  return End(*std::move(message), computed, response);
}

absl::Status DecodeSequences::CheckPosition(const v1::DecodeRequest& request,
                                            Map::iterator it) const {
  const std::string& name = request.sequence();
  if (it != sequences_.end() && it->second.busy) {
    return absl::FailedPreconditionError(absl::StrCat(
        Quoted(name), ": a message of it is computing; send the next once it is answered"));
  }
  const int64_t held = it == sequences_.end() ? 0 : it->second.cache->length();
  if (request.position() == held) return absl::OkStatus();
  if (it == sequences_.end() && WasExpired(name)) {
    return absl::FailedPreconditionError(absl::StrCat(
        Quoted(name), ": freed after ", absl::FormatDuration(limits_.idle),
        " untouched (--sequence-idle-seconds); start it again at position 0 with its tokens"));
  }
  if (it == sequences_.end()) {
    return absl::FailedPreconditionError(
        absl::StrCat("position: ", request.position(), ", but this stream holds no ", Quoted(name),
                     " (a sequence starts at position 0); nothing was changed"));
  }
  return absl::FailedPreconditionError(
      absl::StrCat("position: ", request.position(), ", but ", Quoted(name), " holds ", held,
                   " keys; nothing was changed (was a message lost, repeated or reordered?)"));
}

absl::StatusOr<std::unique_ptr<DecodeSequences::Message>> DecodeSequences::Begin(
    const v1::DecodeRequest& request, const ModelRegistry& models, const ComputeOptions& options,
    Reservation* step) {
  absl::MutexLock lock(&mu_);
  auto it = sequences_.find(request.sequence());
  if (it != sequences_.end() && !it->second.busy && absl::Now() - it->second.used >= limits_.idle) {
    Free(it, true);
    it = sequences_.end();
  }
  if (absl::Status s = CheckPosition(request, it); !s.ok()) return s;
  // Nothing may escape: the stream's next messages wait for this one's answer.
  // (No GuardStatus lambda here: it would hide mu_ from the thread-safety
  // analysis.)
  std::unique_ptr<Message> message;
  absl::Status s;
  try {
    message.reset(new Message(DType::kFloat32));
    s = Plan(request, models, options, it, step, message.get());
  } catch (const std::bad_alloc&) {
    s = absl::ResourceExhaustedError("out of memory planning the message");
  } catch (const std::exception& e) {
    s = absl::InternalError(e.what());
  }
  if (!s.ok()) return s;
  return message;
}

absl::Status DecodeSequences::Plan(const v1::DecodeRequest& request, const ModelRegistry& models,
                                   const ComputeOptions& options, Map::iterator it,
                                   Reservation* step, Message* message) {
  PreparedCall& call = message->call_;
  if (absl::Status s = PrepareCall(request, models, &call); !s.ok()) return s;
  // A sequence keeps the model version it started with (a model replaced
  // meanwhile serves new sequences): a message repeating the model's name
  // gets the sequence's version.
  if (it != sequences_.end() && call.model != nullptr && it->second.model != nullptr &&
      call.model->info().name == it->second.model->info().name) {
    call.model = it->second.model;
    call.args.projection = &call.model->weights();
  }
  message->outputs_ = ResponseOutputs(call.output_dtype);
  message->sequence_ = request.sequence();
  message->id_ = request.id();
  message->end_ = request.end();
  const bool fresh = it == sequences_.end();
  if (!request.has_input() && !request.has_query() && !request.has_key() &&
      !request.has_value()) {  // only ends the sequence (PrepareCall refused it without `end`)
    if (!fresh) it->second.busy = true;
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
             .emplace(request.sequence(),
                      Sequence{std::make_unique<SequenceCache>(plan->shape), Reservation(budget_),
                               absl::Now(), false, call.model})
             .first;
  }
  if (absl::Status s = it->second.held.Add(plan->append_bytes); !s.ok()) {
    if (fresh) Free(it, false, /*reported=*/false);
    return s;
  }
  message->fresh_ = fresh;
  it->second.busy = true;
  message->cache_ = it->second.cache.get();
  message->plan_ = *std::move(plan);
  return absl::OkStatus();
}

absl::Status DecodeSequences::End(std::unique_ptr<Message> message, absl::Status computed,
                                  grpc::ByteBuffer* response) {
  absl::MutexLock lock(&mu_);
  auto it = sequences_.find(message->sequence_);
  if (it == sequences_.end()) {  // an end-only message for a sequence it did not hold
    return GuardStatus([&] {
      *response = message->outputs_.Encode(message->id_);
      return absl::OkStatus();
    });
  }
  Sequence& seq = it->second;
  seq.busy = false;
  if (!message->computes()) {  // only ends the sequence
    Free(it, false);
    return GuardStatus([&] {
      *response = message->outputs_.Encode(message->id_);
      return absl::OkStatus();
    });
  }
  if (!computed.ok()) {
    if (message->fresh_) {
      Free(it, false, /*reported=*/false);
    } else {
      seq.held.Shrink(seq.held.bytes() - seq.cache->bytes());  // what the append did not keep
    }
    return computed;
  }
  if (message->fresh_) metrics_->DecodeHeld(1, 0);
  metrics_->DecodeHeld(0, message->plan_.append_bytes);
  metrics_->DecodeAppended(message->plan_.new_keys);
  seq.used = absl::Now();
  int64_t length = seq.cache->length();
  if (message->end_) {
    Free(it, false);
    length = 0;
  }
  const Precision precision =
      message->plan_.shape.bfloat16 ? Precision::kBFloat16 : Precision::kFloat32;
  return GuardStatus([&] {
    *response = message->outputs_.Encode(message->id_, precision, length);
    return absl::OkStatus();
  });
}

}  // namespace server
}  // namespace attention
