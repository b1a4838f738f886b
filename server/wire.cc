#include "server/wire.h"

#include <algorithm>
#include <cstdlib>
#include <new>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "grpcpp/support/proto_buffer_reader.h"
#include "grpcpp/support/slice.h"
#include "proto/convert.h"

namespace attention {
namespace server {
namespace {

using wire::ToWire;

// Resolves options.model (NotFound when unknown) after wire::FromWire filled
// everything else.
absl::Status ResolveModel(const v1::AttentionOptions& o, const ModelRegistry& models,
                          AttentionArgs& a) {
  if (o.model().empty()) return absl::OkStatus();
  if (o.has_projection()) {
    return absl::InvalidArgumentError("options: give a model or projection weights, not both");
  }
  const Model* m = models.Find(o.model());
  if (m == nullptr) {
    return absl::NotFoundError(absl::StrCat("options.model: no model '", o.model(),
                                            "' on this server (it has: ", models.Names(), ")"));
  }
  if (a.num_heads == 0) {
    a.num_heads = m->info().num_heads;
  } else if (a.num_heads != m->info().num_heads) {
    return absl::InvalidArgumentError(
        absl::StrCat("options.num_heads: ", a.num_heads, " does not match model '", o.model(),
                     "' (", m->info().num_heads, " heads); send 0 or ", m->info().num_heads));
  }
  a.projection = &m->weights();
  return absl::OkStatus();
}

template <typename Request>
absl::Status Prepare(const Request& r, const ModelRegistry& models, Call* call) {
  if (absl::Status s = wire::FromWire(r, &call->args, &call->projection); !s.ok()) return s;
  call->output_dtype = call->args.query.dtype;
  return ResolveModel(r.options(), models, call->args);
}

// Protobuf's wire format, for framing responses around tensor bytes that are
// not copied into a message: varints and length-delimited fields.
void AppendVarint(uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

uint64_t VarintSize(uint64_t v) {
  uint64_t n = 1;
  for (; v >= 0x80; v >>= 7) ++n;
  return n;
}

void AppendFieldHeader(int field, uint64_t length, std::string* out) {
  AppendVarint((static_cast<uint64_t>(field) << 3) | 2, out);  // wire type 2: length-delimited
  AppendVarint(length, out);
}

// A result tensor whose bytes gRPC sends as they are: 64-byte aligned memory,
// left uninitialized (the core writes every element), owned by a slice and
// freed when gRPC drops its last reference.
struct SliceTensor {
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  grpc::Slice bytes;
  char* data = nullptr;
  bool present = false;

  char* Allocate(DType d, const std::vector<int64_t>& s, size_t size) {
    dtype = d;
    shape = s;
    present = true;
    alignas(64) static char empty[64];
    if (size == 0) return empty;  // nothing is written; not null (null means "no buffer")
    void* p = std::aligned_alloc(64, (size + 63) / 64 * 64);
    if (p == nullptr) throw std::bad_alloc();
    bytes = grpc::Slice(p, size, [](void* q) { std::free(q); });
    data = static_cast<char*>(p);
    return data;
  }

  // Appends this tensor as message field `field` (a v1::Tensor): its dtype and
  // shape to `head`, then its bytes as a slice of their own.
  void Encode(int field, std::string* head, std::vector<grpc::Slice>* slices) const {
    v1::Tensor meta;
    meta.set_dtype(ToWire(dtype));
    meta.mutable_shape()->Assign(shape.begin(), shape.end());
    const std::string m = meta.SerializeAsString();
    const uint64_t n = bytes.size();
    const uint64_t data_field =
        n == 0 ? 0 : VarintSize((v1::Tensor::kDataFieldNumber << 3) | 2) + VarintSize(n) + n;
    AppendFieldHeader(field, m.size() + data_field, head);
    head->append(m);
    if (n == 0) return;
    AppendFieldHeader(v1::Tensor::kDataFieldNumber, n, head);
    slices->emplace_back(*head);
    head->clear();
    slices->push_back(bytes);  // a reference to the core's buffer
  }
};

int64_t Elements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // the core validated the shape
  return n;
}

// The core's OutputBuffers for a response: float32 results are written
// straight into the buffers that go on the wire; float16/bfloat16 output
// through one float32 staging buffer (ConvertOutput).
class ResponseOutputs final : public OutputBuffers {
 public:
  explicit ResponseOutputs(DType output_dtype) : dtype_(output_dtype) {}

  float* Output(const std::vector<int64_t>& shape) override {
    const int64_t n = Elements(shape);
    char* bytes = output_.Allocate(dtype_, shape, n * DTypeSize(dtype_));
    if (dtype_ == DType::kFloat32) return reinterpret_cast<float*>(bytes);
    staging_.resize(std::max<int64_t>(n, 1));  // not null when empty
    return staging_.data();
  }

  float* Weights(const std::vector<int64_t>& shape) override {
    const int64_t n = Elements(shape);
    return reinterpret_cast<float*>(weights_.Allocate(DType::kFloat32, shape, n * sizeof(float)));
  }

  void ConvertOutput() {
    if (output_.bytes.size() > 0 && !staging_.empty()) {
      ConvertFromFloat32(staging_.data(), output_.bytes.size() / DTypeSize(dtype_), dtype_,
                         output_.data);
    }
  }

  // An AttentionResponse in field order (id, output, weights).
  grpc::ByteBuffer Encode(const std::string& id) const {
    std::string head;
    std::vector<grpc::Slice> slices;
    if (!id.empty()) {
      AppendFieldHeader(v1::AttentionResponse::kIdFieldNumber, id.size(), &head);
      head.append(id);
    }
    if (output_.present) output_.Encode(v1::AttentionResponse::kOutputFieldNumber, &head, &slices);
    if (weights_.present) {
      weights_.Encode(v1::AttentionResponse::kWeightsFieldNumber, &head, &slices);
    }
    if (!head.empty() || slices.empty()) slices.emplace_back(head);
    return grpc::ByteBuffer(slices.data(), slices.size());
  }

 private:
  DType dtype_;
  SliceTensor output_;
  SliceTensor weights_;
  std::vector<float> staging_;
};

template <typename Request>
absl::Status Parse(const grpc::ByteBuffer& bytes, Request* request) {
  grpc::ByteBuffer shared(bytes);  // the same slices, not a copy
  grpc::ProtoBufferReader reader(&shared);
  if (!reader.status().ok() || !request->ParseFromZeroCopyStream(&reader)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "request: not a valid ", Request::descriptor()->full_name(), " message"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<ModelRegistry>> ModelRegistry::Load(
    const std::vector<std::string>& specs) {
  auto registry = std::make_unique<ModelRegistry>();
  for (const std::string& spec : specs) {
    std::pair<std::string, std::string> kv = absl::StrSplit(spec, absl::MaxSplits('=', 1));
    if (kv.first.empty() || kv.second.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--model ", spec, ": expected NAME=PATH (e.g. demo=models/demo.safetensors)"));
    }
    if (registry->models_.count(kv.first)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--model ", spec, ": the name '", kv.first, "' is given twice"));
    }
    absl::StatusOr<std::unique_ptr<const Model>> m = LoadModel(kv.first, kv.second);
    if (!m.ok()) {
      return absl::Status(m.status().code(),
                          absl::StrCat("--model ", spec, ": ", m.status().message()));
    }
    registry->models_.emplace(kv.first, std::move(*m));
  }
  return registry;
}

const Model* ModelRegistry::Find(const std::string& name) const {
  auto it = models_.find(name);
  return it == models_.end() ? nullptr : it->second.get();
}

std::vector<const Model*> ModelRegistry::All() const {
  std::vector<const Model*> all;
  for (const auto& [name, m] : models_) all.push_back(m.get());
  return all;
}

std::string ModelRegistry::Names() const {
  if (models_.empty()) return "no models";
  std::vector<std::string> names;
  for (const auto& [name, m] : models_) names.push_back(name);
  return absl::StrJoin(names, ", ");
}

absl::Status PrepareCall(const v1::AttentionRequest& r, const ModelRegistry& models,
                         Call* call) {
  return Prepare(r, models, call);
}

absl::Status PrepareCall(const v1::SelfAttentionRequest& r, const ModelRegistry& models,
                         Call* call) {
  return Prepare(r, models, call);
}

absl::Status ParseRequest(const grpc::ByteBuffer& bytes, v1::AttentionRequest* request) {
  return Parse(bytes, request);
}

absl::Status ParseRequest(const grpc::ByteBuffer& bytes, v1::SelfAttentionRequest* request) {
  return Parse(bytes, request);
}

absl::Status Compute(const Call& call, const ComputeOptions& options, const std::string& id,
                     grpc::ByteBuffer* response) {
  ResponseOutputs outputs(call.output_dtype);
  if (absl::Status s = ComputeAttention(call.args, options, &outputs); !s.ok()) return s;
  try {
    outputs.ConvertOutput();
    *response = outputs.Encode(id);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("out of memory encoding the response");
  }
  return absl::OkStatus();
}

grpc::ByteBuffer EncodeError(const std::string& id, const absl::Status& status) {
  v1::AttentionResponse r;
  r.set_id(id);
  const grpc::Status g = ToGrpcStatus(status);
  r.mutable_error()->set_code(g.error_code());
  r.mutable_error()->set_message(g.error_message());
  grpc::Slice bytes(r.SerializeAsString());
  return grpc::ByteBuffer(&bytes, 1);
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  auto code = static_cast<grpc::StatusCode>(status.code());
  if (status.code() == absl::StatusCode::kUnknown) code = grpc::StatusCode::INTERNAL;
  return grpc::Status(code, std::string(status.message()));
}

}  // namespace server
}  // namespace attention
