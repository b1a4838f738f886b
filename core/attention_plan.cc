#include "core/attention_plan.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"

namespace attention {
namespace internal {
namespace {

// Heads with fewer multiply-adds than this (per row tile) are batched, in
// groups of about kGroupWork multiply-adds a unit.
constexpr double kSmallHeadWork = 1 << 20;
constexpr double kGroupWork = 1 << 22;
// With bfloat16 products the batched path pays for larger heads when it
// still gives every thread two units: oneDNN runs its batched views on
// brgemm, the per-head strided ones on gemm:jit.
constexpr double kSmallHeadWorkBfloat16 = 1 << 22;
// Below this many flops a unit of work, extra threads cost more than they give.
constexpr double kMinFlopsPerThread = 4e6;
// The smallest row tile the batched path splits rows into for idle threads.
constexpr int64_t kMinSplitRows = 32;
// Row tiles (times query heads per key/value head) that read one head's
// keys and values before they are packed into contiguous copies.
constexpr int64_t kMinPackReuse = 4;

// Sizes of the mask `v` for [B, H, L, S]; see AttentionArgs::attn_mask.
absl::StatusOr<MaskLayout> AttnMaskLayout(const TensorView& v, const Plan& plan) {
  constexpr absl::string_view kName = "options.attn_mask";
  if (absl::Status s = CheckedElements(v, kName).status(); !s.ok()) return s;
  const std::vector<int64_t>& d = v.shape;
  const int64_t L = plan.L, S = plan.S, H = plan.H, B = plan.B;
  MaskLayout m{&v};
  if (d.size() == 2 && d[0] == L && d[1] == S) {
    m.row = S;
    m.col = 1;
    return m;
  }
  if (d.size() == 3 && d[0] == B * H && d[1] == L && d[2] == S) {
    m.batch = H * L * S;
    m.head = L * S;
    m.row = S;
    m.col = 1;
    return m;
  }
  const int64_t full[4] = {B, H, L, S};
  if (d.size() == 4) {
    bool ok = true;
    for (int i = 0; i < 4; ++i) ok = ok && (d[i] == 1 || d[i] == full[i]);
    if (ok) {
      int64_t strides[4];
      int64_t stride = 1;
      for (int i = 3; i >= 0; --i) {
        strides[i] = d[i] == 1 ? 0 : stride;
        stride *= d[i];
      }
      m.batch = strides[0];
      m.head = strides[1];
      m.row = strides[2];
      m.col = strides[3];
      return m;
    }
  }
  return InvalidField(
      kName,
      absl::StrCat("shape ", ShapeString(d), " must be [L, S] = ", ShapeString({L, S}),
                   ", [B*H, L, S] = ", ShapeString({B * H, L, S}),
                   " or rank 4 broadcastable to [B, H, L, S] = ", ShapeString({B, H, L, S})));
}

absl::StatusOr<MaskLayout> KeyPaddingLayout(const TensorView& v, const Plan& plan) {
  constexpr absl::string_view kName = "options.key_padding_mask";
  if (absl::Status s = CheckedElements(v, kName).status(); !s.ok()) return s;
  const std::vector<int64_t> want =
      plan.rank == 2 ? std::vector<int64_t>{plan.S} : std::vector<int64_t>{plan.B, plan.S};
  if (v.shape != want) {
    return InvalidField(kName,
                        absl::StrCat("shape ", ShapeString(v.shape), " should be ",
                                     plan.rank == 2 ? "[S] = " : "[B, S] = ", ShapeString(want)));
  }
  MaskLayout m{&v};
  m.batch = plan.S;
  m.col = 1;
  return m;
}

// Shapes and heads of a rank-4 call: [B, H, L, D] x [B, Hkv, S, D] x [B, Hkv, S, Dv].
absl::Status PlanRank4(const AttentionArgs& args, const TensorView& k, const TensorView& v,
                       Plan& plan) {
  const std::vector<int64_t>& q = args.query.shape;
  if (args.projection != nullptr) {
    return InvalidField("options.projection",
                        "rank-4 inputs [B, H, L, D] are already split into heads; "
                        "projection weights need [B, L, E] inputs");
  }
  plan.B = q[0], plan.H = q[1], plan.L = q[2], plan.D = q[3];
  if (k.shape[0] != plan.B) {
    return InvalidField("key", absl::StrCat("shape ", ShapeString(k.shape),
                                            " does not match query batch ", plan.B));
  }
  if (k.shape[3] != plan.D) {
    return InvalidField("key",
                        absl::StrCat("head dim ", k.shape[3], " (shape ", ShapeString(k.shape),
                                     ") does not match query head dim ", plan.D));
  }
  plan.Hkv = k.shape[1], plan.S = k.shape[2];
  if (v.shape[0] != plan.B || v.shape[1] != plan.Hkv || v.shape[2] != plan.S) {
    return InvalidField(
        "value", absl::StrCat("shape ", ShapeString(v.shape), " should be [", plan.B, ",", plan.Hkv,
                              ",", plan.S, ",Dv] to match key ", ShapeString(k.shape)));
  }
  plan.Dv = v.shape[3];
  if (args.num_heads != 0 && args.num_heads != plan.H) {
    return InvalidField("options.num_heads",
                        absl::StrCat(args.num_heads, " does not match the ", plan.H,
                                     " heads of query ", ShapeString(q)));
  }
  if (args.num_kv_heads != 0 && args.num_kv_heads != plan.Hkv) {
    return InvalidField("options.num_kv_heads",
                        absl::StrCat(args.num_kv_heads, " does not match the ", plan.Hkv,
                                     " heads of key ", ShapeString(k.shape)));
  }
  if (plan.H % plan.Hkv != 0) {
    return InvalidField("key", absl::StrCat("its ", plan.Hkv, " heads do not divide the query's ",
                                            plan.H, " heads"));
  }
  return absl::OkStatus();
}

// Heads of a rank-2/3 call with projection weights, whose shapes fix E,
// kdim and vdim (p.Eq, p.Ek, p.Ev and p.H already set).
absl::Status PlanProjected(const AttentionArgs& args, const TensorView& k, const TensorView& v,
                           Plan& plan) {
  const std::vector<int64_t>& q = args.query.shape;
  const char* qname = args.self_attention ? "input" : "query";
  absl::StatusOr<ProjectionShape> ps = ValidateProjection(*args.projection, "options.projection.");
  if (!ps.ok()) return ps.status();
  plan.has_projection = true;
  plan.proj = *ps;
  const int64_t E = ps->embed_dim;
  if (plan.Eq != E) {
    return InvalidField(qname, absl::StrCat("last dim ", plan.Eq, " (shape ", ShapeString(q),
                                            ") does not match the projection's embed_dim ", E));
  }
  if (plan.Ek != ps->kdim) {
    return InvalidField("key", absl::StrCat("last dim ", plan.Ek, " (shape ", ShapeString(k.shape),
                                            ") does not match the projection's kdim ", ps->kdim));
  }
  if (plan.Ev != ps->vdim) {
    return InvalidField("value",
                        absl::StrCat("last dim ", plan.Ev, " (shape ", ShapeString(v.shape),
                                     ") does not match the projection's vdim ", ps->vdim));
  }
  if (E % plan.H != 0) {
    return InvalidField("options.num_heads",
                        absl::StrCat(plan.H, " does not divide the model's embed_dim ", E));
  }
  if (args.num_kv_heads != 0 && args.num_kv_heads != plan.H) {
    return InvalidField("options.num_kv_heads",
                        "grouped-query heads are for inputs without projection weights "
                        "(nn.MultiheadAttention has num_heads key/value heads)");
  }
  plan.Hkv = plan.H;
  plan.D = plan.Dv = E / plan.H;
  return absl::OkStatus();
}

// Shapes and heads of a rank-2/3 call: [B, L, Eq] x [B, S, Ek] x [B, S, Ev].
absl::Status PlanEmbedded(const AttentionArgs& args, const TensorView& k, const TensorView& v,
                          Plan& plan) {
  const std::vector<int64_t>& q = args.query.shape;
  const bool batched = plan.rank == 3;
  plan.B = batched ? q[0] : 1;
  plan.L = q[q.size() - 2];
  plan.Eq = q.back();
  if (batched && k.shape[0] != plan.B) {
    return InvalidField("key", absl::StrCat("shape ", ShapeString(k.shape),
                                            " does not match query batch ", plan.B));
  }
  if (batched && v.shape[0] != plan.B) {
    return InvalidField("value", absl::StrCat("shape ", ShapeString(v.shape),
                                              " does not match query batch ", plan.B));
  }
  plan.S = k.shape[k.shape.size() - 2];
  plan.Ek = k.shape.back();
  if (v.shape[v.shape.size() - 2] != plan.S) {
    return InvalidField("value",
                        absl::StrCat("length ", v.shape[v.shape.size() - 2], " (shape ",
                                     ShapeString(v.shape), ") does not match key length ", plan.S));
  }
  plan.Ev = v.shape.back();
  if (args.num_heads <= 0) {
    return InvalidField("options.num_heads",
                        absl::StrCat("must be positive (got ", args.num_heads, ")"));
  }
  plan.H = args.num_heads;
  const char* qname = args.self_attention ? "input" : "query";
  if (args.projection != nullptr) return PlanProjected(args, k, v, plan);
  if (plan.Eq % plan.H != 0) {
    return InvalidField("options.num_heads",
                        absl::StrCat(plan.H, " does not divide the ", qname, " dim ", plan.Eq));
  }
  plan.D = plan.Eq / plan.H;
  plan.Hkv = args.num_kv_heads == 0 ? plan.H : args.num_kv_heads;
  if (plan.Hkv < 0 || plan.H % plan.Hkv != 0) {
    return InvalidField("options.num_kv_heads",
                        absl::StrCat(args.num_kv_heads, " must divide num_heads ", plan.H));
  }
  if (plan.Ek != plan.Hkv * plan.D) {
    return InvalidField(
        "key", absl::StrCat("last dim ", plan.Ek, " (shape ", ShapeString(k.shape),
                            ") should be num_kv_heads x head_dim = ", plan.Hkv, " x ", plan.D));
  }
  if (plan.Ev % plan.Hkv != 0) {
    return InvalidField("value", absl::StrCat("last dim ", plan.Ev, " is not a multiple of ",
                                              "num_kv_heads ", plan.Hkv));
  }
  plan.Dv = plan.Ev / plan.Hkv;
  return absl::OkStatus();
}

double MiB(double bytes) { return std::ceil(bytes / (1 << 20)); }

// Validates the tensors of `a` and its options, and sets p's shapes, heads,
// scale and mask layouts.
absl::Status ValidateArgs(const AttentionArgs& args, Plan& plan) {
  const char* qname = args.self_attention ? "input" : "query";
  if (absl::Status s = CheckFloatTensor(args.query, qname); !s.ok()) return s;
  plan.rank = static_cast<int>(args.query.shape.size());
  if (plan.rank < 2 || plan.rank > 4) {
    return InvalidField(qname, absl::StrCat("shape ", ShapeString(args.query.shape),
                                            " is not supported; expected [B, L, E], [L, E] "
                                            "or [B, H, L, D]"));
  }
  if (args.self_attention && (args.key || args.value)) {
    return InvalidField("key", "self-attention takes one input (query = key = value)");
  }
  const TensorView& k = args.self_attention ? args.query : (args.key ? *args.key : args.query);
  const TensorView& v = args.self_attention ? args.query : (args.value ? *args.value : args.query);
  if (!args.self_attention) {
    if (!args.key) return InvalidField("key", "missing");
    if (!args.value) return InvalidField("value", "missing");
    for (const auto& [t, name] : {std::pair{&k, "key"}, std::pair{&v, "value"}}) {
      if (absl::Status s = CheckFloatTensor(*t, name); !s.ok()) return s;
      if (t->shape.size() != args.query.shape.size()) {
        return InvalidField(
            name, absl::StrCat("rank ", t->shape.size(), " (shape ", ShapeString(t->shape),
                               ") does not match query rank ", plan.rank));
      }
    }
  }
  absl::Status shaped =
      plan.rank == 4 ? PlanRank4(args, k, v, plan) : PlanEmbedded(args, k, v, plan);
  if (!shaped.ok()) return shaped;

  if (args.scale && !std::isfinite(*args.scale)) {
    return InvalidField("options.scale", absl::StrCat(*args.scale, " is not finite"));
  }
  plan.scale =
      args.scale ? *args.scale : static_cast<float>(1.0 / std::sqrt(static_cast<double>(plan.D)));
  if (args.attn_mask) {
    absl::StatusOr<MaskLayout> m = AttnMaskLayout(*args.attn_mask, plan);
    if (!m.ok()) return m.status();
    plan.attn_mask = *m;
  }
  if (args.key_padding_mask) {
    absl::StatusOr<MaskLayout> m = KeyPaddingLayout(*args.key_padding_mask, plan);
    if (!m.ok()) return m.status();
    plan.key_padding_mask = *m;
  }
  return absl::OkStatus();
}

// The output and weights shapes (unbatched calls drop B).
void SetResultShapes(const AttentionArgs& args, Plan& plan) {
  std::vector<int64_t>& out = plan.info.output_shape;
  if (plan.rank == 4) {
    out = {plan.B, plan.H, plan.L, plan.Dv};
  } else {
    if (plan.rank == 3) out.push_back(plan.B);
    out.push_back(plan.L);
    out.push_back(plan.has_projection ? plan.proj.embed_dim : plan.H * plan.Dv);
  }
  if (args.weights != WeightsMode::kNone) {
    std::vector<int64_t>& w = plan.info.weights_shape;
    if (plan.rank != 2) w.push_back(plan.B);
    if (args.weights == WeightsMode::kPerHead) w.push_back(plan.H);
    w.push_back(plan.L);
    w.push_back(plan.S);
  }
}

// Work and memory are figured in double: every factor is below 2^40, so no
// overflow.

// Flops (multiply-adds x 2) of the heads' two products.
double AttentionFlops(const Plan& plan) {
  return 2.0 * static_cast<double>(plan.B) * plan.H * plan.L * plan.S * (plan.D + plan.Dv);
}

// Flops of the whole call: the heads and the projections.
double CallFlops(const Plan& plan) {
  double flops = AttentionFlops(plan);
  if (plan.has_projection) {
    const double B = plan.B, L = plan.L, S = plan.S, E = plan.proj.embed_dim;
    flops +=
        2.0 * B * E * (2 * L * E + S * (plan.proj.kdim + plan.proj.vdim)) + 2.0 * B * L * E * E;
  }
  return flops;
}

// Bytes the call takes whatever its schedule: float32 copies of inputs not
// read in place, projected Q, K, V and their concatenation, the results.
// With bfloat16 products: bfloat16 copies of the inputs (via float32 when
// they arrive as float16), of inline weights, projected Q, K, V in bfloat16
// and their concatenation.
double FixedBytes(const AttentionArgs& args, const Plan& plan) {
  auto converted = [](const TensorView& t) {
    return ReadableAsFloat32(t) ? 0.0 : 4.0 * ShapeProduct<double>(t.shape);
  };
  auto input = [&](const TensorView& t) {
    if (!plan.bf16) return converted(t);
    if (ReadableAsBFloat16(t)) return 0.0;
    return converted(t) + 2.0 * ShapeProduct<double>(t.shape);
  };
  double bytes = input(args.query);
  if (!args.self_attention) bytes += input(*args.key) + input(*args.value);
  if (plan.has_projection) {
    const double B = plan.B, L = plan.L, S = plan.S, E = plan.proj.embed_dim;
    const bool per_call_bf16 = plan.bf16 && args.projection->prepared == nullptr;
    for (const ProjectionTensor& t : kProjectionTensors) {
      const std::optional<TensorView>& w = args.projection->*t.member;
      if (w) bytes += converted(*w) + (per_call_bf16 ? 2.0 * ShapeProduct<double>(w->shape) : 0);
    }
    if (plan.bf16) {
      bytes += 2.0 * E * (2 * B * L + 2 * B * S);
    } else {
      bytes += 4.0 * E * (2 * B * L + 2 * B * S);  // q, k, v projected + concat
    }
  }
  for (const auto* m : {&args.attn_mask, &args.key_padding_mask}) {
    if (*m && (*m)->dtype != DType::kBool) bytes += converted(**m);
  }
  const std::vector<int64_t>& w = plan.info.weights_shape;
  bytes += 4.0 * (ShapeProduct<double>(plan.info.output_shape) +
                  (w.empty() ? 0.0 : ShapeProduct<double>(w)));
  return bytes;
}

// Threads, kernel (fused, batched or row tiles) and head shares, for speed.
void ChooseSchedule(const AttentionArgs& args, const ComputeOptions& options, Plan& plan) {
  const double B = plan.B, L = plan.L, S = plan.S, H = plan.H;
  plan.threads = options.max_threads > 0 ? options.max_threads : omp_get_max_threads();
  const double tiles = CeilDiv(plan.L, kRowTile);
  if (args.weights == WeightsMode::kAveraged &&
      B * tiles < plan.threads) {  // shares for idle threads
    plan.head_splits =
        std::min<int64_t>(plan.H, static_cast<int64_t>(std::ceil(plan.threads / (B * tiles))));
  }
  const double units =
      args.weights == WeightsMode::kAveraged ? B * tiles * plan.head_splits : B * H * tiles;
  // One thread, or the whole team: a team of another size makes libgomp let
  // its spare threads exit and start new ones later, which costs thread starts
  // and loses the CPU pinning of an Executor's threads (new threads inherit
  // the master's CPU).
  const double wanted = std::min(units, std::floor(AttentionFlops(plan) / kMinFlopsPerThread));
  if (wanted < 2) plan.threads = 1;
  plan.fused = args.weights == WeightsMode::kNone && plan.S >= options.fused_min_keys;
  // Many (batch, head) pairs of little work each (short sequences, large
  // batches): one batched product per group of batch entries and all heads,
  // instead of a few microseconds of primitive overhead per pair.
  const double per_head = std::min<double>(L, kRowTile) * S * (plan.D + plan.Dv);
  const bool many_units = B * tiles >= 2.0 * plan.threads;  // else batching idles threads
  // Too few batch entries and row tiles for the threads: bfloat16 products
  // still batch, over smaller row tiles (brgemm takes those views; float32
  // products run about as fast per head).
  const bool split_rows = plan.bf16 && !many_units && plan.threads > 1 && L >= 2 * kMinSplitRows;
  const double small_head =
      plan.bf16 && (many_units || split_rows) ? kSmallHeadWorkBfloat16 : kSmallHeadWork;
  if (args.weights != WeightsMode::kPerHead && !plan.fused && per_head < small_head) {
    if (split_rows) {  // a row tile a thread (of at least kMinSplitRows rows)
      const int64_t tiles_wanted = CeilDiv(plan.threads, plan.B);
      plan.row_tile = std::max(kMinSplitRows, RoundUp(CeilDiv(plan.L, tiles_wanted), 16));
      plan.row_tile = std::min(plan.row_tile, kRowTile);
    }
    const int64_t row_tiles = CeilDiv(plan.L, plan.row_tile);
    plan.group = std::clamp<int64_t>(static_cast<int64_t>(kGroupWork / (H * per_head)), 1, plan.B);
    const int64_t most = CeilDiv(plan.B * row_tiles, plan.threads);  // keep threads busy
    plan.group = std::max<int64_t>(1, std::min(plan.group, most));
    if (CeilDiv(plan.B, plan.group) * row_tiles < 2) plan.threads = 1;  // one thread or the team
    plan.head_splits = 1;  // the batched path averages every head of its scores itself
  }
  if (plan.threads == 1) plan.head_splits = 1;
}

// `bytes` plus what the schedule adds: per-thread scratch, partial averages
// and packed keys/values. Head shares and packing are only speed-ups: they
// are reduced or dropped rather than take the call over the memory limit.
double ScheduleBytes(const AttentionArgs& args, const ComputeOptions& options, Plan& plan,
                     double bytes) {
  const double limit = static_cast<double>(options.max_memory_bytes);
  bytes += 4.0 * plan.threads * ScratchPerThread(plan, args.weights);
  while (plan.head_splits > 1 && bytes + 4.0 * PartialAverageFloats(plan) > limit)
    --plan.head_splits;
  bytes += 4.0 * PartialAverageFloats(plan);
  // Whole score rows or key tiles read K^T and V through views with the
  // stride of a projected row; when several row tiles (or grouped query
  // heads) read the same head, one contiguous copy per head is cheaper than
  // oneDNN's strided access in every product.
  const double packed_bytes = 4.0 * (PackedKeyFloats(plan) + PackedValueFloats(plan));
  plan.pack_kv = plan.group == 0 && plan.S >= options.pack_min_keys &&
                 CeilDiv(plan.L, kRowTile) * (plan.H / plan.Hkv) >= kMinPackReuse &&
                 bytes + packed_bytes <= limit;
  if (plan.pack_kv) bytes += packed_bytes;
  return bytes;
}

}  // namespace

int64_t ScoreScratchPerThread(const Plan& plan, WeightsMode weights) {
  if (plan.fused) return kRowTile * kKeyTile + 2 * kRowTile * plan.Dv;
  if (plan.group > 0) return plan.group * plan.H * std::min(kRowTile, plan.L) * plan.S;
  return weights == WeightsMode::kPerHead ? 0 : kRowTile * plan.S;
}

int64_t ProbabilityElements(const Plan& plan) {
  if (plan.fused) return kRowTile * kKeyTile;
  if (plan.group > 0) return plan.group * plan.H * std::min(kRowTile, plan.L) * plan.S;
  return kRowTile * plan.S;
}

int64_t ScratchPerThread(const Plan& plan, WeightsMode weights) {
  const int64_t scores = ScoreScratchPerThread(plan, weights);
  if (!plan.bf16) return scores;
  return RoundUp(scores, 16) + RoundUp(CeilDiv(ProbabilityElements(plan), 2), 16);
}

int64_t PartialAverageFloats(const Plan& plan) {
  return (plan.head_splits - 1) * plan.B * plan.L * plan.S;
}

int64_t PackedKeyFloats(const Plan& plan) {
  return plan.B * plan.Hkv * plan.D * PackedKeyStride(plan.S);
}
int64_t PackedValueFloats(const Plan& plan) { return plan.B * plan.Hkv * plan.S * plan.Dv; }

absl::StatusOr<Plan> MakePlan(const AttentionArgs& args, const ComputeOptions& options) {
  Plan p;
  if (absl::Status s = ValidateArgs(args, p); !s.ok()) return s;
  SetResultShapes(args, p);
  p.info.precision = EffectivePrecision(args.precision);
  p.bf16 = p.info.precision == Precision::kBFloat16;
  ChooseSchedule(args, options, p);
  const double bytes = ScheduleBytes(args, options, p, FixedBytes(args, p));
  p.info.memory_bytes = static_cast<int64_t>(std::min(bytes, 9e18));
  p.info.flops = CallFlops(p);
  const double scores = static_cast<double>(p.B) * p.H * p.L * p.S * (args.causal ? 0.5 : 1.0);
  p.info.work = p.info.flops + kWorkPerScore * scores;
  if (options.max_work > 0 && p.info.work > options.max_work) {
    absl::Status refused = absl::ResourceExhaustedError(absl::StrCat(
        "request needs an estimated ", static_cast<int64_t>(p.info.work / 1e9),
        " GFLOP of work (B=", p.B, ", H=", p.H, ", L=", p.L, ", S=", p.S,
        "), over the per-request work limit of ", static_cast<int64_t>(options.max_work / 1e9),
        " GFLOP; send smaller requests"));
    refused.SetPayload(kWorkLimitPayload, absl::Cord("1"));
    return refused;
  }
  if (bytes > static_cast<double>(options.max_memory_bytes)) {
    return absl::ResourceExhaustedError(
        absl::StrCat("request needs an estimated ", MiB(bytes), " MiB (B=", p.B, ", H=", p.H,
                     ", L=", p.L, ", S=", p.S, "), over the per-request memory limit of ",
                     MiB(options.max_memory_bytes), " MiB"));
  }
  return p;
}

}  // namespace internal
}  // namespace attention
