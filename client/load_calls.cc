#include "client/load_calls.h"

#include <cstdint>
#include <utility>

#include "absl/strings/str_split.h"

namespace attention {
namespace client {

absl::Status OpenChannels(const std::string& target, int connections,
                          const ChannelSecurity& security, Channels* out) {
  std::vector<std::string> targets = absl::StrSplit(target, ',', absl::SkipEmpty());
  if (targets.empty()) return absl::InvalidArgumentError("--target: empty");
  for (const std::string& t : targets) {
    for (int i = 0; i < connections; ++i) {
      grpc::ChannelArguments ch;
      ch.SetMaxReceiveMessageSize(INT32_MAX);
      ch.SetMaxSendMessageSize(INT32_MAX);
      ch.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // its own TCP connection
      ch.SetInt("attention.load.connection", i);
      if (t.rfind("dns:", 0) == 0) ch.SetLoadBalancingPolicyName("round_robin");
      auto channel = grpc::CreateCustomChannel(t, MakeChannelCredentials(security, &ch), ch);
      out->stubs.push_back(v1::AttentionService::NewStub(channel));
      out->health.push_back(grpc::health::v1::Health::NewStub(channel));
      out->channels.push_back(std::move(channel));
    }
  }
  return absl::OkStatus();
}

const v1::AttentionResponse* ResponseOf(const Workload& w, const Call& call) {
  return w.rpc == RpcKind::kHealth ? nullptr : &call.response;
}

void StartCall(const Workload& w, Channels& ch, Call* call, double timeout_s,
               std::function<void(const grpc::Status&)> done) {
  ApplyOptions({timeout_s}, &call->context);
  const size_t c = ch.Pick();
  switch (w.rpc) {
    case RpcKind::kHealth:
      ch.health[c]->async()->Check(&call->context, &call->health_request, &call->health_response,
                                   std::move(done));
      return;
    case RpcKind::kAttention:
      ch.stubs[c]->async()->Attention(&call->context, &w.attention[call->index], &call->response,
                                      std::move(done));
      return;
    case RpcKind::kSelfAttention:
      ch.stubs[c]->async()->SelfAttention(&call->context, &w.self[call->index], &call->response,
                                          std::move(done));
      return;
  }
}

grpc::Status CallSync(const Workload& w, Channels& ch, Call* call, double timeout_s) {
  ApplyOptions({timeout_s}, &call->context);
  const size_t c = ch.Pick();
  switch (w.rpc) {
    case RpcKind::kHealth:
      return ch.health[c]->Check(&call->context, call->health_request, &call->health_response);
    case RpcKind::kAttention:
      return ch.stubs[c]->Attention(&call->context, w.attention[call->index], &call->response);
    case RpcKind::kSelfAttention:
      break;
  }
  return ch.stubs[c]->SelfAttention(&call->context, w.self[call->index], &call->response);
}

}  // namespace client
}  // namespace attention
