// attention-client load: the channels a load test opens and the calls it
// makes on them, unary, synchronous or asynchronous, of any RpcKind. Each
// channel balances its calls round robin over every address of the target
// (gRPC's round_robin policy: a dead replica is skipped); a call that fails
// with UNAVAILABLE is retried up to Channels::retries times, by this code and
// not by the channel, so that every retry is counted (Call::retries).
//
//   Channels ch;
//   if (absl::Status s = OpenChannels("127.0.0.2:50051,127.0.0.3:50051", /*connections=*/2,
//                                     /*security=*/{}, &ch);
//       !s.ok()) ...
//   ch.retries = 3;
//   Call call;
//   call.index = 3;                                     // the pool entry to send
//   grpc::Status st = CallSync(workload, ch, &call, /*timeout_s=*/30);
#ifndef CLIENT_LOAD_CALLS_H_
#define CLIENT_LOAD_CALLS_H_

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "client/load_workload.h"
#include "client/security.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"

namespace attention {
namespace client {

// Channels, each with its own TCP connections, and their stubs; Pick() hands
// them out in turn. Thread-safe once opened.
struct Channels {
  int retries = 0;  // attempts after the first for a unary call that ended UNAVAILABLE
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  std::vector<std::unique_ptr<v1::AttentionService::Stub>> stubs;
  std::vector<std::unique_ptr<grpc::health::v1::Health::Stub>> health;
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

// One call in flight: its context and response live until the call is done.
struct Call {
  std::unique_ptr<grpc::ClientContext> context;  // of the current attempt
  v1::AttentionResponse response;  // unused by health checks
  grpc::health::v1::HealthCheckRequest health_request;
  grpc::health::v1::HealthCheckResponse health_response;
  size_t index = 0;         // the pool entry sent
  double scheduled_us = 0;  // open loop: when the request was due (us since the level began)
  double sent_us = 0;       // when it was sent
  int retries = 0;          // attempts after the first
  std::chrono::system_clock::time_point deadline;  // of every attempt
};

// The response a finished `call` has to check: nullptr for health checks.
const v1::AttentionResponse* ResponseOf(const Workload& w, const Call& call);

// Starts `call` (pool entry call->index, deadline timeout_s from now) on the
// next channel, retrying it there at once after UNAVAILABLE as ch.retries
// says; `done` runs once, with the last attempt's status, on a gRPC thread.
// `w`, `ch` and `call` must outlive the call.
void StartCall(const Workload& w, Channels& ch, Call* call, double timeout_s,
               std::function<void(const grpc::Status&)> done);

// The same call, waited for (with a short pause before each retry); returns
// the last attempt's status.
grpc::Status CallSync(const Workload& w, Channels& ch, Call* call, double timeout_s);

}  // namespace client
}  // namespace attention

#endif  // CLIENT_LOAD_CALLS_H_
