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
#include "core/bf16_kernels.h"
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

// n floats to bfloat16 on `threads` threads (the bfloat16 path only: see
// bf16_kernels.h).
void ToBfloat16(const float* in, int64_t n, uint16_t* out, int threads) {
  constexpr int64_t kChunk = int64_t{1} << 14;
  const int64_t chunks = CeilDiv(n, kChunk);
#pragma omp parallel for num_threads(threads) schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    internal::RoundToBfloat16(in + c * kChunk, std::min(kChunk, n - c * kChunk), out + c * kChunk);
  }
}

// Workspace floats ProductInput takes for `t`: its bfloat16 copy when the
// products read bfloat16 and `t` holds float32.
int64_t InputFloats(const Plan& p, const TensorView& t) {
  return p.bf16 && ReadableAsFloat32(t) ? Workspace::Round(CeilDiv(ShapeProduct(t.shape), 2)) : 0;
}

// `t` as the products read it: float32 (AsFloat32), or bfloat16 with
// p.bf16 (its own bytes when it arrives as BFLOAT16; float32 rounded into
// `ws`; float16 through `store` into `store16`).
const void* ProductInput(const Plan& p, const TensorView& t, std::vector<float>& store,
                         std::vector<uint16_t>& store16, Workspace& ws) {
  if (!p.bf16) return AsFloat32(t, store);
  if (!ReadableAsFloat32(t)) return AsBFloat16(t, store16);
  const int64_t n = ShapeProduct(t.shape);
  auto* out = reinterpret_cast<uint16_t*>(ws.Take(CeilDiv(n, 2)));
  ToBfloat16(static_cast<const float*>(t.data), n, out, p.threads);
  return out;
}

// Workspace floats ComputeProjected takes (besides the heads').
int64_t ProjectedFloats(const Plan& p) {
  const int64_t per_float = p.bf16 ? 2 : 1;  // elements a float of workspace holds
  const int64_t B = p.B, L = p.L, S = p.S, E = p.proj.embed_dim;
  return Workspace::Round(CeilDiv(B * (L + 2 * S) * E, per_float)) +
         Workspace::Round(CeilDiv(B * L * E, per_float));
}

// nn.MultiheadAttention: in-projection, heads, out-projection; `pr` holds
// the masks and weights of the call. q, k, v, the projections and the
// concatenated heads (which the heads write as bfloat16 for the
// out-projection) are bfloat16 with p.bf16, else float32.
absl::Status ComputeProjected(const Plan& p, const AttentionArgs& a, const ComputeOptions& o,
                              const void* q, const void* k, const void* v, float* out,
                              HeadsProblem& pr, Workspace& ws) {
  const internal::CallProjection projection(*a.projection, p.proj, p.bf16);
  const int64_t B = p.B, L = p.L, S = p.S, D = p.D, Dv = p.Dv, E = p.proj.embed_dim;
  const int64_t per_float = p.bf16 ? 2 : 1;  // elements a float of workspace holds
  const int64_t projected_floats = CeilDiv(B * (L + 2 * S) * E, per_float);
  const int64_t concat_floats = CeilDiv(B * L * E, per_float);
  char* const projected = reinterpret_cast<char*>(ws.Take(projected_floats));
  float* const concat = ws.Take(concat_floats);
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
  pr.out_type = p.bf16 ? internal::Elem::kBF16 : internal::Elem::kF32;
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
  int64_t inputs = InputFloats(p, a.query);
  if (!a.self_attention) inputs += InputFloats(p, *a.key) + InputFloats(p, *a.value);
  Workspace ws(inputs + (p.has_projection ? ProjectedFloats(p) : 0) +
               internal::HeadsFloats(p, a.weights));
  std::vector<float> q_store, k_store, v_store, am_store, kpm_store;
  std::vector<uint16_t> q16, k16, v16;
  const void* q = ProductInput(p, a.query, q_store, q16, ws);
  const void* k = a.self_attention ? q : ProductInput(p, *a.key, k_store, k16, ws);
  const void* v = a.self_attention ? q : ProductInput(p, *a.value, v_store, v16, ws);
  if (absl::Status s = Check(o); !s.ok()) return s;  // after converting the inputs

  HeadsProblem pr;
  pr.plan = &p;
  pr.weights = a.weights;
  pr.weights_out = weights;
  pr.causal = a.causal;
  pr.attn_mask = internal::PrepareMask(p.attn_mask, am_store);
  pr.key_padding_mask = internal::PrepareMask(p.key_padding_mask, kpm_store);
  if (p.has_projection) return ComputeProjected(p, a, o, q, k, v, out, pr, ws);
  pr.q = q, pr.k = k, pr.v = v, pr.out = out;
  SetHeadLayouts(p, pr);
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
