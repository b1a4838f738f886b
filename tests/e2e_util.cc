#include "tests/e2e_util.h"

#include "client/client.h"
#include "core/reference.h"

namespace attention {
namespace testing {
namespace {

void FillOptions(const Fixture& f, v1::AttentionOptions* o) {
  const AttentionArgs& a = f.args;
  o->set_num_heads(static_cast<int32_t>(a.num_heads));
  o->set_num_kv_heads(static_cast<int32_t>(a.num_kv_heads));
  if (a.scale) o->set_scale(*a.scale);
  o->set_causal(a.causal);
  if (a.attn_mask) *o->mutable_attn_mask() = ToProto(*a.attn_mask);
  if (a.key_padding_mask) *o->mutable_key_padding_mask() = ToProto(*a.key_padding_mask);
  o->set_weights(a.weights == WeightsMode::kAveraged  ? v1::WEIGHTS_AVERAGED
                 : a.weights == WeightsMode::kPerHead ? v1::WEIGHTS_PER_HEAD
                                                      : v1::WEIGHTS_NONE);
  if (!f.model.empty()) {
    o->set_model(f.model);
    return;
  }
  if (a.projection == nullptr) return;
  const ProjectionWeights& w = f.projection;
  v1::Projection* p = o->mutable_projection();
  if (w.in_proj_weight) *p->mutable_in_proj_weight() = ToProto(*w.in_proj_weight);
  if (w.q_proj_weight) *p->mutable_q_proj_weight() = ToProto(*w.q_proj_weight);
  if (w.k_proj_weight) *p->mutable_k_proj_weight() = ToProto(*w.k_proj_weight);
  if (w.v_proj_weight) *p->mutable_v_proj_weight() = ToProto(*w.v_proj_weight);
  if (w.in_proj_bias) *p->mutable_in_proj_bias() = ToProto(*w.in_proj_bias);
  if (w.out_proj_weight) *p->mutable_out_proj_weight() = ToProto(*w.out_proj_weight);
  if (w.out_proj_bias) *p->mutable_out_proj_bias() = ToProto(*w.out_proj_bias);
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
  FillOptions(f, r.mutable_options());
  return r;
}

v1::SelfAttentionRequest ToSelfAttentionRequest(const Fixture& f, DType wire) {
  v1::SelfAttentionRequest r;
  r.set_id(f.name);
  *r.mutable_input() = ToProto(f.args.query, wire);
  FillOptions(f, r.mutable_options());
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
