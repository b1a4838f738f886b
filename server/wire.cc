#include "server/wire.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "proto/tensor_view.h"

namespace attention {
namespace server {
namespace {

using wire::ToWire;
using wire::View;

// `*out` = a view of `t` when `present`.
absl::Status Optional(bool present, const v1::Tensor& t, absl::string_view field,
                      std::optional<TensorView>* out) {
  if (!present) return absl::OkStatus();
  absl::StatusOr<TensorView> v = View(t, field);
  if (!v.ok()) return v.status();
  *out = std::move(*v);
  return absl::OkStatus();
}

absl::Status PrepareOptions(const v1::AttentionOptions& o, const ModelRegistry& models,
                            Call* call) {
  AttentionArgs& a = call->args;
  a.num_heads = o.num_heads();
  a.num_kv_heads = o.num_kv_heads();
  if (o.num_heads() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("options.num_heads: must not be negative (got ", o.num_heads(), ")"));
  }
  if (o.has_scale()) a.scale = o.scale();
  a.causal = o.causal();
  switch (o.weights()) {
    case v1::WEIGHTS_NONE:
      a.weights = WeightsMode::kNone;
      break;
    case v1::WEIGHTS_AVERAGED:
      a.weights = WeightsMode::kAveraged;
      break;
    case v1::WEIGHTS_PER_HEAD:
      a.weights = WeightsMode::kPerHead;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("options.weights: unknown mode ", static_cast<int>(o.weights())));
  }
  if (absl::Status s =
          Optional(o.has_attn_mask(), o.attn_mask(), "options.attn_mask", &a.attn_mask);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = Optional(o.has_key_padding_mask(), o.key_padding_mask(),
                                "options.key_padding_mask", &a.key_padding_mask);
      !s.ok()) {
    return s;
  }
  if (!o.model().empty()) {
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
  if (o.has_projection()) {
    const v1::Projection& p = o.projection();
    ProjectionWeights& w = call->projection;
    const struct {
      bool present;
      const v1::Tensor& tensor;
      const char* field;
      std::optional<TensorView>* slot;
    } fields[] = {
        {p.has_in_proj_weight(), p.in_proj_weight(), "options.projection.in_proj_weight",
         &w.in_proj_weight},
        {p.has_q_proj_weight(), p.q_proj_weight(), "options.projection.q_proj_weight",
         &w.q_proj_weight},
        {p.has_k_proj_weight(), p.k_proj_weight(), "options.projection.k_proj_weight",
         &w.k_proj_weight},
        {p.has_v_proj_weight(), p.v_proj_weight(), "options.projection.v_proj_weight",
         &w.v_proj_weight},
        {p.has_in_proj_bias(), p.in_proj_bias(), "options.projection.in_proj_bias",
         &w.in_proj_bias},
        {p.has_out_proj_weight(), p.out_proj_weight(), "options.projection.out_proj_weight",
         &w.out_proj_weight},
        {p.has_out_proj_bias(), p.out_proj_bias(), "options.projection.out_proj_bias",
         &w.out_proj_bias},
    };
    for (const auto& f : fields) {
      if (absl::Status s = Optional(f.present, f.tensor, f.field, f.slot); !s.ok()) return s;
    }
    a.projection = &w;
  }
  return absl::OkStatus();
}

absl::Status Required(bool present, const v1::Tensor& t, absl::string_view field, TensorView* out) {
  if (!present) return absl::InvalidArgumentError(absl::StrCat(field, ": missing"));
  absl::StatusOr<TensorView> v = View(t, field);
  if (!v.ok()) return v.status();
  *out = std::move(*v);
  return absl::OkStatus();
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

absl::Status PrepareCall(const v1::AttentionRequest& r, const ModelRegistry& models, Call* call) {
  AttentionArgs& a = call->args;
  if (absl::Status s = Required(r.has_query(), r.query(), "query", &a.query); !s.ok()) return s;
  a.key.emplace();
  a.value.emplace();
  if (absl::Status s = Required(r.has_key(), r.key(), "key", &*a.key); !s.ok()) return s;
  if (absl::Status s = Required(r.has_value(), r.value(), "value", &*a.value); !s.ok()) return s;
  call->output_dtype = a.query.dtype;
  return PrepareOptions(r.options(), models, call);
}

absl::Status PrepareCall(const v1::SelfAttentionRequest& r, const ModelRegistry& models,
                         Call* call) {
  AttentionArgs& a = call->args;
  a.self_attention = true;
  if (absl::Status s = Required(r.has_input(), r.input(), "input", &a.query); !s.ok()) return s;
  call->output_dtype = a.query.dtype;
  return PrepareOptions(r.options(), models, call);
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
