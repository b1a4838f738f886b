// The public entry points of attention.h: plan (attention_plan.h), then
// project (projection.h) and run the heads (attention_kernels.h) in one
// workspace (workspace.h).
#include "core/attention.h"

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#include "core/attention_kernels.h"
#include "core/attention_plan.h"
#include "core/guard.h"
#include "core/projection.h"
#include "core/workspace.h"

namespace attention {
namespace {

// The caller's check between the phases of a call (projections, heads,
// conversions), so that a cancelled call stops within one phase's work.
absl::Status Check(const ComputeOptions& o) { return o.check ? o.check() : absl::OkStatus(); }

using internal::HeadsProblem;
using internal::Plan;
using internal::Workspace;

// The strides of the heads of unprojected inputs: [B, H, L, D] for rank 4,
// else heads side by side in the last dimension.
void SetHeadLayouts(const Plan& p, HeadsProblem& pr) {
  const int64_t L = p.L, S = p.S, H = p.H, D = p.D, Dv = p.Dv;
  if (p.rank == 4) {
    const int64_t Hkv = p.Hkv;
    pr.ql = {H * L * D, L * D, D};
    pr.kl = {Hkv * S * D, S * D, D};
    pr.vl = {Hkv * S * Dv, S * Dv, Dv};
    pr.ol = {H * L * Dv, L * Dv, Dv};
  } else {
    pr.ql = {L * p.Eq, D, p.Eq};
    pr.kl = {S * p.Ek, D, p.Ek};
    pr.vl = {S * p.Ev, Dv, p.Ev};
    pr.ol = {L * H * Dv, Dv, H * Dv};
  }
}

// nn.MultiheadAttention: in-projection, heads, out-projection; `pr` holds
// the masks and weights of the call.
absl::Status ComputeProjected(const Plan& p, const AttentionArgs& a, const ComputeOptions& o,
                              const float* q, const float* k, const float* v, float* out,
                              HeadsProblem& pr) {
  const internal::CallProjection projection(*a.projection, p.proj);
  const int64_t B = p.B, L = p.L, S = p.S, D = p.D, Dv = p.Dv, E = p.proj.embed_dim;
  const int64_t projected_floats = B * (L + 2 * S) * E;
  Workspace ws(Workspace::Round(projected_floats) + Workspace::Round(B * L * E) +
               internal::HeadsFloats(p, a.weights));
  float* const projected = ws.Take(projected_floats);
  float* const concat = ws.Take(B * L * E);
  float* qp = projected;
  float* kp = qp + B * L * E;
  float* vp = kp + B * S * E;
  if (absl::Status s = Check(o); !s.ok()) return s;
  projection.In(B * L, B * S, q, k, v, qp, kp, vp);
  if (absl::Status s = Check(o); !s.ok()) return s;
  pr.q = qp, pr.k = kp, pr.v = vp;
  pr.ql = {L * E, D, E};
  pr.kl = pr.vl = {S * E, D, E};
  pr.out = concat;
  pr.ol = {L * E, Dv, E};
  if (absl::Status s = internal::AttendHeads(pr, o, ws); !s.ok()) return s;
  if (absl::Status s = Check(o); !s.ok()) return s;
  projection.Out(B * L, concat, out);
  return absl::OkStatus();
}

absl::Status Compute(const Plan& p, const AttentionArgs& a, const ComputeOptions& o,
                     OutputBuffers* outputs) {
  float* out = outputs->Output(p.info.output_shape);
  float* weights =
      a.weights == WeightsMode::kNone ? nullptr : outputs->Weights(p.info.weights_shape);
  if (out == nullptr || (a.weights != WeightsMode::kNone && weights == nullptr)) {
    return absl::InternalError("no output buffer");
  }
  internal::OmpThreadsScope threads(
      std::max(1, o.max_threads > 0 ? o.max_threads : omp_get_max_threads()));
  std::vector<float> q_store, k_store, v_store, am_store, kpm_store;
  const float* q = AsFloat32(a.query, q_store);
  const float* k = a.self_attention ? q : AsFloat32(*a.key, k_store);
  const float* v = a.self_attention ? q : AsFloat32(*a.value, v_store);
  if (absl::Status s = Check(o); !s.ok()) return s;  // after converting the inputs

  HeadsProblem pr;
  pr.plan = &p;
  pr.weights = a.weights;
  pr.weights_out = weights;
  pr.causal = a.causal;
  pr.attn_mask = internal::PrepareMask(p.attn_mask, am_store);
  pr.key_padding_mask = internal::PrepareMask(p.key_padding_mask, kpm_store);
  if (p.has_projection) return ComputeProjected(p, a, o, q, k, v, out, pr);
  pr.q = q, pr.k = k, pr.v = v, pr.out = out;
  SetHeadLayouts(p, pr);
  Workspace ws(internal::HeadsFloats(p, a.weights));
  return internal::AttendHeads(pr, o, ws);
}

// `t` shaped as `shape`, every element to be overwritten.
float* Resize(const std::vector<int64_t>& shape, FloatTensor& t) {
  t.shape = shape;
  t.data.resize(ShapeProduct(shape));
  return t.data.data();
}

}  // namespace

float* VectorOutputs::Output(const std::vector<int64_t>& shape) { return Resize(shape, output); }

float* VectorOutputs::Weights(const std::vector<int64_t>& shape) { return Resize(shape, weights); }

absl::StatusOr<AttentionPlanInfo> PlanAttention(const AttentionArgs& args,
                                                const ComputeOptions& options) {
  absl::StatusOr<Plan> plan = internal::MakePlan(args, options);
  if (!plan.ok()) return plan.status();
  return plan->info;
}

absl::Status ComputeAttention(const AttentionArgs& args, const ComputeOptions& options,
                              OutputBuffers* outputs) {
  absl::StatusOr<Plan> plan = internal::MakePlan(args, options);
  if (!plan.ok()) return plan.status();
  return GuardStatus([&] { return Compute(*plan, args, options, outputs); });
}

}  // namespace attention
