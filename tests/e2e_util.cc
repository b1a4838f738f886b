#include "tests/e2e_util.h"

#include "client/client.h"
#include "core/reference.h"

namespace attention {
namespace testing {
namespace {

// The fixture's options; a model name instead of weights when it names one.
v1::AttentionOptions Options(const Fixture& f) {
  v1::AttentionOptions o = wire::ToWire(f.args);
  if (!f.model.empty()) {
    o.clear_projection();
    o.set_model(f.model);
  }
  return o;
}

}  // namespace

v1::Tensor ToProto(const TensorView& view, DType wire) {
  if (view.dtype == DType::kBool) {
    return client::MakeBoolTensor(view.shape, static_cast<const uint8_t*>(view.data));
  }
  const std::vector<float> f = ToFloats(view);
  return client::MakeTensor(view.shape, f.data(), wire);
}

v1::AttentionRequest ToAttentionRequest(const Fixture& f, DType wire) {
  v1::AttentionRequest r;
  r.set_id(f.name);
  *r.mutable_query() = ToProto(f.args.query, wire);
  *r.mutable_key() = ToProto(*f.args.key, wire);
  *r.mutable_value() = ToProto(*f.args.value, wire);
  *r.mutable_options() = Options(f);
  return r;
}

v1::SelfAttentionRequest ToSelfAttentionRequest(const Fixture& f, DType wire) {
  v1::SelfAttentionRequest r;
  r.set_id(f.name);
  *r.mutable_input() = ToProto(f.args.query, wire);
  *r.mutable_options() = Options(f);
  return r;
}

double ErrorAgainst(const v1::Tensor& got, const TensorView& want) {
  absl::StatusOr<FloatTensor> g = client::ToFloat(got, "got");
  if (!g.ok() || g->shape != want.shape) return 1e9;
  const std::vector<float> w = ToFloats(want);
  return RelativeMaxError(g->data.data(), {w.begin(), w.end()});
}

std::vector<std::string> ModelFlags() {
  return {
      "--model", "demo=" + SourcePath("models/demo.safetensors"),
      "--model", "mha_e32_h4=" + SourcePath("tests/fixtures/models/mha_e32_h4.safetensors"),
      "--model", "mha_e32_h2_kv=" + SourcePath("tests/fixtures/models/mha_e32_h2_kv.safetensors")};
}

}  // namespace testing
}  // namespace attention
