#include "client/load_workload.h"

#include <cstdio>
#include <memory>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/model.h"
#include "grpc/health/v1/health.pb.h"
#include "grpcpp/impl/codegen/proto_utils.h"

namespace attention {
namespace client {
namespace {

// The shapes of the requests, from the flags and the server's model.
struct Shape {
  int64_t B = 1, L = 128, S = 128, E = 512, H = 8, kv_heads = 0, kdim = 0, vdim = 0;
};

// The model's shape (when --model names one) overridden by the flags; sets
// the model name and the heads in `options`.
absl::StatusOr<Shape> ReadShape(const CliArgs& args, AttentionClient& probe,
                                v1::AttentionOptions* options) {
  const std::string model = args.Get("model");
  Shape sh;
  int64_t E = 512, H = 8;
  if (!model.empty()) {
    absl::StatusOr<v1::ListModelsResponse> models = probe.ListModels({10});
    if (!models.ok()) return models.status();
    bool found = false;
    for (const v1::ModelInfo& m : models->models()) {
      if (m.name() != model) continue;
      found = true;
      E = m.embed_dim(), H = m.num_heads(), sh.kdim = m.kdim(), sh.vdim = m.vdim();
    }
    if (!found) return absl::NotFoundError(absl::StrCat("--model ", model, ": not on the server"));
    options->set_model(model);
  }
  absl::StatusOr<int64_t> B = args.GetInt("batch", 1), L = args.GetInt("seq", 128),
                          embed = args.GetInt("embed", E), heads = args.GetInt("heads", H);
  for (const auto* v : {&B, &L, &embed, &heads}) {
    if (!v->ok()) return v->status();
  }
  absl::StatusOr<int64_t> S = args.GetInt("kv-seq", *L), kv_heads = args.GetInt("kv-heads", 0);
  if (!S.ok()) return S.status();
  if (!kv_heads.ok()) return kv_heads.status();
  if (*B <= 0 || *L <= 0 || *S <= 0 || *embed <= 0 || *heads <= 0) {
    return absl::InvalidArgumentError(
        "--batch, --seq, --kv-seq, --embed, --heads must be positive");
  }
  sh.B = *B, sh.L = *L, sh.S = *S, sh.E = *embed, sh.H = *heads, sh.kv_heads = *kv_heads;
  if (sh.kdim == 0) sh.kdim = sh.E;
  if (sh.vdim == 0) sh.vdim = sh.E;
  if (model.empty() && sh.kv_heads > 0 && sh.H % sh.kv_heads == 0) {
    sh.kdim = sh.vdim = sh.E / sh.H * sh.kv_heads;
  }
  options->set_num_heads(static_cast<int32_t>(sh.H));
  options->set_num_kv_heads(static_cast<int32_t>(sh.kv_heads));
  return sh;
}

// A pool of requests with different (seeded random) data, or one of the
// .npy tensors; sets the pool and request_bytes of `w`.
absl::Status FillPool(const CliArgs& args, const Shape& sh, const v1::AttentionOptions& options,
                      DType wire, Workload* w) {
  const bool npy = args.Has("input") || args.Has("query");
  const int pool = npy ? 1 : 4;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1, 1);
  auto random = [&](const std::vector<int64_t>& shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> data(n);
    for (float& x : data) x = u(rng);
    return MakeTensor(shape, data.data(), wire);
  };
  auto from_npy = [&](const std::string& flag) -> absl::StatusOr<v1::Tensor> {
    absl::StatusOr<NpyArray> a = ReadNpy(args.Get(flag));
    if (!a.ok()) return a.status();
    return FromNpy(*a, wire);
  };
  for (int i = 0; i < pool; ++i) {
    if (w->rpc == RpcKind::kSelfAttention || w->rpc == RpcKind::kModelInfer) {
      v1::SelfAttentionRequest r;
      if (npy) {
        absl::StatusOr<v1::Tensor> t = from_npy("input");
        if (!t.ok()) return t.status();
        *r.mutable_input() = *t;
      } else {
        *r.mutable_input() = random({sh.B, sh.L, sh.E});
      }
      *r.mutable_options() = options;
      w->request_bytes = static_cast<double>(r.ByteSizeLong());
      w->self.push_back(std::move(r));
    } else {
      v1::AttentionRequest r;
      if (npy) {
        for (const auto& [flag, field] :
             {std::pair<std::string, v1::Tensor*>{"query", r.mutable_query()},
              std::pair<std::string, v1::Tensor*>{"key", r.mutable_key()},
              std::pair<std::string, v1::Tensor*>{"value", r.mutable_value()}}) {
          absl::StatusOr<v1::Tensor> t = from_npy(flag);
          if (!t.ok()) return t.status();
          *field = *t;
        }
      } else {
        *r.mutable_query() = random({sh.B, sh.L, sh.E});
        *r.mutable_key() = random({sh.B, sh.S, sh.kdim});
        *r.mutable_value() = random({sh.B, sh.S, sh.vdim});
      }
      *r.mutable_options() = options;
      w->request_bytes = static_cast<double>(r.ByteSizeLong());
      w->attention.push_back(std::move(r));
    }
  }
  return absl::OkStatus();
}

// The naive reference's result of every pool entry, read from the requests
// exactly as the server reads them (with the model's weights from
// --model-file when --model names one).
absl::Status ComputeReferences(const CliArgs& args, Workload* w) {
  const std::string model = args.Get("model");
  std::unique_ptr<const Model> weights_model;
  if (!model.empty()) {
    absl::StatusOr<std::unique_ptr<const Model>> m = LoadModelToVerify(args, model);
    if (!m.ok()) return m.status();
    weights_model = std::move(*m);
  }
  const ProjectionWeights* pw = weights_model ? &weights_model->weights() : nullptr;
  std::fprintf(stderr, "load: computing %zu reference result(s) for --verify...\n", w->size());
  for (size_t i = 0; i < w->size(); ++i) {
    AttentionArgs a;  // views of the request: exactly what the server reads
    ProjectionWeights no_inline;
    absl::Status read = w->rpc != RpcKind::kAttention
                            ? convert::FromWire(w->self[i], &a, &no_inline)
                            : convert::FromWire(w->attention[i], &a, &no_inline);
    if (!read.ok()) return read;
    a.projection = pw;
    if (pw != nullptr && a.num_heads == 0) a.num_heads = weights_model->info().num_heads;
    absl::StatusOr<ReferenceResult> ref = ReferenceAttention(a);
    if (!ref.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("the reference refuses this request: ", ref.status().message()));
    }
    w->references.push_back(std::move(*ref));
  }
  return absl::OkStatus();
}

// Serializes every pool entry into w->encoded; health checks send an empty
// HealthCheckRequest (the server's overall status).
void EncodePool(Workload* w) {
  auto encode = [w](const google::protobuf::MessageLite& m) {
    grpc::ByteBuffer bytes;
    bool own = false;
    // Serializing an initialized proto3 message into memory cannot fail.
    (void)grpc::SerializationTraits<google::protobuf::MessageLite>::Serialize(m, &bytes, &own);
    w->encoded.push_back(std::move(bytes));
  };
  if (w->rpc == RpcKind::kHealth) return encode(grpc::health::v1::HealthCheckRequest());
  for (const v1::AttentionRequest& r : w->attention) encode(r);
  for (const v1::SelfAttentionRequest& r : w->self) {
    if (w->rpc == RpcKind::kModelInfer) {
      encode(ToModelInfer(r));
    } else {
      encode(r);
    }
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<const Model>> LoadModelToVerify(const CliArgs& args,
                                                               const std::string& model) {
  const std::string path = args.Get("model-file", "models/" + model + ".safetensors");
  absl::StatusOr<std::unique_ptr<const Model>> m = LoadModel(model, path);
  if (!m.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--verify needs the model's weights: ", m.status().message(), " (give --model-file PATH)"));
  }
  return m;
}

absl::StatusOr<RpcKind> ParseRpcKind(absl::string_view value) {
  if (value == "attention") return RpcKind::kAttention;
  if (value == "self-attention") return RpcKind::kSelfAttention;
  if (value == "health") return RpcKind::kHealth;
  if (value == "decode") return RpcKind::kDecode;
  if (value == "model-infer") return RpcKind::kModelInfer;
  return absl::InvalidArgumentError(absl::StrCat(
      "--rpc ", value, ": expected attention, self-attention, health, decode or model-infer"));
}

const char* RpcKindName(RpcKind kind) {
  switch (kind) {
    case RpcKind::kAttention:
      return "attention";
    case RpcKind::kSelfAttention:
      return "self-attention";
    case RpcKind::kDecode:
      return "decode";
    case RpcKind::kModelInfer:
      return "model-infer";
    case RpcKind::kHealth:
      break;
  }
  return "health";
}

inference::ModelInferRequest ToModelInfer(const v1::SelfAttentionRequest& r) {
  inference::ModelInferRequest m;
  m.set_id(r.id());
  const v1::AttentionOptions& o = r.options();
  const bool builtin = o.model().empty();
  m.set_model_name(builtin ? "attention" : o.model());
  auto input = [&m](const char* name, const v1::Tensor& t) {
    auto* in = m.add_inputs();
    in->set_name(name);
    in->set_datatype(t.dtype() == v1::BOOL       ? "BOOL"
                     : t.dtype() == v1::FLOAT16  ? "FP16"
                     : t.dtype() == v1::BFLOAT16 ? "BF16"
                                                 : "FP32");
    in->mutable_shape()->CopyFrom(t.shape());
    m.add_raw_input_contents(t.data());
  };
  input("query", r.input());
  if (builtin) {
    input("key", r.input());
    input("value", r.input());
    (*m.mutable_parameters())["num_heads"].set_int64_param(o.num_heads());
    if (o.num_kv_heads() > 0) {
      (*m.mutable_parameters())["num_kv_heads"].set_int64_param(o.num_kv_heads());
    }
  }
  if (o.has_attn_mask()) input("attn_mask", o.attn_mask());
  if (o.has_key_padding_mask()) input("key_padding_mask", o.key_padding_mask());
  auto& p = *m.mutable_parameters();
  if (o.causal()) p["causal"].set_bool_param(true);
  if (o.has_scale()) p["scale"].set_double_param(o.scale());
  if (o.weights() != v1::WEIGHTS_NONE) {
    p["weights"].set_string_param(o.weights() == v1::WEIGHTS_PER_HEAD ? "per-head" : "average");
  }
  if (o.precision() == v1::PRECISION_BFLOAT16) p["precision"].set_string_param("bfloat16");
  return m;
}

grpc::ByteBuffer EncodedWithId(const Workload& w, size_t index, const std::string& id) {
  std::string id_field;
  if (w.rpc == RpcKind::kAttention) {
    v1::AttentionRequest r;
    r.set_id(id);
    r.SerializeToString(&id_field);
  } else {
    v1::SelfAttentionRequest r;
    r.set_id(id);
    r.SerializeToString(&id_field);
  }
  std::vector<grpc::Slice> slices;
  (void)w.encoded[index].Dump(&slices);  // references to the entry's slices
  slices.emplace_back(id_field);
  return grpc::ByteBuffer(slices.data(), slices.size());
}

absl::StatusOr<Workload> MakeWorkload(const CliArgs& args, RpcKind rpc, AttentionClient& probe,
                                      double verify_percent) {
  const std::string wire_name = args.Get("wire-dtype", "float32");
  const std::string weights_name = args.Get("weights", "none");
  absl::StatusOr<DType> wire = ParseWireDType(wire_name);
  if (!wire.ok()) return wire.status();
  absl::StatusOr<WeightsMode> weights = ParseWeightsMode(weights_name);
  if (!weights.ok()) return weights.status();
  const std::string precision_name = args.Get("precision", "float32");
  absl::StatusOr<Precision> precision = ParsePrecision(precision_name);
  if (!precision.ok()) return precision.status();
  Workload w;
  w.rpc = rpc;
  if (rpc == RpcKind::kHealth) {
    w.description = "grpc.health.v1.Health/Check";
    w.self.resize(1);
    EncodePool(&w);
    return w;
  }
  if (*wire == DType::kFloat16) w.tolerance = 1e-2;
  // Bfloat16 products err about as much as a bfloat16 wire (their inputs
  // are rounded alike).
  if (*wire == DType::kBFloat16 || *precision == Precision::kBFloat16) w.tolerance = 4e-2;
  v1::AttentionOptions options;
  absl::StatusOr<Shape> sh = ReadShape(args, probe, &options);
  if (!sh.ok()) return sh.status();
  options.set_causal(args.Switch("causal"));
  options.set_weights(WireWeightsMode(*weights));
  options.set_precision(convert::ToWire(*precision));
  if (absl::Status st = FillPool(args, *sh, options, *wire, &w); !st.ok()) return st;
  EncodePool(&w);

  const std::string model = args.Get("model");
  const double b = sh->B, l = sh->L, s = rpc != RpcKind::kAttention ? sh->L : sh->S;
  const double E = sh->E;
  w.flops = 4.0 * b * l * s * E * (options.causal() ? 0.5 : 1.0);
  if (!model.empty()) w.flops += 2.0 * b * E * (2 * l * E + s * (sh->kdim + sh->vdim));
  w.description =
      absl::StrCat(RpcKindName(rpc), " B=", sh->B, " L=", sh->L,
                   rpc == RpcKind::kAttention ? absl::StrCat(" S=", sh->S) : "", " E=", sh->E,
                   " H=", sh->H, model.empty() ? "" : " model " + model,
                   options.causal() ? " causal" : "", " weights ", weights_name, " wire ",
                   wire_name, *precision == Precision::kBFloat16 ? " precision bfloat16" : "");
  if (verify_percent > 0) {
    if (absl::Status st = ComputeReferences(args, &w); !st.ok()) return st;
  }
  return w;
}

}  // namespace client
}  // namespace attention
