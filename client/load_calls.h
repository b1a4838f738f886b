// attention-client load: the channels a load test opens and the unary calls
// it makes on them. Each channel balances its calls round robin over every
// address of the target (gRPC's round_robin policy: a dead replica is
// skipped).
//
// Unary calls of any RpcKind run on one completion queue (UnaryCalls): each
// sends its pool entry's bytes, serialized once (Workload::encoded), through
// a generic stub, and gets its response as bytes, which the recorder reads
// without copying the tensors. Completions are handled on one thread, which
// may start the next call itself: a closed loop runs on a single thread, with
// no hop between threads per call. A call that fails with UNAVAILABLE is
// retried at once, on the next channel, up to Channels::retries times, by
// this code and not by the channel, so that every retry is counted
// (Call::retries).
//
//   Channels ch;
//   if (absl::Status s = OpenChannels("127.0.0.2:50051,127.0.0.3:50051", /*connections=*/2,
//                                     /*security=*/{}, &ch);
//       !s.ok()) ...
//   ch.retries = 3;
//   UnaryCalls calls(workload, ch, /*timeout_s=*/30, [](UnaryCalls& calls, LoadCall* call) {
//     ... call->status, call->response ...   // then calls.Start(call) again, or not
//   });
//   LoadCall call;
//   call.index = 3;                           // the pool entry to send
//   calls.Start(&call);
//   calls.RunUntilIdle();                     // handles completions until none is in flight
#ifndef CLIENT_LOAD_CALLS_H_
#define CLIENT_LOAD_CALLS_H_

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "client/load_workload.h"
#include "client/security.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"

namespace attention {
namespace client {

// Channels, each with its own TCP connections, and their generic stubs
// (calls send and receive serialized messages); Pick() hands them out in
// turn. Thread-safe once opened.
struct Channels {
  int retries = 0;  // attempts after the first for a unary call that ended UNAVAILABLE
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  std::vector<std::unique_ptr<grpc::GenericStub>> generic;  // every call, in bytes
  std::atomic<uint64_t> next{0};

  size_t Pick() { return next++ % channels.size(); }
};

// Opens `connections` channels to `target` (any gRPC target, or a
// comma-separated list of IPv4 HOST:PORT: see ChannelTarget), each balancing
// round robin over every address, with `security` (client/security.h).
// Connects lazily: an unreachable server shows in the calls, not here.
// Errors: InvalidArgument for a bad target.
absl::Status OpenChannels(const std::string& target, int connections,
                          const ChannelSecurity& security, Channels* out);

// One unary call: what the driver sets before UnaryCalls::Start, and what
// the call leaves when it is done. May be started again once done.
struct LoadCall {
  size_t index = 0;           // the pool entry sent
  double scheduled_us = 0;    // open loop: when the request was due (us since the level began)
  double sent_us = 0;         // when it was sent
  int retries = 0;            // attempts after the first (Start resets it)
  grpc::Status status;        // of the last attempt
  grpc::ByteBuffer response;  // the serialized response of an OK call

  // The current attempt's state (UnaryCalls's own). The reader lives in the
  // call's arena, which the context owns: it is declared after the context,
  // so that it goes first.
  std::chrono::system_clock::time_point deadline;  // of every attempt
  std::optional<grpc::ClientContext> context;
  std::unique_ptr<grpc::GenericClientAsyncResponseReader> reader;
};

// The response a finished `call` has for the recorder: nullptr for health
// checks (their response is not checked).
grpc::ByteBuffer* ResponseOf(const Workload& w, LoadCall* call);

// Unary calls of `w` over `ch` on one completion queue. Start() is
// thread-safe; completions are handled by one thread at a time, RunUntilIdle's
// or RunInBackground's.
class UnaryCalls {
 public:
  // Runs once per started call when its last attempt has ended; may Start()
  // calls, this one again included.
  using Done = std::function<void(UnaryCalls& calls, LoadCall* call)>;

  // `w` and `ch` must outlive this; every attempt has a deadline timeout_s
  // after its call started.
  UnaryCalls(const Workload& w, Channels& ch, double timeout_s, Done done);
  // Every call started must be done first.
  ~UnaryCalls();
  UnaryCalls(const UnaryCalls&) = delete;
  UnaryCalls& operator=(const UnaryCalls&) = delete;

  // Starts `call`: pool entry call->index, on the next channel. `call` must
  // live until `done` has run for it.
  void Start(LoadCall* call);

  // Handles completions on the calling thread until no call is in flight
  // (at once when none was started).
  void RunUntilIdle();

  // Handles completions on a thread of its own, until destroyed.
  void RunInBackground();

 private:
  void StartAttempt(LoadCall* call);
  void Handle(LoadCall* call);  // an attempt has ended

  const Workload& w_;
  Channels& ch_;
  const std::string method_;
  const std::chrono::microseconds timeout_;
  const Done done_;
  grpc::CompletionQueue cq_;
  std::atomic<int64_t> in_flight_{0};
  std::thread thread_;
};

}  // namespace client
}  // namespace attention

#endif  // CLIENT_LOAD_CALLS_H_
