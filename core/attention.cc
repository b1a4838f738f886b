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
#include "core/onednn_ops.h"
#include "core/projection.h"
#include "core/workspace.h"

namespace attention {
namespace {

using internal::CeilDiv;

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

// n floats to bfloat16 on `threads` threads.
void ToBfloat16(const float* in, int64_t n, uint16_t* out, int threads) {
  constexpr int64_t kChunk = int64_t{1} << 14;
  const int64_t chunks = CeilDiv(n, kChunk);
#pragma omp parallel for num_threads(threads) schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    FloatsToBFloat16(in + c * kChunk, std::min(kChunk, n - c * kChunk), out + c * kChunk);
  }
}

// `t` as the products read it: float32 (AsFloat32), or bfloat16 with
// `bf16` (its own bytes when it arrives as BFLOAT16, else rounded into
// `store16`).
const void* ProductInput(const TensorView& t, bool bf16, int threads, std::vector<float>& store,
                         std::vector<uint16_t>& store16) {
  if (!bf16) return AsFloat32(t, store);
  if (!ReadableAsFloat32(t)) return AsBFloat16(t, store16);
  store16.resize(ShapeProduct(t.shape));
  ToBfloat16(static_cast<const float*>(t.data), static_cast<int64_t>(store16.size()),
             store16.data(), threads);
  return store16.data();
}

// nn.MultiheadAttention: in-projection, heads, out-projection; `pr` holds
// the masks and weights of the call. q, k, v and the projections are
// bfloat16 with p.bf16 (the concatenated heads are rounded to bfloat16 for
// the out-projection), else float32.
absl::Status ComputeProjected(const Plan& p, const AttentionArgs& a, const ComputeOptions& o,
                              const void* q, const void* k, const void* v, float* out,
                              HeadsProblem& pr) {
  const internal::CallProjection projection(*a.projection, p.proj, p.bf16);
  const int64_t B = p.B, L = p.L, S = p.S, D = p.D, Dv = p.Dv, E = p.proj.embed_dim;
  const int64_t per_float = p.bf16 ? 2 : 1;  // elements a float of workspace holds
  const int64_t projected_floats = CeilDiv(B * (L + 2 * S) * E, per_float);
  const int64_t concat16_floats = p.bf16 ? CeilDiv(B * L * E, 2) : 0;
  Workspace ws(Workspace::Round(projected_floats) + Workspace::Round(B * L * E) +
               Workspace::Round(concat16_floats) + internal::HeadsFloats(p, a.weights));
  char* const projected = reinterpret_cast<char*>(ws.Take(projected_floats));
  float* const concat = ws.Take(B * L * E);
  const int64_t element = 4 / per_float;
  char* qp = projected;
  char* kp = qp + B * L * E * element;
  char* vp = kp + B * S * E * element;
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
  if (!p.bf16) {
    projection.Out(B * L, concat, out);
    return absl::OkStatus();
  }
  uint16_t* const concat16 = reinterpret_cast<uint16_t*>(ws.Take(concat16_floats));
  ToBfloat16(concat, B * L * E, concat16, p.threads);
  projection.Out(B * L, concat16, out);
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
  std::vector<uint16_t> q16, k16, v16;
  const void* q = ProductInput(a.query, p.bf16, p.threads, q_store, q16);
  const void* k = a.self_attention ? q : ProductInput(*a.key, p.bf16, p.threads, k_store, k16);
  const void* v = a.self_attention ? q : ProductInput(*a.value, p.bf16, p.threads, v_store, v16);
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

Precision EffectivePrecision(Precision requested) {
  if (requested == Precision::kBFloat16 && internal::NativeBfloat16()) return Precision::kBFloat16;
  return Precision::kFloat32;
}

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
