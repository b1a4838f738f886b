// The C++ client of the Attention Service: typed helpers to build requests
// from float arrays or .npy files, to read outputs and weights back, and the
// RPCs (unary and streams) with absl statuses.
//
//   auto client = AttentionClient(AttentionClient::Connect("localhost:50051"));
//   v1::SelfAttentionRequest req;
//   *req.mutable_input() = MakeTensor({2, 10, 64}, x.data(), DType::kFloat32);
//   req.mutable_options()->set_model("demo");
//   req.mutable_options()->set_weights(v1::WEIGHTS_AVERAGED);
//   absl::StatusOr<v1::AttentionResponse> r = client.SelfAttention(req, {/*timeout=*/5});
//   if (!r.ok()) { /* r.status(): the server's code and message */ }
//   absl::StatusOr<FloatTensor> out = ToFloat(r->output(), "output");
//
// Thread-safety: an AttentionClient may be used from many threads at once
// (gRPC stubs are thread-safe). Errors: the call's gRPC status as an
// absl::Status with the same code and message; local problems (bad tensors)
// are InvalidArgument.
#ifndef CLIENT_CLIENT_H_
#define CLIENT_CLIENT_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attention/v1/attention.grpc.pb.h"
#include "client/npy.h"
#include "client/security.h"
#include "core/tensor.h"
#include "grpcpp/grpcpp.h"
#include "proto/convert.h"  // convert::ToWire, convert::View

namespace attention {
namespace client {

namespace v1 = ::attention::v1;

// A wire tensor of `shape` from float32 `data`, converted to `wire` dtype
// (FLOAT32, FLOAT16 or BFLOAT16).
v1::Tensor MakeTensor(const std::vector<int64_t>& shape, const float* data, DType wire);
// The wire enum of a weights mode (--weights, see ParseWeightsMode).
v1::WeightsMode WireWeightsMode(WeightsMode mode);
// A BOOL tensor (one byte per element, nonzero = true).
v1::Tensor MakeBoolTensor(const std::vector<int64_t>& shape, const uint8_t* data);
// A wire tensor from a .npy array: bool stays BOOL, floats become `wire`.
v1::Tensor FromNpy(const NpyArray& array, DType wire);

// Validates a response tensor (dtype, shape, byte length) and returns it as
// float32. `name` appears in errors.
absl::StatusOr<FloatTensor> ToFloat(const v1::Tensor& tensor, const std::string& name);
// As .npy: FLOAT32 and FLOAT16 kept, BFLOAT16 widened to float32.
absl::StatusOr<NpyArray> ToNpy(const v1::Tensor& tensor, const std::string& name);

// What gRPC says when the server's transport cancels a call it is still
// receiving under memory pressure (HTTP/2 ENHANCE_YOUR_CALM), and what
// FromGrpcStatus adds to it so that the refusal names the limit.
inline constexpr char kQuotaCancelMessage[] = "Received RST_STREAM with error code 11";
inline constexpr char kQuotaCancelExplanation[] =
    " (ENHANCE_YOUR_CALM): the server cancelled the call while receiving it; its memory for "
    "requests being received (a quarter of --max-memory-mb) was most likely full: retry later "
    "or send smaller requests";

// The call's status with the same code and message; a failed TLS handshake
// (which gRPC reports as UNAVAILABLE) says so first; a call cancelled by the
// server's transport under memory pressure says which limit that is.
absl::Status FromGrpcStatus(const grpc::Status& status);

struct CallOptions {
  double timeout_seconds = 0;  // 0 = no deadline, else for all attempts together
  // Extra attempts of a unary call that failed with UNAVAILABLE (a replica
  // killed or draining): safe, every RPC is a pure function of its request.
  // The channel of Connect(..., retries) makes them for requests that fit its
  // retry buffer; the library makes them for larger ones (see RetriesByClient).
  int retries = 0;
};

// The gRPC target for `target`: a comma-separated list of IPv4 HOST:PORT
// (127.0.0.2:50051,127.0.0.3:50051) becomes one multi-address target
// (ipv4:...) for a balancing channel; anything else is returned as is.
// Errors: InvalidArgument for an empty list, or a list with a host name
// (use dns:///NAME:PORT, which balances over every address of the name).
absl::StatusOr<std::string> ChannelTarget(const std::string& target);

// The largest request gRPC buffers for its own retries (its default per-call
// retry buffer): a bigger one is committed once sent, so the library retries
// it. Connect() keeps this default.
constexpr int64_t kChannelRetryBufferBytes = int64_t{256} << 10;

// Whether the library itself retries a request of `request_bytes` (the
// channel does not): true beyond kChannelRetryBufferBytes.
bool RetriesByClient(int64_t request_bytes);

// Whether an attempt that ended with `status` is retried, `attempt` (0 the
// first) of at most 1 + `retries`: UNAVAILABLE; a stream reset by the peer
// ("Received RST_STREAM ...": what nginx sends when its replica dies
// mid-call; never a status of the service itself); and CANCELLED, which a
// unary call of this library or the load tool never causes itself (they
// cancel nothing): a replica draining past its deadline, or a proxy.
bool ShouldRetry(const grpc::Status& status, int attempt, int retries);

class AttentionClient {
 public:
  // A channel to `target` (HOST:PORT, or any gRPC target such as
  // dns:///name:port) with message limits large enough for big tensors.
  // `round_robin` balances calls over every address the name resolves to;
  // `security` (client/security.h) says TLS, certificates and token.
  // `retries` > 0 gives the channel a retry policy for UNAVAILABLE (at most
  // 1 + retries attempts, capped at gRPC's 5, with a 10-200 ms backoff) for
  // every method; the calls' CallOptions::retries should say the same.
  static std::shared_ptr<grpc::Channel> Connect(const std::string& target,
                                                int64_t max_message_bytes = int64_t{256} << 20,
                                                bool round_robin = false,
                                                const ChannelSecurity& security = {},
                                                int retries = 0);

  // As Connect (plaintext), on a TCP connection of its own: channels with
  // equal arguments otherwise share one connection (gRPC's global subchannel
  // pool). Tools and tests that act as many clients use it.
  static std::shared_ptr<grpc::Channel> ConnectAlone(const std::string& target,
                                                     int64_t max_message_bytes = int64_t{256} << 20,
                                                     int retries = 0);

  explicit AttentionClient(std::shared_ptr<grpc::Channel> channel);

  absl::StatusOr<v1::AttentionResponse> Attention(const v1::AttentionRequest& request,
                                                  const CallOptions& options = {});
  absl::StatusOr<v1::AttentionResponse> SelfAttention(const v1::SelfAttentionRequest& request,
                                                      const CallOptions& options = {});
  absl::StatusOr<v1::ListModelsResponse> ListModels(const CallOptions& options = {});
  // "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN" or "UNKNOWN"; `service` ""
  // asks about the server as a whole.
  absl::StatusOr<std::string> Health(const std::string& service = "",
                                     const CallOptions& options = {});

  // Sends every request on one bidirectional stream, with at most
  // `max_in_flight` unanswered at a time, and returns the responses in
  // request order (a failed message has its `error` set). Fails when the
  // stream itself fails, or when a response's id does not match its request.
  absl::StatusOr<std::vector<v1::AttentionResponse>> StreamAttention(
      const std::vector<v1::AttentionRequest>& requests, int max_in_flight = 4,
      const CallOptions& options = {});
  absl::StatusOr<std::vector<v1::AttentionResponse>> StreamSelfAttention(
      const std::vector<v1::SelfAttentionRequest>& requests, int max_in_flight = 4,
      const CallOptions& options = {});

  v1::AttentionService::Stub* stub() { return stub_.get(); }

 private:
  static std::shared_ptr<grpc::Channel> ConnectWith(grpc::ChannelArguments args,
                                                    const std::string& target,
                                                    int64_t max_message_bytes, bool round_robin,
                                                    const ChannelSecurity& security, int retries);

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::AttentionService::Stub> stub_;
};

// One StreamDecode stream (docs/api.md, "StreamDecode"): the server keeps
// each sequence's keys and values while the stream is open, so a step sends
// only its new tokens. Synchronous: Append waits for its answer. The stream
// tracks each sequence's length and sets `position` from it.
//
//   DecodeStream stream(&client, {/*timeout=*/0, /*retries=*/3});
//   v1::DecodeRequest step;
//   step.set_sequence("a");
//   *step.mutable_input() = MakeTensor({1, E}, token.data(), DType::kFloat32);
//   step.mutable_options()->set_model("demo");
//   step.mutable_options()->set_causal(true);
//   absl::StatusOr<v1::AttentionResponse> r = stream.Append(step);
//   ...
//   stream.End("a");
//   absl::Status s = stream.Close();
//
// With CallOptions::retries > 0 the stream survives its replica: when it
// breaks as ShouldRetry says (the replica killed, drained, restarted), a new
// stream is opened on the client's channel (its balancer then picks a live
// replica), each sequence held is rebuilt by sending all its tokens again in
// one message, and the message that was pending is sent again, so the caller
// gets the answers it would have got without the fault. For that the stream
// keeps the tokens (and keys and values) it sent of each sequence while the
// sequence is held. Each reopening is one retry, up to `retries` for one
// message. The deadline of CallOptions bounds each stream opened.
//
// Not thread-safe (one stream, one caller).
class DecodeStream {
 public:
  // Opens a stream on the client's channel.
  explicit DecodeStream(AttentionClient* client, const CallOptions& options = {});
  ~DecodeStream();  // closes the stream if Close was not called

  // Sends `request` with `position` set to what the stream knows its sequence
  // holds, and returns the answer. A refused message is its error as a
  // status (the stream goes on, the sequence unchanged); a broken stream
  // that is not retried is the stream's status (UNAVAILABLE when the server
  // drained: reopen and resend each sequence's tokens).
  absl::StatusOr<v1::AttentionResponse> Append(v1::DecodeRequest request);
  // Frees `sequence` on the server.
  absl::Status End(const std::string& sequence);
  // Half-closes and returns the stream's status.
  absl::Status Close();

  // Keys the server holds for `sequence` (0 when unknown or ended).
  int64_t length(const std::string& sequence) const;
  // The serialized size of the last message sent.
  int64_t last_request_bytes() const { return last_request_bytes_; }
  // Streams reopened after a break so far (see the class comment).
  int retries() const { return retries_; }

 private:
  // What a sequence's messages sent, to rebuild it on another stream: the
  // first message's options and queries, the rows of `input` (or `key` and
  // `value`) of every message, concatenated.
  struct Kept {
    v1::AttentionOptions options;
    v1::Tensor input, query, key, value;
  };

  void Open();
  // One message written and its answer read; false when the stream broke.
  bool Exchange(const v1::DecodeRequest& request, v1::AttentionResponse* response);
  // Opens a new stream and rebuilds every kept sequence on it, retrying while
  // the message's attempts (`attempt`: made so far) last; OK, or why not.
  absl::Status Reopen(grpc::Status broken, int* attempt);
  void Keep(const v1::DecodeRequest& request);

  AttentionClient* const client_;
  const CallOptions options_;
  std::unique_ptr<grpc::ClientContext> context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::DecodeRequest, v1::AttentionResponse>> stream_;
  std::map<std::string, int64_t> lengths_;
  std::map<std::string, Kept> kept_;  // with retries
  int64_t last_request_bytes_ = 0;
  int64_t next_id_ = 0;
  int retries_ = 0;
  bool closed_ = false;
  absl::Status broken_;  // once the stream itself failed
};

// Sets the deadline of `context` from `options` (none when timeout_seconds
// is 0): the one place a timeout in seconds becomes a gRPC deadline.
void ApplyOptions(const CallOptions& options, grpc::ClientContext* context);

}  // namespace client
}  // namespace attention

#endif  // CLIENT_CLIENT_H_
