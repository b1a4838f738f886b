#include "proto/convert.h"

#include <array>
#include <cstdlib>
#include <iterator>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"

namespace attention {
namespace convert {
namespace {

// `*out` = a view of `t` when `present`.
absl::Status Optional(bool present, const v1::Tensor& t, absl::string_view field,
                      std::optional<TensorView>* out) {
  if (!present) return absl::OkStatus();
  absl::StatusOr<TensorView> v = View(t, field);
  if (!v.ok()) return v.status();
  *out = std::move(*v);
  return absl::OkStatus();
}

absl::Status Required(bool present, const v1::Tensor& t, absl::string_view field, TensorView* out) {
  if (!present) return absl::InvalidArgumentError(absl::StrCat(field, ": missing"));
  absl::StatusOr<TensorView> v = View(t, field);
  if (!v.ok()) return v.status();
  *out = std::move(*v);
  return absl::OkStatus();
}

// The field of attention.v1.Projection for each of kProjectionTensors (same
// order), found once by name.
using ProjectionFields =
    std::array<const google::protobuf::FieldDescriptor*, std::size(kProjectionTensors)>;

const ProjectionFields& WireProjectionFields() {
  static const ProjectionFields fields = [] {
    ProjectionFields f;
    for (size_t i = 0; i < f.size(); ++i) {
      f[i] = v1::Projection::descriptor()->FindFieldByName(kProjectionTensors[i].field_name);
      if (f[i] == nullptr) std::abort();  // the table and the .proto disagree
    }
    return f;
  }();
  return fields;
}

absl::Status OptionsFromWire(const v1::AttentionOptions& o, AttentionArgs* args,
                             ProjectionWeights* inline_weights) {
  AttentionArgs& a = *args;
  if (o.num_heads() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("options.num_heads: must not be negative (got ", o.num_heads(), ")"));
  }
  a.num_heads = o.num_heads();
  a.num_kv_heads = o.num_kv_heads();
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
  switch (o.precision()) {
    case v1::PRECISION_FLOAT32:
      a.precision = Precision::kFloat32;
      break;
    case v1::PRECISION_BFLOAT16:
      a.precision = Precision::kBFloat16;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("options.precision: unknown precision ", static_cast<int>(o.precision())));
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
  if (!o.has_projection()) return absl::OkStatus();
  const v1::Projection& p = o.projection();
  const google::protobuf::Reflection& r = *p.GetReflection();
  for (size_t i = 0; i < std::size(kProjectionTensors); ++i) {
    const google::protobuf::FieldDescriptor* f = WireProjectionFields()[i];
    if (!r.HasField(p, f)) continue;
    const ProjectionTensor& t = kProjectionTensors[i];
    if (absl::Status s = Optional(true, static_cast<const v1::Tensor&>(r.GetMessage(p, f)),
                                  absl::StrCat("options.projection.", t.field_name),
                                  &(inline_weights->*t.member));
        !s.ok()) {
      return s;
    }
  }
  a.projection = inline_weights;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<DType> FromWire(v1::DataType dtype, absl::string_view field) {
  switch (dtype) {
    case v1::FLOAT32:
      return DType::kFloat32;
    case v1::FLOAT16:
      return DType::kFloat16;
    case v1::BFLOAT16:
      return DType::kBFloat16;
    case v1::BOOL:
      return DType::kBool;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": unknown dtype ", static_cast<int>(dtype)));
  }
}

v1::DataType ToWire(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return v1::FLOAT32;
    case DType::kFloat16:
      return v1::FLOAT16;
    case DType::kBFloat16:
      return v1::BFLOAT16;
    case DType::kBool:
      return v1::BOOL;
  }
  return v1::FLOAT32;
}

v1::Precision ToWire(Precision precision) {
  return precision == Precision::kBFloat16 ? v1::PRECISION_BFLOAT16 : v1::PRECISION_FLOAT32;
}

absl::StatusOr<TensorView> View(const v1::Tensor& t, absl::string_view field) {
  if (t.shape_size() > kMaxWireRank) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": rank ", t.shape_size(),
                                                   " is not supported (at most ", kMaxWireRank,
                                                   " dimensions)"));
  }
  absl::StatusOr<DType> dtype = FromWire(t.dtype(), field);
  if (!dtype.ok()) return dtype.status();
  return TensorView{*dtype, {t.shape().begin(), t.shape().end()}, t.data().data(), t.data().size()};
}

v1::Tensor ToWire(const TensorView& view) {
  v1::Tensor t;
  t.set_dtype(ToWire(view.dtype));
  t.mutable_shape()->Assign(view.shape.begin(), view.shape.end());
  t.set_data(view.data, view.byte_size);
  return t;
}

absl::Status FromWire(const v1::AttentionRequest& r, AttentionArgs* args,
                      ProjectionWeights* inline_weights) {
  if (absl::Status s = Required(r.has_query(), r.query(), "query", &args->query); !s.ok()) {
    return s;
  }
  args->key.emplace();
  args->value.emplace();
  if (absl::Status s = Required(r.has_key(), r.key(), "key", &*args->key); !s.ok()) return s;
  if (absl::Status s = Required(r.has_value(), r.value(), "value", &*args->value); !s.ok()) {
    return s;
  }
  return OptionsFromWire(r.options(), args, inline_weights);
}

absl::Status FromWire(const v1::SelfAttentionRequest& r, AttentionArgs* args,
                      ProjectionWeights* inline_weights) {
  args->self_attention = true;
  if (absl::Status s = Required(r.has_input(), r.input(), "input", &args->query); !s.ok()) {
    return s;
  }
  return OptionsFromWire(r.options(), args, inline_weights);
}

absl::Status FromWire(const v1::DecodeRequest& r, AttentionArgs* args,
                      ProjectionWeights* inline_weights) {
  if (r.has_input()) {
    if (r.has_query() || r.has_key() || r.has_value()) {
      return absl::InvalidArgumentError(
          "input: give input (self-attention) or query/key/value, not both");
    }
    args->self_attention = true;
    if (absl::Status s = Required(true, r.input(), "input", &args->query); !s.ok()) return s;
  } else {
    if (absl::Status s = Required(r.has_query(), r.query(), "query", &args->query); !s.ok()) {
      return s;
    }
    if (absl::Status s = Optional(r.has_key(), r.key(), "key", &args->key); !s.ok()) return s;
    if (absl::Status s = Optional(r.has_value(), r.value(), "value", &args->value); !s.ok()) {
      return s;
    }
  }
  return OptionsFromWire(r.options(), args, inline_weights);
}

v1::Projection ToWire(const ProjectionWeights& weights) {
  v1::Projection p;
  const google::protobuf::Reflection& r = *p.GetReflection();
  for (size_t i = 0; i < std::size(kProjectionTensors); ++i) {
    if (const std::optional<TensorView>& t = weights.*kProjectionTensors[i].member) {
      *static_cast<v1::Tensor*>(r.MutableMessage(&p, WireProjectionFields()[i])) = ToWire(*t);
    }
  }
  return p;
}

v1::AttentionOptions ToWire(const AttentionArgs& args) {
  v1::AttentionOptions o;
  o.set_num_heads(static_cast<int32_t>(args.num_heads));
  o.set_num_kv_heads(static_cast<int32_t>(args.num_kv_heads));
  if (args.scale) o.set_scale(*args.scale);
  o.set_causal(args.causal);
  if (args.attn_mask) *o.mutable_attn_mask() = ToWire(*args.attn_mask);
  if (args.key_padding_mask) *o.mutable_key_padding_mask() = ToWire(*args.key_padding_mask);
  o.set_weights(args.weights == WeightsMode::kAveraged  ? v1::WEIGHTS_AVERAGED
                : args.weights == WeightsMode::kPerHead ? v1::WEIGHTS_PER_HEAD
                                                        : v1::WEIGHTS_NONE);
  if (args.projection != nullptr) *o.mutable_projection() = ToWire(*args.projection);
  o.set_precision(ToWire(args.precision));
  return o;
}

}  // namespace convert
}  // namespace attention
