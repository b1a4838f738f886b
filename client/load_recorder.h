// attention-client load: the recorder, the ledger of a level of a load test.
// Every request sent is counted once by Sent() and settled exactly once, by
// Done() (as OK or as its error code), or by Lost() (a stream message never
// answered, or answered out of order); so sent = ok + errors when a level
// ends, LOST being one of the error codes. Latencies go into histograms:
// from the actual send always, and from the time the request was due (open
// loop: corrected for coordinated omission). --verify's share of the OK
// responses is checked against the workload's references.
//
//   Recorder rec(workload, /*verify_percent=*/10);
//   rec.Sent({due_us, sent_us});
//   rec.Done(status, &response, index, {due_us, sent_us, done_us});
//   rec.DoneSerialized(status, &response_bytes, index, {due_us, sent_us, done_us});
//   LoadResult r = rec.Snapshot();
//
// Thread-safe: the drivers call it from many threads at once.
#ifndef CLIENT_LOAD_RECORDER_H_
#define CLIENT_LOAD_RECORDER_H_

#include <atomic>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "client/load_report.h"
#include "client/load_workload.h"
#include "grpcpp/support/byte_buffer.h"

namespace attention {
namespace client {

// When one request was due, sent and answered: microseconds since its level
// began. due_us < 0 in closed loop, where a request is due when it is sent.
struct RequestTimes {
  double due_us = -1;
  double sent_us = 0;
  double done_us = 0;
};

// What a serialized AttentionResponse says besides its tensors, read
// without parsing or copying them.
struct ResponseHead {
  bool parsed = false;  // false: the bytes are not an AttentionResponse
  std::string id;
  grpc::Status status;  // its `error` (a failed stream message's); OK without one
};
ResponseHead ReadResponseHead(grpc::ByteBuffer* response);

// A ModelInferResponse's outputs as an AttentionResponse (for the checks).
v1::AttentionResponse FromModelInfer(const inference::ModelInferResponse& response);

class Recorder {
 public:
  // An open-loop request sent more than this late counts as behind schedule.
  static constexpr double kBehindScheduleUs = 1000;

  // `w` (its references and tolerance) must outlive the recorder;
  // `verify_percent` (0..100) of the OK responses are checked.
  Recorder(const Workload& w, double verify_percent) : w_(w), verify_(verify_percent / 100) {}

  // One request sent; with a due time (open loop), behind schedule when it
  // left more than kBehindScheduleUs after it.
  void Sent(const RequestTimes& t = {}) ABSL_LOCKS_EXCLUDED(mu_);

  // One request settled with `s`. `response` (nullptr for health checks) is
  // the response of pool entry `index`; a stream message's error inside an
  // OK status counts as that error. Records the latency done - sent, and
  // done - due when due_us >= 0.
  void Done(const grpc::Status& s, const v1::AttentionResponse* response, size_t index,
            const RequestTimes& t) ABSL_LOCKS_EXCLUDED(mu_);

  // The same for a response still serialized (a unary call's): read without
  // copying its tensors, and parsed only when --verify checks it, which
  // consumes `response`. Bytes that do not parse as an AttentionResponse
  // count as INTERNAL, as a stub's failure to parse them would.
  void DoneSerialized(const grpc::Status& s, grpc::ByteBuffer* response, size_t index,
                      const RequestTimes& t) ABSL_LOCKS_EXCLUDED(mu_);

  // `count` requests whose response never came, or came out of order: counted
  // as lost and as the error code LOST; `why` is kept when it is the first.
  void Lost(const std::string& why, int64_t count = 1) ABSL_LOCKS_EXCLUDED(mu_);

  // `count` retries of requests settled by Done(): counted apart, a request
  // stays one request however often it was retried.
  void Retried(int64_t count) ABSL_LOCKS_EXCLUDED(mu_);

  // A stream response that answered no outstanding message (not a request:
  // counted apart, and it fails the run like a lost one).
  void Unexpected(const std::string& why) ABSL_LOCKS_EXCLUDED(mu_);

  // A copy of the figures so far (for the progress line and the report).
  LoadResult Snapshot() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // Whether the next OK response (of a pool that has references) is one of
  // --verify's share: checks spread evenly, the n-th being checked when it
  // crosses a multiple of 1 / verify_.
  bool ShouldCheck();

  // Why `r` differs from `want` beyond the tolerance, or nullopt.
  std::optional<std::string> Check(const v1::AttentionResponse& r, const ReferenceResult& want);

  // Settles one request as `status` (the one a stream message carried
  // included) with `response_bytes` when OK; `checked` says whether --verify
  // checked it, and `mismatch` what it found.
  void Settle(const grpc::Status& status, double response_bytes, bool checked,
              const std::optional<std::string>& mismatch, const RequestTimes& t)
      ABSL_LOCKS_EXCLUDED(mu_);

  const Workload& w_;
  const double verify_;
  std::atomic<int64_t> sent_{0};
  std::atomic<int64_t> verify_counter_{0};
  absl::Mutex mu_;
  LoadResult r_ ABSL_GUARDED_BY(mu_);
};

}  // namespace client
}  // namespace attention

#endif  // CLIENT_LOAD_RECORDER_H_
