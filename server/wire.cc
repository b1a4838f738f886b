#include "server/wire.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
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

// Writes results into an AttentionResponse: float32 straight into the
// message's bytes; float16/bfloat16 output through one float32 buffer.
class ResponseOutputs final : public OutputBuffers {
 public:
  ResponseOutputs(v1::AttentionResponse* response, DType output_dtype)
      : response_(response), dtype_(output_dtype) {}

  float* Output(const std::vector<int64_t>& shape) override {
    v1::Tensor* t = response_->mutable_output();
    const int64_t n = Fill(shape, dtype_, t);
    if (dtype_ == DType::kFloat32) return Bytes(t, n);
    staging_.resize(n);
    return staging_.data();
  }

  float* Weights(const std::vector<int64_t>& shape) override {
    v1::Tensor* t = response_->mutable_weights();
    return Bytes(t, Fill(shape, DType::kFloat32, t));
  }

  // Converts a staged float16/bfloat16 output into the response.
  void Finish() {
    if (staging_.empty()) return;
    std::string* data = response_->mutable_output()->mutable_data();
    data->resize(staging_.size() * DTypeSize(dtype_));
    ConvertFromFloat32(staging_.data(), staging_.size(), dtype_, data->data());
  }

 private:
  static int64_t Fill(const std::vector<int64_t>& shape, DType dtype, v1::Tensor* t) {
    t->set_dtype(ToWire(dtype));
    t->mutable_shape()->Assign(shape.begin(), shape.end());
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }

  static float* Bytes(v1::Tensor* t, int64_t n) {
    std::string* data = t->mutable_data();
    data->resize(n * sizeof(float));
    return reinterpret_cast<float*>(data->data());  // operator new: aligned for float
  }

  v1::AttentionResponse* response_;
  DType dtype_;
  std::vector<float> staging_;
};

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

absl::Status Compute(const Call& call, const ComputeOptions& options,
                     v1::AttentionResponse* response) {
  ResponseOutputs outputs(response, call.output_dtype);
  absl::Status s = ComputeAttention(call.args, options, &outputs);
  if (s.ok()) {
    try {
      outputs.Finish();
    } catch (const std::bad_alloc&) {
      s = absl::ResourceExhaustedError("out of memory converting the output");
    }
  }
  if (!s.ok()) {
    response->clear_output();
    response->clear_weights();
  }
  return s;
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  auto code = static_cast<grpc::StatusCode>(status.code());
  if (status.code() == absl::StatusCode::kUnknown) code = grpc::StatusCode::INTERNAL;
  return grpc::Status(code, std::string(status.message()));
}

}  // namespace server
}  // namespace attention
