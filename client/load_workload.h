// attention-client load: what the load tester sends. A Workload is a small
// pool of requests built once from the command line (random data of the
// given shapes, or .npy tensors), with the naive reference's result of each
// when --verify asks for checks, and the figures the report derives from a
// request (its size, its FLOPs, a one-line description). Each entry is also
// serialized once (Workload::encoded): unary calls send those bytes as they
// are, so a call costs no encoding and no copy of its tensors.
//
//   absl::StatusOr<RpcKind> rpc = ParseRpcKind(args.Get("rpc", "self-attention"));
//   absl::StatusOr<Workload> w = MakeWorkload(args, *rpc, probe, /*verify_percent=*/10);
//   const v1::SelfAttentionRequest& r = w->self[i % w->size()];
#ifndef CLIENT_LOAD_WORKLOAD_H_
#define CLIENT_LOAD_WORKLOAD_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "client/args.h"
#include "client/client.h"
#include "core/model.h"
#include "core/reference.h"
#include "grpcpp/support/byte_buffer.h"
#include "inference/grpc_service.pb.h"

namespace attention {
namespace client {

// The RPC a load test calls (--rpc).
enum class RpcKind {
  kAttention,      // AttentionService/Attention (or StreamAttention)
  kSelfAttention,  // AttentionService/SelfAttention (or StreamSelfAttention)
  kHealth,         // grpc.health.v1.Health/Check
  kDecode,         // AttentionService/StreamDecode (client/load_decode.h)
  // inference.GRPCInferenceService/ModelInfer (the Open Inference Protocol):
  // the self-attention pool, each request sent as a ModelInferRequest.
  kModelInfer,
};

// --rpc: "attention", "self-attention", "health", "decode" or "model-infer";
// InvalidArgument naming
// the flag otherwise.
absl::StatusOr<RpcKind> ParseRpcKind(absl::string_view value);
// The --rpc spelling of `kind`.
const char* RpcKindName(RpcKind kind);

// The requests of a load test. Immutable once made: the drivers read it from
// many threads at once.
struct Workload {
  RpcKind rpc = RpcKind::kSelfAttention;
  std::vector<v1::AttentionRequest> attention;  // the pool when rpc is kAttention
  std::vector<v1::SelfAttentionRequest> self;   // the pool otherwise (one empty entry for health)
  std::vector<grpc::ByteBuffer> encoded;        // each pool entry serialized (health: empty;
                                                // model-infer: as a ModelInferRequest)
  std::vector<ReferenceResult> references;      // per pool entry, when verifying; else empty
  double tolerance = 1e-4;                      // relative max error a check allows (wire dtype)
  double request_bytes = 0;                     // serialized size of one request
  double flops = 0;                             // per request (bench/README.md's formula)
  std::string description;                      // one line for the report

  // --rpc decode (client/load_decode.h): the pool's token sequences, each
  // [context + steps, E] float32 row-major; the references (when verifying)
  // are per step: entry i's step j at i * steps + j.
  std::vector<std::vector<float>> tokens;
  int64_t context = 0, steps = 0, sequences = 0, embed = 0;
  DType wire = DType::kFloat32;
  v1::AttentionOptions decode_options;

  // Entries in the pool (>= 1 once made): request i sends entry i % size().
  size_t size() const {
    return rpc == RpcKind::kAttention ? attention.size()
           : rpc == RpcKind::kDecode  ? tokens.size()
                                      : self.size();
  }
};

// A self-attention request as the Open Inference Protocol's ModelInferRequest:
// model_name its model (or the built-in "attention", its input then sent as
// query, key and value), the input as `query` (raw bytes), the options as
// parameters and the masks as inputs.
inference::ModelInferRequest ToModelInfer(const v1::SelfAttentionRequest& request);

// Pool entry `index` as a stream message with `id`: the entry's bytes
// (shared, not copied) followed by the serialized id field. A parser merges
// concatenated messages, so the server reads the entry with this id.
grpc::ByteBuffer EncodedWithId(const Workload& w, size_t index, const std::string& id);

// The weights of `model` for --verify's references, from --model-file (default
// models/NAME.safetensors); InvalidArgument saying so when they cannot be read.
absl::StatusOr<std::unique_ptr<const Model>> LoadModelToVerify(const CliArgs& args,
                                                               const std::string& model);

// Builds the workload of `args` (shapes, --model, --weights, --wire-dtype,
// .npy inputs). With --model it asks the server (through `probe`) for the
// model's shape; with verify_percent > 0 it computes the reference of every
// pool entry (reading the model's weights from --model-file). Errors:
// InvalidArgument for bad flags or a case the reference refuses (usage),
// NotFound for a model the server lacks, the call's status when the server
// cannot be asked, an .npy file's read error.
absl::StatusOr<Workload> MakeWorkload(const CliArgs& args, RpcKind rpc, AttentionClient& probe,
                                      double verify_percent);

}  // namespace client
}  // namespace attention

#endif  // CLIENT_LOAD_WORKLOAD_H_
