// StreamDecode: a bidirectional stream that keeps its sequences' keys and
// values between messages, so that a decode step sends only its new tokens
// (docs/api.md, "StreamDecode"). Nothing outlives the stream: its sequences
// are freed when it ends, however it ends.
//
// - DecodeSequences: the sequences of one stream (core/decode.h's
//   SequenceCache each) and their share of the memory budget: every byte a
//   sequence holds is reserved before it is appended; a refused message
//   changes nothing.
// - A stream's messages are computed one at a time, in order (each may
//   depend on the one before), on the service's executor; reading, writing
//   and finishing are StreamFlow's (server/stream_flow.h).
// - DecodeStreams: the open decode streams of a service, so that idle
//   sequences are freed (--sequence-idle-seconds) while their stream waits,
//   and a drain ends every stream with UNAVAILABLE once what it read is
//   answered.
#ifndef SERVER_DECODE_STREAM_H_
#define SERVER_DECODE_STREAM_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "attention/v1/attention.pb.h"
#include "core/decode.h"
#include "grpcpp/support/byte_buffer.h"
#include "server/memory_budget.h"
#include "server/model_registry.h"
#include "server/prepared_call.h"
#include "server/response.h"
#include "server/service_metrics.h"

namespace attention {
namespace server {

struct DecodeLimits {
  int64_t max_sequence_tokens = 32768;
  int max_sequences_per_stream = 64;
  absl::Duration idle = absl::Seconds(600);
  int64_t max_message_bytes = int64_t{256} << 20;  // the largest response
};

// The sequences of one stream. Thread-safe: messages of different sequences
// may compute at once, the idle sweep runs beside them.
//
// A message is begun (Begin: checked, planned, its memory reserved, its
// sequence marked in use), computed (DecodeStep, or DecodeSteps with other
// streams' messages: the decode batcher), then ended (End: the bookkeeping
// and the response). Serve does all three.
class DecodeSequences {
 public:
  // A message between Begin and End. Views point into the request, which must
  // outlive it.
  class Message {
   public:
    // False: the message only ends its sequence (nothing to compute).
    bool computes() const { return cache_ != nullptr; }
    const AttentionArgs& args() const { return call_.args; }
    SequenceCache* cache() const { return cache_; }
    OutputBuffers* outputs() { return &outputs_; }

   private:
    friend class DecodeSequences;
    explicit Message(DType output_dtype) : outputs_(output_dtype) {}
    std::string sequence_, id_;
    bool fresh_ = false, end_ = false;
    PreparedCall call_;
    DecodePlan plan_;
    SequenceCache* cache_ = nullptr;
    ResponseOutputs outputs_;
  };

  // `budget` (may be null: no budget) and `metrics` must outlive this.
  DecodeSequences(DecodeLimits limits, MemoryBudget* budget, ServiceMetrics* metrics);
  ~DecodeSequences();  // frees every sequence
  DecodeSequences(const DecodeSequences&) = delete;
  DecodeSequences& operator=(const DecodeSequences&) = delete;

  // One message, begun, computed and ended (see the class comment).
  absl::Status Serve(const v1::DecodeRequest& request, const ModelRegistry& models,
                     const ComputeOptions& options, Reservation* step, grpc::ByteBuffer* response)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Checks the message's position against its sequence, validates it,
  // reserves what the append adds (the sequence's share) and the step's own
  // memory (`step`: the message's share, given back once its response is
  // written), and marks its sequence in use until End. A refused message
  // changes nothing. Errors: FAILED_PRECONDITION (position, an expired
  // sequence, a message of the sequence computing already), INVALID_ARGUMENT,
  // NOT_FOUND (model), RESOURCE_EXHAUSTED (limits, budget).
  absl::StatusOr<std::unique_ptr<Message>> Begin(const v1::DecodeRequest& request,
                                                 const ModelRegistry& models,
                                                 const ComputeOptions& options, Reservation* step)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Ends a begun message whose computation returned `computed` (OK for one
  // that computes nothing): on success, counts it, frees its sequence when
  // it asked to, and encodes the response into `response`; on failure, the
  // sequence is as before Begin (a sequence it made is freed). Returns the
  // message's status.
  absl::Status End(std::unique_ptr<Message> message, absl::Status computed,
                   grpc::ByteBuffer* response) ABSL_LOCKS_EXCLUDED(mu_);

  // Frees the sequences untouched since `now - idle` (not those in use).
  void ExpireIdle(absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);
  // Frees every sequence (none may be in use).
  void Clear() ABSL_LOCKS_EXCLUDED(mu_);

  int sequences() const ABSL_LOCKS_EXCLUDED(mu_);
  // Keys `sequence` holds (0 when it holds none).
  int64_t Length(const std::string& sequence) const ABSL_LOCKS_EXCLUDED(mu_);
  int64_t held_bytes() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Sequence {
    std::unique_ptr<SequenceCache> cache;
    Reservation held;  // the cache's blocks
    absl::Time used;
    bool busy = false;  // a message of it is between Begin and End
    // Its model (the version it started with; its weights are the cache
    // shape's projection): null for plain attention.
    std::shared_ptr<const Model> model;
  };
  using Map = std::map<std::string, Sequence>;

  // Frees a sequence; `reported`: its bytes and itself are in the metrics
  // (a sequence is reported once its first message succeeded).
  void Free(Map::iterator it, bool expired, bool reported = true)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool WasExpired(const std::string& name) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CheckPosition(const v1::DecodeRequest& request, Map::iterator it) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Plan(const v1::DecodeRequest& request, const ModelRegistry& models,
                    const ComputeOptions& options, Map::iterator it, Reservation* step,
                    Message* message) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const DecodeLimits limits_;
  MemoryBudget* const budget_;
  ServiceMetrics* const metrics_;
  mutable absl::Mutex mu_;
  Map sequences_ ABSL_GUARDED_BY(mu_);
  // Hashes of the names of recently expired sequences, at most 1024.
  std::deque<size_t> expired_ ABSL_GUARDED_BY(mu_);
};

// The open decode streams of a service (anything with ExpireIdle and
// Drain), held weakly: a stream unregisters by expiring.
class DecodeStream {
 public:
  virtual ~DecodeStream() = default;
  virtual void ExpireIdle(absl::Time now) = 0;
  virtual void Drain() = 0;
};

class DecodeStreams {
 public:
  // Sweeps idle sequences every `period` on a thread of its own.
  explicit DecodeStreams(absl::Duration period = absl::Seconds(1));
  ~DecodeStreams();  // stops the sweep
  DecodeStreams(const DecodeStreams&) = delete;
  DecodeStreams& operator=(const DecodeStreams&) = delete;

  // A stream opened (drained at once when the service drains already).
  void Add(const std::shared_ptr<DecodeStream>& stream) ABSL_LOCKS_EXCLUDED(mu_);
  // Drains every open stream, and those opened from now on.
  void DrainAll() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  std::vector<std::shared_ptr<DecodeStream>> Open() ABSL_LOCKS_EXCLUDED(mu_);
  void Sweep(absl::Duration period) ABSL_LOCKS_EXCLUDED(mu_);

  absl::Mutex mu_;
  std::vector<std::weak_ptr<DecodeStream>> streams_ ABSL_GUARDED_BY(mu_);
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread sweeper_;
};

}  // namespace server
}  // namespace attention

#endif  // SERVER_DECODE_STREAM_H_
