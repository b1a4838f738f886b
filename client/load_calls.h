// attention-client load: the channels a load test opens and the calls it
// makes on them, unary, synchronous or asynchronous, of any RpcKind.
//
//   Channels ch;
//   if (absl::Status s = OpenChannels("127.0.0.1:50051", /*connections=*/2, {}, &ch); !s.ok()) ...
//   Call call;
//   call.index = 3;                                     // the pool entry to send
//   grpc::Status st = CallSync(workload, ch, &call, /*timeout_s=*/30);
#ifndef CLIENT_LOAD_CALLS_H_
#define CLIENT_LOAD_CALLS_H_

#include <atomic>
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

// Channels to every target, each with its own TCP connection, and their
// stubs; Pick() hands them out round robin. Thread-safe once opened.
struct Channels {
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  std::vector<std::unique_ptr<v1::AttentionService::Stub>> stubs;
  std::vector<std::unique_ptr<grpc::health::v1::Health::Stub>> health;
  std::atomic<uint64_t> next{0};

  size_t Pick() { return next++ % channels.size(); }
};

// Opens `connections` channels to each target of the comma-separated
// `target` list (dns: targets balance round robin over their addresses).
// Connects lazily: an unreachable server shows in the calls, not here.
// Errors: InvalidArgument when the list is empty.
absl::Status OpenChannels(const std::string& target, int connections,
                          const ChannelSecurity& security, Channels* out);

// One call in flight: its context and response live until the call is done.
struct Call {
  grpc::ClientContext context;
  v1::AttentionResponse response;  // unused by health checks
  grpc::health::v1::HealthCheckRequest health_request;
  grpc::health::v1::HealthCheckResponse health_response;
  size_t index = 0;         // the pool entry sent
  double scheduled_us = 0;  // open loop: when the request was due (us since the level began)
  double sent_us = 0;       // when it was sent
};

// The response a finished `call` has to check: nullptr for health checks.
const v1::AttentionResponse* ResponseOf(const Workload& w, const Call& call);

// Starts `call` (pool entry call->index, deadline timeout_s from now) on the
// next channel; `done` runs once, on a gRPC thread. `w`, `ch` and `call` must
// outlive the call.
void StartCall(const Workload& w, Channels& ch, Call* call, double timeout_s,
               std::function<void(const grpc::Status&)> done);

// The same call, waited for; returns its status.
grpc::Status CallSync(const Workload& w, Channels& ch, Call* call, double timeout_s);

}  // namespace client
}  // namespace attention

#endif  // CLIENT_LOAD_CALLS_H_
