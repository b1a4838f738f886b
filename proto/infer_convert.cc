#include "proto/infer_convert.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "proto/convert.h"

namespace attention {
namespace convert {
namespace {

using Input = inference::ModelInferRequest::InferInputTensor;

constexpr const char* kInputs[] = {"query", "key", "value", "attn_mask", "key_padding_mask"};
constexpr const char* kParameters[] = {"causal", "weights",   "precision",
                                       "scale",  "num_heads", "num_kv_heads"};

absl::Status Bad(absl::string_view what, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat(what, ": ", problem));
}

// A view of input `i`'s elements: its raw bytes, or its typed contents.
absl::StatusOr<TensorView> ViewOf(const inference::ModelInferRequest& r, int i, bool mask) {
  const Input& in = r.inputs(i);
  const std::string& name = in.name();
  absl::StatusOr<DType> dtype = FromDatatype(in.datatype(), name);
  if (!dtype.ok()) return dtype.status();
  if (mask ? *dtype != DType::kBool && *dtype != DType::kFloat32 : *dtype == DType::kBool) {
    return Bad(name, absl::StrCat("datatype ", in.datatype(), " is not taken here (",
                                  mask ? "BOOL or FP32" : "FP32, FP16 or BF16", ")"));
  }
  if (in.shape_size() > kMaxWireRank) {
    return Bad(name, absl::StrCat("shape of ", in.shape_size(), " dimensions (rank at most 4)"));
  }
  for (int64_t d : in.shape()) {
    if (d < 0) return Bad(name, absl::StrCat("shape has a negative dimension (", d, ")"));
  }
  if (!in.parameters().empty()) {
    return Bad(
        name, absl::StrCat("input parameters are not served (got '", in.parameters().begin()->first,
                           "'; shared memory is not supported: send the tensor's bytes)"));
  }
  TensorView v{*dtype, {in.shape().begin(), in.shape().end()}, nullptr, 0};
  const inference::InferTensorContents& c = in.contents();
  const int typed = c.bool_contents_size() + c.int_contents_size() + c.int64_contents_size() +
                    c.uint_contents_size() + c.uint64_contents_size() + c.fp32_contents_size() +
                    c.fp64_contents_size() + c.bytes_contents_size();
  if (r.raw_input_contents_size() > 0) {
    if (typed > 0) {
      return Bad(name, "both raw_input_contents and typed contents (send one or the other)");
    }
    const std::string& raw = r.raw_input_contents(i);
    v.data = raw.data();
    v.byte_size = raw.size();
    return v;
  }
  if (*dtype == DType::kFloat32 && typed == c.fp32_contents_size()) {
    v.data = c.fp32_contents().data();
    v.byte_size = static_cast<size_t>(c.fp32_contents_size()) * sizeof(float);
    return v;
  }
  if (*dtype == DType::kBool && typed == c.bool_contents_size()) {
    static_assert(sizeof(bool) == 1, "bool_contents are viewed as bytes");
    v.data = c.bool_contents().data();
    v.byte_size = static_cast<size_t>(c.bool_contents_size());
    return v;
  }
  return Bad(name, absl::StrCat("contents do not match datatype ", in.datatype(),
                                " (FP32 in fp32_contents, BOOL in bool_contents; FP16 and BF16 "
                                "only as raw_input_contents)"));
}

absl::Status BoolParameter(const inference::InferParameter& p, absl::string_view name, bool* out) {
  if (p.parameter_choice_case() != inference::InferParameter::kBoolParam) {
    return Bad(absl::StrCat("parameter ", name), "expected a bool_param");
  }
  *out = p.bool_param();
  return absl::OkStatus();
}

absl::Status StringParameter(const inference::InferParameter& p, absl::string_view name,
                             std::string* out) {
  if (p.parameter_choice_case() != inference::InferParameter::kStringParam) {
    return Bad(absl::StrCat("parameter ", name), "expected a string_param");
  }
  *out = p.string_param();
  return absl::OkStatus();
}

absl::Status IntParameter(const inference::InferParameter& p, absl::string_view name,
                          int64_t* out) {
  if (p.parameter_choice_case() == inference::InferParameter::kInt64Param) {
    *out = p.int64_param();
  } else if (p.parameter_choice_case() == inference::InferParameter::kUint64Param &&
             p.uint64_param() <= (uint64_t{1} << 31)) {
    *out = static_cast<int64_t>(p.uint64_param());
  } else {
    return Bad(absl::StrCat("parameter ", name), "expected an int64_param");
  }
  if (*out < 0 || *out > (int64_t{1} << 31)) {
    return Bad(absl::StrCat("parameter ", name), absl::StrCat(*out, " is out of range"));
  }
  return absl::OkStatus();
}

absl::Status Parameters(const inference::ModelInferRequest& r, bool builtin, InferCall* call) {
  AttentionArgs& a = call->args;
  for (const auto& [name, p] : r.parameters()) {
    if (name == "causal") {
      if (absl::Status s = BoolParameter(p, name, &a.causal); !s.ok()) return s;
    } else if (name == "weights") {
      std::string mode;
      if (absl::Status s = StringParameter(p, name, &mode); !s.ok()) return s;
      if (mode == "average" || mode == "averaged") {
        a.weights = WeightsMode::kAveraged;
      } else if (mode == "per-head" || mode == "per_head") {
        a.weights = WeightsMode::kPerHead;
      } else if (mode == "none") {
        a.weights = WeightsMode::kNone;
      } else {
        return Bad("parameter weights",
                   absl::StrCat("'", mode, "' (expected average or per-head)"));
      }
    } else if (name == "precision") {
      std::string precision;
      if (absl::Status s = StringParameter(p, name, &precision); !s.ok()) return s;
      if (precision == "float32") {
        a.precision = Precision::kFloat32;
      } else if (precision == "bfloat16") {
        a.precision = Precision::kBFloat16;
      } else {
        return Bad("parameter precision",
                   absl::StrCat("'", precision, "' (expected float32 or bfloat16)"));
      }
    } else if (name == "scale") {
      double scale = 0;
      if (p.parameter_choice_case() == inference::InferParameter::kDoubleParam) {
        scale = p.double_param();
      } else if (p.parameter_choice_case() != inference::InferParameter::kStringParam ||
                 !absl::SimpleAtod(p.string_param(), &scale)) {
        return Bad("parameter scale",
                   "expected a double_param, or a string_param holding a number");
      }
      if (!std::isfinite(scale)) return Bad("parameter scale", "not a finite number");
      a.scale = static_cast<float>(scale);
    } else if (builtin && (name == "num_heads" || name == "num_kv_heads")) {
      int64_t n = 0;
      if (absl::Status s = IntParameter(p, name, &n); !s.ok()) return s;
      (name == "num_heads" ? a.num_heads : a.num_kv_heads) = n;
    } else {
      return Bad(absl::StrCat("parameter ", name),
                 absl::StrCat("unknown (this model takes ",
                              absl::StrJoin(std::begin(kParameters),
                                            std::end(kParameters) - (builtin ? 0 : 2), ", "),
                              ")"));
    }
  }
  if (builtin && a.num_heads <= 0) {
    return Bad("parameter num_heads",
               "required by the built-in model 'attention' (an int64_param)");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<DType> FromDatatype(absl::string_view datatype, absl::string_view input) {
  if (datatype == "FP32") return DType::kFloat32;
  if (datatype == "FP16") return DType::kFloat16;
  if (datatype == "BF16") return DType::kBFloat16;
  if (datatype == "BOOL") return DType::kBool;
  return Bad(input,
             absl::StrCat("datatype '", datatype, "' is not served (FP32, FP16, BF16, BOOL)"));
}

const char* ToDatatype(DType dtype) {
  switch (dtype) {
    case DType::kFloat16:
      return "FP16";
    case DType::kBFloat16:
      return "BF16";
    case DType::kBool:
      return "BOOL";
    case DType::kFloat32:
      break;
  }
  return "FP32";
}

absl::Status FromInfer(const inference::ModelInferRequest& r, bool builtin, InferCall* call) {
  AttentionArgs& a = call->args;
  if (r.raw_input_contents_size() > 0 && r.raw_input_contents_size() != r.inputs_size()) {
    return Bad("raw_input_contents", absl::StrCat(r.raw_input_contents_size(), " entries for ",
                                                  r.inputs_size(), " inputs (one per input)"));
  }
  std::optional<TensorView> found[std::size(kInputs)];
  for (int i = 0; i < r.inputs_size(); ++i) {
    const std::string& name = r.inputs(i).name();
    const auto known = std::find_if(std::begin(kInputs), std::end(kInputs),
                                    [&](const char* k) { return name == k; });
    if (known == std::end(kInputs)) {
      return Bad(absl::StrCat("input '", name.substr(0, 64), "'"),
                 absl::StrCat("unknown (the model takes ",
                              absl::StrJoin(std::begin(kInputs), std::end(kInputs), ", "), ")"));
    }
    const size_t k = static_cast<size_t>(known - std::begin(kInputs));
    if (found[k]) return Bad(name, "given twice");
    absl::StatusOr<TensorView> v = ViewOf(r, i, k >= 3);
    if (!v.ok()) return v.status();
    found[k] = *std::move(v);
  }
  if (!found[0]) return Bad("query", "missing (the input every request needs)");
  if (found[1].has_value() != found[2].has_value()) {
    return Bad(found[1] ? "value" : "key", "missing (send key and value, or neither)");
  }
  if (builtin && !found[1]) {
    return Bad("key", "missing (the built-in model 'attention' takes query, key and value)");
  }
  a.query = *found[0];
  a.self_attention = !found[1];
  if (found[1]) {
    a.key = found[1];
    a.value = found[2];
  }
  a.attn_mask = found[3];
  a.key_padding_mask = found[4];
  if (absl::Status s = Parameters(r, builtin, call); !s.ok()) return s;
  if (!r.outputs().empty()) {
    call->send_output = false;
    for (const auto& out : r.outputs()) {
      if (!out.parameters().empty()) {
        return Bad(absl::StrCat("output ", out.name().substr(0, 64)),
                   absl::StrCat("output parameters are not served (got '",
                                out.parameters().begin()->first, "')"));
      }
      if (out.name() == "output") {
        call->send_output = true;
      } else if (out.name() == "weights") {
        call->send_weights = true;
      } else {
        return Bad(absl::StrCat("output '", out.name().substr(0, 64), "'"),
                   "unknown (the model has output and weights)");
      }
    }
  }
  if (r.outputs().empty()) {
    call->send_weights = a.weights != WeightsMode::kNone;  // with the `weights` parameter
  } else if (!call->send_weights) {
    a.weights = WeightsMode::kNone;  // not asked for: not computed
  } else if (a.weights == WeightsMode::kNone) {
    a.weights = WeightsMode::kAveraged;
  }
  return absl::OkStatus();
}

}  // namespace convert
}  // namespace attention
