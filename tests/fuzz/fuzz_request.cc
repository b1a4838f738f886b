// libFuzzer target for the request path as the server sees it: the input is
// the bytes of one serialized attention.v1.SelfAttentionRequest (the target
// fuzz_self_attention_request), AttentionRequest (fuzz_attention_request,
// built with ATTENTION_FUZZ_CROSS=1) or the Open Inference Protocol's
// inference.ModelInferRequest (fuzz_infer_request, ATTENTION_FUZZ_INFER=1),
// as gRPC hands them to the service. They
// go through the service's own steps, under small limits of the server's own
// kinds (tests/fuzz/fuzz_limits.h):
//   AttentionServiceImpl::TEST_ServeUnary, which runs the admission that every
//   unary call and stream message goes through (the budget takes the received
//   bytes, ParseRequest, DescribeRequest, PrepareCall and the plan under
//   --max-request-memory-mb and --max-message-mb, the connection's share),
//   then the computation (the response framed around the core's buffers)
//   with the call counted (ServiceMetrics); and the answer as unary calls and
//   streams send it (ToGrpcStatus, EncodeError).
// The preloaded models are the test fixtures' (demo, mha_e32_h4,
// mha_e32_h2_kv), so requests naming them run the model path.
//
// Beyond what the sanitizers catch, it checks what the contract promises:
// refusals are INVALID_ARGUMENT, NOT_FOUND or RESOURCE_EXHAUSTED with a short
// message; an accepted request's response parses, fits --max-message-mb and
// has the shapes and dtypes asked for; the budget is all given back; and the
// same call computed again, cancelled at one of its polls (chosen by the
// input's hash), stops with CANCELLED or gives the same answer.
//
// Build and run: scripts/fuzz.sh (CMake option ATTENTION_FUZZ, clang).
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "attention/v1/attention.pb.h"
#include "core/executor.h"
#include "core/tensor.h"
#include "google/protobuf/stubs/logging.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/proto_buffer_reader.h"
#include "grpcpp/support/slice.h"
#include "proto/convert.h"
#include "proto/infer_convert.h"
#include "server/access_log.h"
#include "server/grpc_status.h"
#include "server/memory_budget.h"
#include "server/metrics.h"
#include "server/model_registry.h"
#include "server/prepared_call.h"
#include "server/response.h"
#include "server/service.h"
#include "server/service_metrics.h"
#include "tests/fuzz/fuzz_limits.h"

namespace attention {
namespace fuzz {
namespace {

using server::AttentionServiceImpl;

#if ATTENTION_FUZZ_INFER
using Request = inference::ModelInferRequest;
constexpr char kRpc[] = "ModelInfer";
#elif ATTENTION_FUZZ_CROSS
using Request = v1::AttentionRequest;
constexpr char kRpc[] = "Attention";
const v1::Tensor& Query(const Request& r) { return r.query(); }
#else
using Request = v1::SelfAttentionRequest;
constexpr char kRpc[] = "SelfAttention";
const v1::Tensor& Query(const Request& r) { return r.input(); }
#endif

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "fuzz_request: %s\n", what.c_str());
  std::abort();
}

// The server's parts, made once: models, executor, budget, metrics, service.
struct Server {
  std::unique_ptr<server::ModelRegistry> models;
  std::unique_ptr<Executor> executor;
  server::MemoryBudget budget{kMemoryBudgetBytes};
  server::Registry registry;
  std::unique_ptr<server::AccessLog> access_log;
  std::unique_ptr<server::ServiceMetrics> metrics;
  std::unique_ptr<AttentionServiceImpl> service;

  Server() {
    google::protobuf::SetLogHandler(nullptr);  // requests that do not parse are expected
    const std::string dir = ATTENTION_SOURCE_DIR;
    absl::StatusOr<std::unique_ptr<server::ModelRegistry>> loaded = server::ModelRegistry::Load(
        {"demo=" + dir + "/models/demo.safetensors",
         "mha_e32_h4=" + dir + "/tests/fixtures/models/mha_e32_h4.safetensors",
         "mha_e32_h2_kv=" + dir + "/tests/fixtures/models/mha_e32_h2_kv.safetensors"});
    if (!loaded.ok()) Fail(loaded.status().ToString());
    models = std::move(*loaded);
    Executor::Options e;
    e.workers = 1;
    e.threads_per_worker = 1;
    e.max_queue = 1;
    e.pin_threads = false;
    executor = std::make_unique<Executor>(e);
    absl::StatusOr<std::unique_ptr<server::AccessLog>> log =
        server::AccessLog::Open("/dev/null", 64);
    if (!log.ok()) Fail(log.status().ToString());
    access_log = std::move(*log);
    server::ServiceLimits limits;
    limits.max_message_bytes = kMaxMessageBytes;
    limits.max_request_memory_bytes = kMaxRequestMemoryBytes;
    limits.memory_budget = &budget;
    server::ServiceMetrics::Options m;
    for (const server::ModelRegistry::Entry& e : models->All()) m.models.push_back(e.name);
    m.max_request_memory_bytes = limits.max_request_memory_bytes;
    m.max_message_bytes = limits.max_message_bytes;
    m.max_queue = limits.max_queue;
    metrics = std::make_unique<server::ServiceMetrics>(&registry, m, access_log.get());
    service =
        std::make_unique<AttentionServiceImpl>(models.get(), executor.get(), limits, metrics.get());
  }
};

std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  if (!buffer.Dump(&slices).ok()) Fail("a response that cannot be read back");
  std::string bytes;
  for (const grpc::Slice& s : slices)
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return bytes;
}

#if !ATTENTION_FUZZ_INFER
v1::AttentionResponse ParseResponse(const std::string& bytes) {
  v1::AttentionResponse response;
  if (!response.ParseFromString(bytes)) Fail("a response that is not an AttentionResponse");
  return response;
}

// A result tensor as the contract describes it.
void CheckTensor(const v1::Tensor& t, v1::DataType dtype, const char* name) {
  if (t.dtype() != dtype) Fail(std::string(name) + " in the wrong dtype");
  const absl::StatusOr<DType> d = convert::FromWire(t.dtype(), name);
  if (!d.ok()) Fail(std::string(name) + ": an unknown dtype");
  const std::vector<int64_t> shape(t.shape().begin(), t.shape().end());
  if (shape.empty() || ShapeProduct<double>(shape) * DTypeSize(*d) != t.data().size()) {
    Fail(std::string(name) + ": shape and bytes disagree");
  }
}
#endif

// What a refused request gets, unary and streamed.
void CheckRefusal(const absl::Status& s, const Request& request) {
  const std::string& id = request.id();
  if (s.code() != absl::StatusCode::kInvalidArgument && s.code() != absl::StatusCode::kNotFound &&
      s.code() != absl::StatusCode::kResourceExhausted) {
    Fail("a request refused with a code the contract does not give: " + s.ToString());
  }
  const grpc::Status sent = server::ToGrpcStatus(s);
  if (sent.error_message().size() > server::kMaxStatusMessageBytes) Fail("a long message");
#if ATTENTION_FUZZ_INFER
  inference::ModelStreamInferResponse streamed;
  if (!streamed.ParseFromString(Flatten(server::StreamAnswer(request, s, {}))) ||
      streamed.error_message().find(sent.error_message()) == std::string::npos ||
      streamed.infer_response().id() != id) {
    Fail("a stream's error message that says something else");
  }
#else
  const v1::AttentionResponse streamed = ParseResponse(Flatten(server::EncodeError(id, s)));
  if (streamed.error().code() != static_cast<int>(s.code()) ||
      streamed.error().message() != sent.error_message() || streamed.id() != id) {
    Fail("a stream's error message that says something else");
  }
#endif
}

// FNV-1a: how the second computation runs.
uint32_t Hash(const uint8_t* data, size_t size) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < size; ++i) h = (h ^ data[i]) * 16777619u;
  return h;
}

// The same call again, cancelled at one of its first polls (`hash` chooses
// which): CANCELLED, or, when it polls fewer times, the first answer. Every
// other time with the fused and packed paths on from one key (the server
// takes them for long sequences only, which the message limit rules out):
// then the same shapes, not necessarily the same bits.
void CheckAgain(const Request& request, const server::ModelRegistry& models, uint32_t hash,
                const std::string& first) {
  server::PreparedCall call;
  if (!server::PrepareCall(request, models, &call).ok()) Fail("prepared once, not twice");
  ComputeOptions options;
  options.max_threads = 1;
  options.max_memory_bytes = kMaxRequestMemoryBytes;
  const bool long_paths = hash & 8;
  if (long_paths) options.fused_min_keys = options.pack_min_keys = 1;
  const int cancel_at = static_cast<int>(hash % 8);
  std::atomic<int> polls{0};
  options.check = [&polls, cancel_at] {
    return polls++ == cancel_at ? absl::CancelledError("cancelled") : absl::OkStatus();
  };
  grpc::ByteBuffer response;
  const absl::Status s = server::ComputeResponse(call, options, request.id(), &response);
  if (!s.ok()) {
    if (s.code() != absl::StatusCode::kCancelled) Fail("computed once, not twice: " + s.ToString());
    return;
  }
  const std::string again = Flatten(response);
  if (long_paths ? again.size() != first.size() : again != first) {
    Fail("the same call gave another answer");
  }
}

// One request, as gRPC would hand it to the service's unary method.
int TestOneInput(const uint8_t* data, size_t size) {
  static Server* const s = new Server();  // lives as long as the process
  // gRPC refuses larger messages before the service sees them.
  if (size > static_cast<size_t>(kMaxMessageBytes)) return -1;
  grpc::Slice slice(data, size);

  grpc::ByteBuffer response;
  const absl::Status status =
      s->service->TEST_ServeUnary<Request>(kRpc, grpc::ByteBuffer(&slice, 1), &response);
  const std::string bytes = status.ok() ? Flatten(response) : "";
  if (s->budget.used() != 0) Fail("memory budget not given back");
  // The fuzzer's own copy, for the checks (the service parsed its own).
  Request request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) {
    if (status.ok()) Fail("a request that does not parse was served");
    request.Clear();  // as the service answers it: no id
  }

  if (!status.ok()) {
    CheckRefusal(status, request);
    return 0;
  }
  if (static_cast<int64_t>(bytes.size()) > kMaxMessageBytes) {
    Fail("a response over --max-message-mb was computed");
  }
#if ATTENTION_FUZZ_INFER
  inference::ModelInferResponse answer;
  if (!answer.ParseFromString(bytes)) Fail("a response that is not a ModelInferResponse");
  if (answer.id() != request.id() || answer.model_name() != request.model_name()) {
    Fail("a response for another request");
  }
  if (answer.outputs_size() != answer.raw_output_contents_size()) Fail("outputs without bytes");
  for (int i = 0; i < answer.outputs_size(); ++i) {
    const auto& out = answer.outputs(i);
    const absl::StatusOr<DType> d = convert::FromDatatype(out.datatype(), out.name());
    const std::vector<int64_t> shape(out.shape().begin(), out.shape().end());
    if (!d.ok() || shape.empty() ||
        ShapeProduct<double>(shape) * DTypeSize(*d) != answer.raw_output_contents(i).size()) {
      Fail(out.name() + ": shape and bytes disagree");
    }
    if (out.name() != "output" && out.name() != "weights") Fail("an output nobody asked for");
  }
#else
  const v1::AttentionResponse answer = ParseResponse(bytes);
  if (answer.id() != request.id() || answer.has_error()) Fail("a response for another request");
  CheckTensor(answer.output(), Query(request).dtype(), "output");
  if (answer.has_weights() != (request.options().weights() != v1::WEIGHTS_NONE)) {
    Fail("weights not as asked");
  }
  if (answer.has_weights()) CheckTensor(answer.weights(), v1::FLOAT32, "weights");
#endif
  CheckAgain(request, *s->models, Hash(data, size), bytes);
  return 0;
}

}  // namespace
}  // namespace fuzz
}  // namespace attention

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return attention::fuzz::TestOneInput(data, size);
}
