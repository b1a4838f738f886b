#include "client/client.h"

#include <arpa/inet.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "proto/convert.h"

namespace attention {
namespace client {

using convert::ToWire;

v1::Tensor MakeTensor(const std::vector<int64_t>& shape, const float* data, DType wire) {
  v1::Tensor t;
  t.set_dtype(ToWire(wire));
  int64_t n = 1;
  for (int64_t d : shape) {
    t.add_shape(d);
    n *= d;
  }
  std::string* bytes = t.mutable_data();
  bytes->resize(n * DTypeSize(wire));
  ConvertFromFloat32(data, n, wire, bytes->data());
  return t;
}

v1::Tensor MakeBoolTensor(const std::vector<int64_t>& shape, const uint8_t* data) {
  v1::Tensor t;
  t.set_dtype(v1::BOOL);
  int64_t n = 1;
  for (int64_t d : shape) {
    t.add_shape(d);
    n *= d;
  }
  t.set_data(data, n);
  return t;
}

v1::WeightsMode WireWeightsMode(WeightsMode mode) {
  switch (mode) {
    case WeightsMode::kAveraged:
      return v1::WEIGHTS_AVERAGED;
    case WeightsMode::kPerHead:
      return v1::WEIGHTS_PER_HEAD;
    case WeightsMode::kNone:
      break;
  }
  return v1::WEIGHTS_NONE;
}

v1::Tensor FromNpy(const NpyArray& a, DType wire) {
  if (a.dtype == DType::kBool || a.dtype == wire) {
    v1::Tensor t;
    t.set_dtype(ToWire(a.dtype));
    for (int64_t d : a.shape) t.add_shape(d);
    t.set_data(a.data);
    return t;
  }
  std::vector<float> f(a.data.size() / DTypeSize(a.dtype));
  ConvertToFloat32({a.dtype, a.shape, a.data.data(), a.data.size()}, f.data());
  return MakeTensor(a.shape, f.data(), wire);
}

absl::StatusOr<FloatTensor> ToFloat(const v1::Tensor& t, const std::string& name) {
  absl::StatusOr<TensorView> parsed = convert::View(t, name);
  if (!parsed.ok()) return parsed.status();
  const TensorView& view = *parsed;
  absl::StatusOr<int64_t> n = CheckedElements(view, name);
  if (!n.ok()) return n.status();
  FloatTensor out;
  out.shape = view.shape;
  out.data.resize(*n);
  ConvertToFloat32(view, out.data.data());
  return out;
}

absl::StatusOr<NpyArray> ToNpy(const v1::Tensor& t, const std::string& name) {
  NpyArray a;
  a.shape.assign(t.shape().begin(), t.shape().end());
  if (t.dtype() == v1::BFLOAT16) {
    absl::StatusOr<FloatTensor> f = ToFloat(t, name);
    if (!f.ok()) return f.status();
    a.data.assign(reinterpret_cast<const char*>(f->data.data()), f->data.size() * 4);
    return a;
  }
  absl::StatusOr<TensorView> view = convert::View(t, name);
  if (!view.ok()) return view.status();
  a.dtype = view->dtype;
  if (absl::Status s = CheckedElements(*view, name).status(); !s.ok()) return s;
  a.data = t.data();
  return a;
}

namespace {

// gRPC reports a failed TLS handshake (an untrusted or misnamed server
// certificate, a refused client certificate) as UNAVAILABLE with these words.
bool IsTlsFailure(const std::string& message) {
  const std::string m = absl::AsciiStrToLower(message);
  return absl::StrContains(m, "handshake") || absl::StrContains(m, "peer certificate") ||
         absl::StrContains(m, "certificate verify");
}

}  // namespace

absl::Status FromGrpcStatus(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  const auto code = static_cast<absl::StatusCode>(s.error_code());
  if (code == absl::StatusCode::kUnavailable && IsTlsFailure(s.error_message())) {
    return absl::Status(code, absl::StrCat("TLS handshake failed (check --tls-ca, "
                                           "--tls-server-name and the client certificate): ",
                                           s.error_message()));
  }
  if (code == absl::StatusCode::kResourceExhausted &&
      absl::StartsWith(s.error_message(), kQuotaCancelMessage)) {
    return absl::Status(code, absl::StrCat(s.error_message(), kQuotaCancelExplanation));
  }
  return absl::Status(code, s.error_message());
}

absl::StatusOr<std::string> ChannelTarget(const std::string& target) {
  if (target.find(',') == std::string::npos) return target;
  std::vector<std::string> addresses = absl::StrSplit(target, ',', absl::SkipEmpty());
  if (addresses.empty()) return absl::InvalidArgumentError("--target: empty");
  for (const std::string& a : addresses) {
    const size_t colon = a.rfind(':');
    in_addr ignored;
    if (colon == std::string::npos ||
        inet_pton(AF_INET, a.substr(0, colon).c_str(), &ignored) != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("--target: '", a, "' is not IPV4:PORT; a list takes IPv4 addresses, ",
                       "use dns:///NAME:PORT to balance over the addresses of a name"));
    }
  }
  return absl::StrCat("ipv4:", absl::StrJoin(addresses, ","));
}

bool RetriesByClient(int64_t request_bytes) { return request_bytes > kChannelRetryBufferBytes; }

bool ShouldRetry(const grpc::Status& status, int attempt, int retries) {
  if (attempt >= retries) return false;
  return status.error_code() == grpc::StatusCode::UNAVAILABLE ||
         status.error_code() == grpc::StatusCode::CANCELLED ||
         absl::StartsWith(status.error_message(), "Received RST_STREAM");
}

void ApplyOptions(const CallOptions& options, grpc::ClientContext* context) {
  if (options.timeout_seconds > 0) {
    context->set_deadline(
        std::chrono::system_clock::now() +
        std::chrono::microseconds(static_cast<int64_t>(options.timeout_seconds * 1e6)));
  }
}

namespace {

// One unary call of a generated stub's method, its status as an absl::Status;
// retried as CallOptions::retries says (see ShouldRetry) where the channel's
// own policy does not (a request beyond its buffer, a stream reset), within
// the one deadline.
template <typename Stub, typename Request, typename Response>
absl::StatusOr<Response> UnaryCall(Stub* stub,
                                   grpc::Status (Stub::*method)(grpc::ClientContext*,
                                                                const Request&, Response*),
                                   const Request& request, const CallOptions& options) {
  grpc::ClientContext first;
  ApplyOptions(options, &first);
  const auto deadline = first.deadline();
  const bool channel_retries = !RetriesByClient(static_cast<int64_t>(request.ByteSizeLong()));
  Response response;
  grpc::Status status = (stub->*method)(&first, request, &response);
  for (int attempt = 0; ShouldRetry(status, attempt, options.retries) &&
                        !(channel_retries && status.error_code() == grpc::StatusCode::UNAVAILABLE);
       ++attempt) {
    // A short pause lets the balancer see the failed replica first.
    std::this_thread::sleep_for(std::chrono::milliseconds(10 << std::min(attempt, 4)));
    grpc::ClientContext context;
    if (options.timeout_seconds > 0) context.set_deadline(deadline);
    response.Clear();
    status = (stub->*method)(&context, request, &response);
  }
  absl::Status s = FromGrpcStatus(status);
  if (!s.ok()) return s;
  return response;
}

// The service config of a channel that retries UNAVAILABLE on every method
// (gRPC allows at most 5 attempts).
std::string RetryServiceConfig(int retries) {
  return absl::StrCat(
      R"({"methodConfig": [{"name": [{"service": "attention.v1.AttentionService"}, )"
      R"({"service": "grpc.health.v1.Health"}], "retryPolicy": {"maxAttempts": )",
      std::min(retries + 1, 5),
      R"(, "initialBackoff": "0.01s", "maxBackoff": "0.2s", )"
      R"("backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]})");
}

}  // namespace

std::shared_ptr<grpc::Channel> AttentionClient::Connect(const std::string& target,
                                                        int64_t max_message_bytes, bool round_robin,
                                                        const ChannelSecurity& security,
                                                        int retries) {
  return ConnectWith(grpc::ChannelArguments(), target, max_message_bytes, round_robin, security,
                     retries);
}

std::shared_ptr<grpc::Channel> AttentionClient::ConnectAlone(const std::string& target,
                                                             int64_t max_message_bytes,
                                                             int retries) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return ConnectWith(args, target, max_message_bytes, false, {}, retries);
}

std::shared_ptr<grpc::Channel> AttentionClient::ConnectWith(
    grpc::ChannelArguments args, const std::string& target, int64_t max_message_bytes,
    bool round_robin, const ChannelSecurity& security, int retries) {
  const int limit = static_cast<int>(std::min<int64_t>(max_message_bytes, INT32_MAX));
  args.SetMaxReceiveMessageSize(limit);
  args.SetMaxSendMessageSize(limit);
  if (round_robin) args.SetLoadBalancingPolicyName("round_robin");
  if (retries > 0) args.SetServiceConfigJSON(RetryServiceConfig(retries));
  return grpc::CreateCustomChannel(target, MakeChannelCredentials(security, &args), args);
}

AttentionClient::AttentionClient(std::shared_ptr<grpc::Channel> channel)
    : channel_(std::move(channel)), stub_(v1::AttentionService::NewStub(channel_)) {}

absl::StatusOr<v1::AttentionResponse> AttentionClient::Attention(
    const v1::AttentionRequest& request, const CallOptions& options) {
  return UnaryCall(stub_.get(), &v1::AttentionService::Stub::Attention, request, options);
}

absl::StatusOr<v1::AttentionResponse> AttentionClient::SelfAttention(
    const v1::SelfAttentionRequest& request, const CallOptions& options) {
  return UnaryCall(stub_.get(), &v1::AttentionService::Stub::SelfAttention, request, options);
}

absl::StatusOr<v1::ListModelsResponse> AttentionClient::ListModels(const CallOptions& options) {
  return UnaryCall(stub_.get(), &v1::AttentionService::Stub::ListModels, v1::ListModelsRequest(),
                   options);
}

absl::StatusOr<std::string> AttentionClient::Health(const std::string& service,
                                                    const CallOptions& options) {
  auto stub = grpc::health::v1::Health::NewStub(channel_);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  absl::StatusOr<grpc::health::v1::HealthCheckResponse> response =
      UnaryCall(stub.get(), &grpc::health::v1::Health::Stub::Check, request, options);
  if (!response.ok()) return response.status();
  return grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response->status());
}

namespace {

// Runs one bidi stream: a writer thread keeps at most max_in_flight requests
// unanswered; this thread reads responses in order.
template <typename Request, typename Open>
absl::StatusOr<std::vector<v1::AttentionResponse>> RunStream(const std::vector<Request>& requests,
                                                             int max_in_flight,
                                                             const CallOptions& options,
                                                             Open open) {
  if (max_in_flight < 1) return absl::InvalidArgumentError("max_in_flight must be at least 1");
  grpc::ClientContext context;
  ApplyOptions(options, &context);
  auto stream = open(&context);
  std::mutex mu;
  std::condition_variable cv;
  size_t answered = 0;
  bool stop = false;
  std::thread writer([&] {
    for (size_t i = 0; i < requests.size(); ++i) {
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return stop || i - answered < static_cast<size_t>(max_in_flight); });
        if (stop) break;
      }
      if (!stream->Write(requests[i])) break;
    }
    stream->WritesDone();
  });
  std::vector<v1::AttentionResponse> responses;
  v1::AttentionResponse response;
  absl::Status problem;
  while (stream->Read(&response)) {
    const size_t i = responses.size();
    if (i >= requests.size() || response.id() != requests[i].id()) {
      problem = absl::InternalError(absl::StrCat("stream response ", i, " has id '", response.id(),
                                                 "', expected '",
                                                 i < requests.size() ? requests[i].id() : "", "'"));
      context.TryCancel();
      break;
    }
    responses.push_back(std::move(response));
    response = v1::AttentionResponse();  // the next Read's target
    std::lock_guard<std::mutex> lock(mu);
    ++answered;
    cv.notify_all();
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    stop = true;
    cv.notify_all();
  }
  writer.join();
  absl::Status s = FromGrpcStatus(stream->Finish());
  if (!problem.ok()) return problem;
  if (!s.ok()) return s;
  if (responses.size() != requests.size()) {
    return absl::DataLossError(absl::StrCat("stream ended after ", responses.size(), " of ",
                                            requests.size(), " responses"));
  }
  return responses;
}

}  // namespace

absl::StatusOr<std::vector<v1::AttentionResponse>> AttentionClient::StreamAttention(
    const std::vector<v1::AttentionRequest>& requests, int max_in_flight,
    const CallOptions& options) {
  return RunStream(requests, max_in_flight, options,
                   [&](grpc::ClientContext* c) { return stub_->StreamAttention(c); });
}

absl::StatusOr<std::vector<v1::AttentionResponse>> AttentionClient::StreamSelfAttention(
    const std::vector<v1::SelfAttentionRequest>& requests, int max_in_flight,
    const CallOptions& options) {
  return RunStream(requests, max_in_flight, options,
                   [&](grpc::ClientContext* c) { return stub_->StreamSelfAttention(c); });
}

namespace {

// `rows` appended to `into` along the rows (the second-to-last dimension);
// tensors of different dtypes meet in float32.
absl::Status AppendRows(const v1::Tensor& rows, v1::Tensor* into) {
  if (into->shape_size() == 0) {
    *into = rows;
    return absl::OkStatus();
  }
  const int r = into->shape_size() - 2;
  if (rows.shape_size() != into->shape_size() || r < 0) {
    return absl::InvalidArgumentError("decode stream: a sequence's tensors changed rank");
  }
  if (rows.dtype() != into->dtype()) {
    absl::StatusOr<FloatTensor> a = ToFloat(*into, "kept rows");
    absl::StatusOr<FloatTensor> b = ToFloat(rows, "rows");
    if (!a.ok()) return a.status();
    if (!b.ok()) return b.status();
    *into = MakeTensor(a->shape, a->data.data(), DType::kFloat32);
    return AppendRows(MakeTensor(b->shape, b->data.data(), DType::kFloat32), into);
  }
  into->mutable_data()->append(rows.data());
  into->set_shape(r, into->shape(r) + rows.shape(r));
  return absl::OkStatus();
}

}  // namespace

DecodeStream::DecodeStream(AttentionClient* client, const CallOptions& options)
    : client_(client), options_(options) {
  Open();
}

void DecodeStream::Open() {
  stream_.reset();
  context_ = std::make_unique<grpc::ClientContext>();
  ApplyOptions(options_, context_.get());
  stream_ = client_->stub()->StreamDecode(context_.get());
  closed_ = false;
}

DecodeStream::~DecodeStream() {
  if (!closed_) {
    context_->TryCancel();
    Close().IgnoreError();
  }
}

bool DecodeStream::Exchange(const v1::DecodeRequest& request, v1::AttentionResponse* response) {
  response->Clear();
  return stream_->Write(request) && stream_->Read(response);
}

void DecodeStream::Keep(const v1::DecodeRequest& request) {
  auto [it, fresh] = kept_.try_emplace(request.sequence());
  Kept& k = it->second;
  if (fresh) {
    k.options = request.options();
    k.options.set_weights(v1::WEIGHTS_NONE);
    if (request.has_query()) k.query = request.query();
  }
  absl::Status s = absl::OkStatus();
  if (request.has_input()) s.Update(AppendRows(request.input(), &k.input));
  if (request.has_key()) s.Update(AppendRows(request.key(), &k.key));
  if (request.has_value()) s.Update(AppendRows(request.value(), &k.value));
  if (!s.ok()) kept_.erase(it);  // cannot be rebuilt (Reopen then says so)
}

absl::Status DecodeStream::Reopen(grpc::Status broken, int* attempt) {
  while (ShouldRetry(broken, *attempt, options_.retries)) {
    // A short pause lets the balancer see the failed replica first.
    std::this_thread::sleep_for(std::chrono::milliseconds(10 << std::min(*attempt, 4)));
    ++*attempt;
    ++retries_;
    Open();
    bool rebuilt = true;
    for (const auto& [name, held] : lengths_) {
      auto k = kept_.find(name);
      if (k == kept_.end()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "decode stream: sequence '", name, "' cannot be rebuilt after the stream broke"));
      }
      v1::DecodeRequest again;
      again.set_id(absl::StrCat("rebuild-", name));
      again.set_sequence(name);
      *again.mutable_options() = k->second.options;
      if (k->second.input.shape_size() > 0) {
        *again.mutable_input() = k->second.input;
      } else {
        *again.mutable_query() = k->second.query;
        *again.mutable_key() = k->second.key;
        *again.mutable_value() = k->second.value;
      }
      v1::AttentionResponse response;
      if (!Exchange(again, &response)) {
        closed_ = true;
        broken = stream_->Finish();
        rebuilt = false;
        break;
      }
      if (response.has_error()) {
        return absl::Status(static_cast<absl::StatusCode>(response.error().code()),
                            absl::StrCat("decode stream: rebuilding sequence '", name,
                                         "' on a new stream: ", response.error().message()));
      }
      if (response.sequence_length() != held) {
        return absl::InternalError(absl::StrCat("decode stream: sequence '", name,
                                                "' rebuilt with ", response.sequence_length(),
                                                " keys, not ", held));
      }
    }
    if (rebuilt) return absl::OkStatus();
  }
  absl::Status s = FromGrpcStatus(broken);
  return s.ok() ? absl::UnavailableError("the server ended the decode stream") : s;
}

absl::StatusOr<v1::AttentionResponse> DecodeStream::Append(v1::DecodeRequest request) {
  if (!broken_.ok()) return broken_;
  if (closed_) return absl::FailedPreconditionError("the decode stream is closed");
  request.set_position(length(request.sequence()));
  if (request.id().empty()) request.set_id(absl::StrCat(next_id_++));
  last_request_bytes_ = static_cast<int64_t>(request.ByteSizeLong());
  v1::AttentionResponse response;
  int attempt = 0;
  while (!Exchange(request, &response)) {
    closed_ = true;
    const grpc::Status status = stream_->Finish();
    absl::Status s = options_.retries > 0 ? Reopen(status, &attempt) : FromGrpcStatus(status);
    if (s.ok() && options_.retries > 0) continue;  // rebuilt on a new stream: send it again
    closed_ = true;
    broken_ = s.ok() ? absl::UnavailableError("the server ended the decode stream") : s;
    lengths_.clear();  // nothing outlives the stream
    kept_.clear();
    return broken_;
  }
  if (response.id() != request.id()) {
    return absl::InternalError(absl::StrCat("decode stream: response id '", response.id(),
                                            "' for request '", request.id(), "'"));
  }
  if (response.has_error()) {
    return absl::Status(static_cast<absl::StatusCode>(response.error().code()),
                        response.error().message());
  }
  if (options_.retries > 0) Keep(request);
  if (response.sequence_length() > 0) {
    lengths_[request.sequence()] = response.sequence_length();
  } else {
    lengths_.erase(request.sequence());
    kept_.erase(request.sequence());
  }
  return response;
}

absl::Status DecodeStream::End(const std::string& sequence) {
  v1::DecodeRequest request;
  request.set_sequence(sequence);
  request.set_end(true);
  return Append(std::move(request)).status();
}

absl::Status DecodeStream::Close() {
  if (closed_) return broken_;
  closed_ = true;
  stream_->WritesDone();
  v1::AttentionResponse extra;
  while (stream_->Read(&extra)) {
  }
  broken_ = FromGrpcStatus(stream_->Finish());
  return broken_;
}

int64_t DecodeStream::length(const std::string& sequence) const {
  auto it = lengths_.find(sequence);
  return it == lengths_.end() ? 0 : it->second;
}

}  // namespace client
}  // namespace attention
