#include "client/load_calls.h"

#include <algorithm>
#include <cstdint>
#include <thread>
#include <utility>

#include "client/client.h"

namespace attention {
namespace client {

absl::Status OpenChannels(const std::string& target, int connections,
                          const ChannelSecurity& security, Channels* out) {
  absl::StatusOr<std::string> channel_target = ChannelTarget(target);
  if (!channel_target.ok()) return channel_target.status();
  for (int i = 0; i < connections; ++i) {
    grpc::ChannelArguments ch;
    ch.SetMaxReceiveMessageSize(INT32_MAX);
    ch.SetMaxSendMessageSize(INT32_MAX);
    ch.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // its own TCP connections
    ch.SetInt("attention.load.connection", i);
    ch.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);  // retries are the tool's, and counted
    ch.SetLoadBalancingPolicyName("round_robin");
    auto channel =
        grpc::CreateCustomChannel(*channel_target, MakeChannelCredentials(security, &ch), ch);
    out->stubs.push_back(v1::AttentionService::NewStub(channel));
    out->health.push_back(grpc::health::v1::Health::NewStub(channel));
    out->channels.push_back(std::move(channel));
  }
  return absl::OkStatus();
}

const v1::AttentionResponse* ResponseOf(const Workload& w, const Call& call) {
  return w.rpc == RpcKind::kHealth ? nullptr : &call.response;
}

namespace {

std::chrono::system_clock::time_point DeadlineIn(double timeout_s) {
  return std::chrono::system_clock::now() +
         std::chrono::microseconds(static_cast<int64_t>(timeout_s * 1e6));
}

// A fresh context with the call's deadline, for its next attempt.
grpc::ClientContext* NewAttempt(Call* call) {
  call->context = std::make_unique<grpc::ClientContext>();
  call->context->set_deadline(call->deadline);
  call->response.Clear();
  return call->context.get();
}

void StartAttempt(const Workload& w, Channels& ch, Call* call,
                  std::function<void(const grpc::Status&)> done) {
  grpc::ClientContext* context = NewAttempt(call);
  auto finish = [&w, &ch, call, done = std::move(done)](const grpc::Status& st) mutable {
    if (!ShouldRetry(st, call->retries, ch.retries)) return done(st);
    ++call->retries;
    StartAttempt(w, ch, call, std::move(done));
  };
  const size_t c = ch.Pick();
  switch (w.rpc) {
    case RpcKind::kHealth:
      ch.health[c]->async()->Check(context, &call->health_request, &call->health_response,
                                   std::move(finish));
      return;
    case RpcKind::kAttention:
      ch.stubs[c]->async()->Attention(context, &w.attention[call->index], &call->response,
                                      std::move(finish));
      return;
    case RpcKind::kSelfAttention:
      ch.stubs[c]->async()->SelfAttention(context, &w.self[call->index], &call->response,
                                          std::move(finish));
      return;
  }
}

grpc::Status Attempt(const Workload& w, Channels& ch, Call* call) {
  grpc::ClientContext* context = NewAttempt(call);
  const size_t c = ch.Pick();
  switch (w.rpc) {
    case RpcKind::kHealth:
      return ch.health[c]->Check(context, call->health_request, &call->health_response);
    case RpcKind::kAttention:
      return ch.stubs[c]->Attention(context, w.attention[call->index], &call->response);
    case RpcKind::kSelfAttention:
      break;
  }
  return ch.stubs[c]->SelfAttention(context, w.self[call->index], &call->response);
}

}  // namespace

void StartCall(const Workload& w, Channels& ch, Call* call, double timeout_s,
               std::function<void(const grpc::Status&)> done) {
  call->deadline = DeadlineIn(timeout_s);
  StartAttempt(w, ch, call, std::move(done));
}

grpc::Status CallSync(const Workload& w, Channels& ch, Call* call, double timeout_s) {
  call->deadline = DeadlineIn(timeout_s);
  grpc::Status st = Attempt(w, ch, call);
  while (ShouldRetry(st, call->retries, ch.retries)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10 << std::min(call->retries, 4)));
    ++call->retries;
    st = Attempt(w, ch, call);
  }
  return st;
}

}  // namespace client
}  // namespace attention
