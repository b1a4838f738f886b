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
#include "core/decode.h"
#include "core/decode_kernels.h"
#include "core/guard.h"
#include "core/onednn_ops.h"
#include "core/projection.h"
#include "core/workspace.h"

namespace attention {
namespace {

using internal::CeilDiv;

// The caller's check between the phases of a call (projections, heads,
// conversions), so that a cancelled call stops within one phase's work.
absl::Status Check(const ComputeOptions& options) {
  return options.check ? options.check() : absl::OkStatus();
}

using internal::HeadsProblem;
using internal::Plan;
using internal::Workspace;

// The strides of the heads of unprojected inputs: [B, H, L, D] for rank 4,
// else heads side by side in the last dimension.
void SetHeadLayouts(const Plan& plan, HeadsProblem& problem) {
  const int64_t L = plan.L, S = plan.S, H = plan.H, D = plan.D, Dv = plan.Dv;
  if (plan.rank == 4) {
    const int64_t Hkv = plan.Hkv;
    problem.ql = {H * L * D, L * D, D};
    problem.kl = {Hkv * S * D, S * D, D};
    problem.vl = {Hkv * S * Dv, S * Dv, Dv};
    problem.ol = {H * L * Dv, L * Dv, Dv};
  } else {
    problem.ql = {L * plan.Eq, D, plan.Eq};
    problem.kl = {S * plan.Ek, D, plan.Ek};
    problem.vl = {S * plan.Ev, Dv, plan.Ev};
    problem.ol = {L * H * Dv, Dv, H * Dv};
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
int64_t InputFloats(const Plan& plan, const TensorView& t) {
  return plan.bf16 && ReadableAsFloat32(t) ? Workspace::Round(CeilDiv(ShapeProduct(t.shape), 2))
                                           : 0;
}

// `t` as the products read it: float32 (AsFloat32), or bfloat16 with
// plan.bf16 (its own bytes when it arrives as BFLOAT16; float32 rounded into
// `ws`; float16 through `store` into `store16`).
const void* ProductInput(const Plan& plan, const TensorView& t, std::vector<float>& store,
                         std::vector<uint16_t>& store16, Workspace& ws) {
  if (!plan.bf16) return AsFloat32(t, store);
  if (!ReadableAsFloat32(t)) return AsBFloat16(t, store16);
  const int64_t n = ShapeProduct(t.shape);
  auto* out = reinterpret_cast<uint16_t*>(ws.Take(CeilDiv(n, 2)));
  ToBfloat16(static_cast<const float*>(t.data), n, out, plan.threads);
  return out;
}

// Workspace floats ComputeProjected takes (besides the heads').
int64_t ProjectedFloats(const Plan& plan) {
  const int64_t per_float = plan.bf16 ? 2 : 1;  // elements a float of workspace holds
  const int64_t B = plan.B, L = plan.L, S = plan.S, E = plan.proj.embed_dim;
  return Workspace::Round(CeilDiv(B * (L + 2 * S) * E, per_float)) +
         Workspace::Round(CeilDiv(B * L * E, per_float));
}

// nn.MultiheadAttention: in-projection, heads, out-projection; `pr` holds
// the masks and weights of the call. q, k, v, the projections and the
// concatenated heads (which the heads write as bfloat16 for the
// out-projection) are bfloat16 with plan.bf16, else float32.
absl::Status ComputeProjected(const Plan& plan, const AttentionArgs& args,
                              const ComputeOptions& options, const void* q, const void* k,
                              const void* v, float* out, HeadsProblem& problem, Workspace& ws) {
  const internal::CallProjection projection(*args.projection, plan.proj, plan.bf16);
  const int64_t B = plan.B, L = plan.L, S = plan.S, D = plan.D, Dv = plan.Dv,
                E = plan.proj.embed_dim;
  const int64_t per_float = plan.bf16 ? 2 : 1;  // elements a float of workspace holds
  const int64_t projected_floats = CeilDiv(B * (L + 2 * S) * E, per_float);
  const int64_t concat_floats = CeilDiv(B * L * E, per_float);
  char* const projected = reinterpret_cast<char*>(ws.Take(projected_floats));
  float* const concat = ws.Take(concat_floats);
  const int64_t element = 4 / per_float;
  char* qp = projected;
  char* kp = qp + B * L * E * element;
  char* vp = kp + B * S * E * element;
  if (absl::Status s = Check(options); !s.ok()) return s;
  projection.In(B * L, B * S, q, k, v, qp, kp, vp);
  if (absl::Status s = Check(options); !s.ok()) return s;
  problem.q = qp, problem.k = kp, problem.v = vp;
  problem.ql = {L * E, D, E};
  problem.kl = problem.vl = {S * E, D, E};
  problem.out = concat;
  problem.out_type = plan.bf16 ? internal::Elem::kBF16 : internal::Elem::kF32;
  problem.ol = {L * E, Dv, E};
  if (absl::Status s = internal::AttendHeads(problem, options, ws); !s.ok()) return s;
  if (absl::Status s = Check(options); !s.ok()) return s;
  projection.Out(B * L, concat, out);
  return absl::OkStatus();
}

// A few queries over many keys (a decode step sent whole, L = 1 and the
// like) without weights, masks or projections: the decode kernel
// (core/decode_kernels.h) reads each key and value once for all the query
// heads that share them, where the row path would compute a tile of 128
// query rows for each of them. Causal as everywhere here: query i attends
// keys j <= i.
constexpr int64_t kFewQueriesMinKeys = 1024;

bool FewQueries(const Plan& plan, const AttentionArgs& args) {
  return !plan.has_projection && !plan.bf16 && args.weights == WeightsMode::kNone &&
         !plan.attn_mask && !plan.key_padding_mask && plan.L <= kStepMaxQueries &&
         plan.S >= kFewQueriesMinKeys;
}

absl::Status AttendFewQueries(const Plan& plan, const HeadsProblem& pr,
                              const ComputeOptions& options) {
  internal::DecodeKernelArgs k({plan.H, plan.Hkv, plan.D, plan.Dv, plan.scale});
  k.length = plan.S;
  k.count = plan.L;
  k.causal = pr.causal;
  k.max_threads = plan.threads;
  for (int64_t b = 0; b < plan.B; ++b) {
    if (absl::Status s = Check(options); !s.ok()) return s;
    k.keys = {static_cast<const float*>(pr.k) + b * pr.kl.batch, pr.kl.head, pr.kl.row};
    k.values = {static_cast<const float*>(pr.v) + b * pr.vl.batch, pr.vl.head, pr.vl.row};
    k.queries = {static_cast<const float*>(pr.q) + b * pr.ql.batch, pr.ql.head, pr.ql.row};
    k.out = {static_cast<float*>(pr.out) + b * pr.ol.batch, pr.ol.head, pr.ol.row};
    internal::DecodeAttention(k);
  }
  return absl::OkStatus();
}

// Runs `plan` (made from `args` under `options`) into `outputs`.
absl::Status ComputePlanned(const Plan& plan, const AttentionArgs& args,
                            const ComputeOptions& options, OutputBuffers* outputs) {
  float* out = outputs->Output(plan.info.output_shape);
  float* weights =
      args.weights == WeightsMode::kNone ? nullptr : outputs->Weights(plan.info.weights_shape);
  if (out == nullptr || (args.weights != WeightsMode::kNone && weights == nullptr)) {
    return absl::InternalError("no output buffer");
  }
  internal::OmpThreadsScope threads(
      std::max(1, options.max_threads > 0 ? options.max_threads : omp_get_max_threads()));
  int64_t inputs = InputFloats(plan, args.query);
  if (!args.self_attention) inputs += InputFloats(plan, *args.key) + InputFloats(plan, *args.value);
  Workspace ws(inputs + (plan.has_projection ? ProjectedFloats(plan) : 0) +
               internal::HeadsFloats(plan, args.weights));
  std::vector<float> q_store, k_store, v_store, am_store, kpm_store;
  std::vector<uint16_t> q16, k16, v16;
  const void* q = ProductInput(plan, args.query, q_store, q16, ws);
  const void* k = args.self_attention ? q : ProductInput(plan, *args.key, k_store, k16, ws);
  const void* v = args.self_attention ? q : ProductInput(plan, *args.value, v_store, v16, ws);
  if (absl::Status s = Check(options); !s.ok()) return s;  // after converting the inputs

  HeadsProblem problem;
  problem.plan = &plan;
  problem.weights = args.weights;
  problem.weights_out = weights;
  problem.causal = args.causal;
  problem.attn_mask = internal::PrepareMask(plan.attn_mask, am_store);
  problem.key_padding_mask = internal::PrepareMask(plan.key_padding_mask, kpm_store);
  if (plan.has_projection) return ComputeProjected(plan, args, options, q, k, v, out, problem, ws);
  problem.q = q, problem.k = k, problem.v = v, problem.out = out;
  SetHeadLayouts(plan, problem);
  if (FewQueries(plan, args)) return AttendFewQueries(plan, problem, options);
  return internal::AttendHeads(problem, options, ws);
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
  return GuardStatus([&] { return ComputePlanned(*plan, args, options, outputs); });
}

}  // namespace attention
