#include "client/load_calls.h"

#include <cstdint>
#include <utility>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "grpc/health/v1/health.grpc.pb.h"

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
    out->generic.push_back(std::make_unique<grpc::GenericStub>(channel));
    out->channels.push_back(std::move(channel));
  }
  return absl::OkStatus();
}

grpc::ByteBuffer* ResponseOf(const Workload& w, LoadCall* call) {
  return w.rpc == RpcKind::kHealth ? nullptr : &call->response;
}

namespace {

// The full name of the unary method `rpc` calls.
std::string MethodOf(RpcKind rpc) {
  switch (rpc) {
    case RpcKind::kHealth:
      return absl::StrCat("/", grpc::health::v1::Health::service_full_name(), "/Check");
    case RpcKind::kAttention:
      return absl::StrCat("/", v1::AttentionService::service_full_name(), "/Attention");
    case RpcKind::kModelInfer:
      return "/inference.GRPCInferenceService/ModelInfer";
    case RpcKind::kSelfAttention:
    case RpcKind::kDecode:  // streams only (client/load_decode.h)
      break;
  }
  return absl::StrCat("/", v1::AttentionService::service_full_name(), "/SelfAttention");
}

}  // namespace

UnaryCalls::UnaryCalls(const Workload& w, Channels& ch, double timeout_s, Done done)
    : w_(w),
      ch_(ch),
      method_(MethodOf(w.rpc)),
      timeout_(static_cast<int64_t>(timeout_s * 1e6)),
      done_(std::move(done)) {}

UnaryCalls::~UnaryCalls() {
  cq_.Shutdown();
  if (thread_.joinable()) {
    thread_.join();
  } else {
    void* tag;
    bool ok;
    while (cq_.Next(&tag, &ok)) {
    }
  }
}

void UnaryCalls::Start(LoadCall* call) {
  ++in_flight_;
  call->retries = 0;
  call->deadline = std::chrono::system_clock::now() + timeout_;
  StartAttempt(call);
}

void UnaryCalls::StartAttempt(LoadCall* call) {
  call->reader.reset();
  call->context.reset();
  call->context.emplace();
  call->context->set_deadline(call->deadline);
  call->reader = ch_.generic[ch_.Pick()]->PrepareUnaryCall(&*call->context, method_,
                                                           w_.encoded[call->index], &cq_);
  call->reader->StartCall();
  call->reader->Finish(&call->response, &call->status, call);
}

void UnaryCalls::Handle(LoadCall* call) {
  if (ShouldRetry(call->status, call->retries, ch_.retries)) {
    ++call->retries;
    return StartAttempt(call);
  }
  done_(*this, call);
  --in_flight_;
}

void UnaryCalls::RunUntilIdle() {
  void* tag;
  bool ok;  // always true for a unary call's Finish
  while (in_flight_ > 0 && cq_.Next(&tag, &ok)) Handle(static_cast<LoadCall*>(tag));
}

void UnaryCalls::RunInBackground() {
  thread_ = std::thread([this] {
    void* tag;
    bool ok;
    while (cq_.Next(&tag, &ok)) Handle(static_cast<LoadCall*>(tag));
  });
}

}  // namespace client
}  // namespace attention
