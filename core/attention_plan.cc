#include "core/attention_plan.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "absl/status/status.h"
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
absl::StatusOr<MaskLayout> AttnMaskLayout(const TensorView& v, const Plan& p) {
  constexpr absl::string_view kName = "options.attn_mask";
  if (absl::Status s = CheckedElements(v, kName).status(); !s.ok()) return s;
  const std::vector<int64_t>& d = v.shape;
  const int64_t L = p.L, S = p.S, H = p.H, B = p.B;
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

absl::StatusOr<MaskLayout> KeyPaddingLayout(const TensorView& v, const Plan& p) {
  constexpr absl::string_view kName = "options.key_padding_mask";
  if (absl::Status s = CheckedElements(v, kName).status(); !s.ok()) return s;
  const std::vector<int64_t> want =
      p.rank == 2 ? std::vector<int64_t>{p.S} : std::vector<int64_t>{p.B, p.S};
  if (v.shape != want) {
    return InvalidField(kName,
                        absl::StrCat("shape ", ShapeString(v.shape), " should be ",
                                     p.rank == 2 ? "[S] = " : "[B, S] = ", ShapeString(want)));
  }
  MaskLayout m{&v};
  m.batch = p.S;
  m.col = 1;
  return m;
}

// Shapes and heads of a rank-4 call: [B, H, L, D] x [B, Hkv, S, D] x [B, Hkv, S, Dv].
absl::Status PlanRank4(const AttentionArgs& a, const TensorView& k, const TensorView& v, Plan& p) {
  const std::vector<int64_t>& q = a.query.shape;
  if (a.projection != nullptr) {
    return InvalidField("options.projection",
                        "rank-4 inputs [B, H, L, D] are already split into heads; "
                        "projection weights need [B, L, E] inputs");
  }
  p.B = q[0], p.H = q[1], p.L = q[2], p.D = q[3];
  if (k.shape[0] != p.B) {
    return InvalidField(
        "key", absl::StrCat("shape ", ShapeString(k.shape), " does not match query batch ", p.B));
  }
  if (k.shape[3] != p.D) {
    return InvalidField("key",
                        absl::StrCat("head dim ", k.shape[3], " (shape ", ShapeString(k.shape),
                                     ") does not match query head dim ", p.D));
  }
  p.Hkv = k.shape[1], p.S = k.shape[2];
  if (v.shape[0] != p.B || v.shape[1] != p.Hkv || v.shape[2] != p.S) {
    return InvalidField(
        "value", absl::StrCat("shape ", ShapeString(v.shape), " should be [", p.B, ",", p.Hkv, ",",
                              p.S, ",Dv] to match key ", ShapeString(k.shape)));
  }
  p.Dv = v.shape[3];
  if (a.num_heads != 0 && a.num_heads != p.H) {
    return InvalidField("options.num_heads", absl::StrCat(a.num_heads, " does not match the ", p.H,
                                                          " heads of query ", ShapeString(q)));
  }
  if (a.num_kv_heads != 0 && a.num_kv_heads != p.Hkv) {
    return InvalidField("options.num_kv_heads",
                        absl::StrCat(a.num_kv_heads, " does not match the ", p.Hkv,
                                     " heads of key ", ShapeString(k.shape)));
  }
  if (p.H % p.Hkv != 0) {
    return InvalidField(
        "key", absl::StrCat("its ", p.Hkv, " heads do not divide the query's ", p.H, " heads"));
  }
  return absl::OkStatus();
}

// Heads of a rank-2/3 call with projection weights, whose shapes fix E,
// kdim and vdim (p.Eq, p.Ek, p.Ev and p.H already set).
absl::Status PlanProjected(const AttentionArgs& a, const TensorView& k, const TensorView& v,
                           Plan& p) {
  const std::vector<int64_t>& q = a.query.shape;
  const char* qname = a.self_attention ? "input" : "query";
  absl::StatusOr<ProjectionShape> ps = ValidateProjection(*a.projection, "options.projection.");
  if (!ps.ok()) return ps.status();
  p.has_projection = true;
  p.proj = *ps;
  const int64_t E = ps->embed_dim;
  if (p.Eq != E) {
    return InvalidField(qname, absl::StrCat("last dim ", p.Eq, " (shape ", ShapeString(q),
                                            ") does not match the projection's embed_dim ", E));
  }
  if (p.Ek != ps->kdim) {
    return InvalidField("key", absl::StrCat("last dim ", p.Ek, " (shape ", ShapeString(k.shape),
                                            ") does not match the projection's kdim ", ps->kdim));
  }
  if (p.Ev != ps->vdim) {
    return InvalidField("value", absl::StrCat("last dim ", p.Ev, " (shape ", ShapeString(v.shape),
                                              ") does not match the projection's vdim ", ps->vdim));
  }
  if (E % p.H != 0) {
    return InvalidField("options.num_heads",
                        absl::StrCat(p.H, " does not divide the model's embed_dim ", E));
  }
  if (a.num_kv_heads != 0 && a.num_kv_heads != p.H) {
    return InvalidField("options.num_kv_heads",
                        "grouped-query heads are for inputs without projection weights "
                        "(nn.MultiheadAttention has num_heads key/value heads)");
  }
  p.Hkv = p.H;
  p.D = p.Dv = E / p.H;
  return absl::OkStatus();
}

// Shapes and heads of a rank-2/3 call: [B, L, Eq] x [B, S, Ek] x [B, S, Ev].
absl::Status PlanEmbedded(const AttentionArgs& a, const TensorView& k, const TensorView& v,
                          Plan& p) {
  const std::vector<int64_t>& q = a.query.shape;
  const bool batched = p.rank == 3;
  p.B = batched ? q[0] : 1;
  p.L = q[q.size() - 2];
  p.Eq = q.back();
  if (batched && k.shape[0] != p.B) {
    return InvalidField(
        "key", absl::StrCat("shape ", ShapeString(k.shape), " does not match query batch ", p.B));
  }
  if (batched && v.shape[0] != p.B) {
    return InvalidField(
        "value", absl::StrCat("shape ", ShapeString(v.shape), " does not match query batch ", p.B));
  }
  p.S = k.shape[k.shape.size() - 2];
  p.Ek = k.shape.back();
  if (v.shape[v.shape.size() - 2] != p.S) {
    return InvalidField("value",
                        absl::StrCat("length ", v.shape[v.shape.size() - 2], " (shape ",
                                     ShapeString(v.shape), ") does not match key length ", p.S));
  }
  p.Ev = v.shape.back();
  if (a.num_heads <= 0) {
    return InvalidField("options.num_heads",
                        absl::StrCat("must be positive (got ", a.num_heads, ")"));
  }
  p.H = a.num_heads;
  const char* qname = a.self_attention ? "input" : "query";
  if (a.projection != nullptr) return PlanProjected(a, k, v, p);
  if (p.Eq % p.H != 0) {
    return InvalidField("options.num_heads",
                        absl::StrCat(p.H, " does not divide the ", qname, " dim ", p.Eq));
  }
  p.D = p.Eq / p.H;
  p.Hkv = a.num_kv_heads == 0 ? p.H : a.num_kv_heads;
  if (p.Hkv < 0 || p.H % p.Hkv != 0) {
    return InvalidField("options.num_kv_heads",
                        absl::StrCat(a.num_kv_heads, " must divide num_heads ", p.H));
  }
  if (p.Ek != p.Hkv * p.D) {
    return InvalidField("key",
                        absl::StrCat("last dim ", p.Ek, " (shape ", ShapeString(k.shape),
                                     ") should be num_kv_heads x head_dim = ", p.Hkv, " x ", p.D));
  }
  if (p.Ev % p.Hkv != 0) {
    return InvalidField(
        "value", absl::StrCat("last dim ", p.Ev, " is not a multiple of ", "num_kv_heads ", p.Hkv));
  }
  p.Dv = p.Ev / p.Hkv;
  return absl::OkStatus();
}

double MiB(double bytes) { return std::ceil(bytes / (1 << 20)); }

// Validates the tensors of `a` and its options, and sets p's shapes, heads,
// scale and mask layouts.
absl::Status ValidateArgs(const AttentionArgs& a, Plan& p) {
  const char* qname = a.self_attention ? "input" : "query";
  if (absl::Status s = CheckFloatTensor(a.query, qname); !s.ok()) return s;
  p.rank = static_cast<int>(a.query.shape.size());
  if (p.rank < 2 || p.rank > 4) {
    return InvalidField(qname, absl::StrCat("shape ", ShapeString(a.query.shape),
                                            " is not supported; expected [B, L, E], [L, E] "
                                            "or [B, H, L, D]"));
  }
  if (a.self_attention && (a.key || a.value)) {
    return InvalidField("key", "self-attention takes one input (query = key = value)");
  }
  const TensorView& k = a.self_attention ? a.query : (a.key ? *a.key : a.query);
  const TensorView& v = a.self_attention ? a.query : (a.value ? *a.value : a.query);
  if (!a.self_attention) {
    if (!a.key) return InvalidField("key", "missing");
    if (!a.value) return InvalidField("value", "missing");
    for (const auto& [t, name] : {std::pair{&k, "key"}, std::pair{&v, "value"}}) {
      if (absl::Status s = CheckFloatTensor(*t, name); !s.ok()) return s;
      if (t->shape.size() != a.query.shape.size()) {
        return InvalidField(
            name, absl::StrCat("rank ", t->shape.size(), " (shape ", ShapeString(t->shape),
                               ") does not match query rank ", p.rank));
      }
    }
  }
  absl::Status shaped = p.rank == 4 ? PlanRank4(a, k, v, p) : PlanEmbedded(a, k, v, p);
  if (!shaped.ok()) return shaped;

  if (a.scale && !std::isfinite(*a.scale)) {
    return InvalidField("options.scale", absl::StrCat(*a.scale, " is not finite"));
  }
  p.scale = a.scale ? *a.scale : static_cast<float>(1.0 / std::sqrt(static_cast<double>(p.D)));
  if (a.attn_mask) {
    absl::StatusOr<MaskLayout> m = AttnMaskLayout(*a.attn_mask, p);
    if (!m.ok()) return m.status();
    p.attn_mask = *m;
  }
  if (a.key_padding_mask) {
    absl::StatusOr<MaskLayout> m = KeyPaddingLayout(*a.key_padding_mask, p);
    if (!m.ok()) return m.status();
    p.key_padding_mask = *m;
  }
  return absl::OkStatus();
}

// The output and weights shapes (unbatched calls drop B).
void SetResultShapes(const AttentionArgs& a, Plan& p) {
  std::vector<int64_t>& out = p.info.output_shape;
  if (p.rank == 4) {
    out = {p.B, p.H, p.L, p.Dv};
  } else {
    if (p.rank == 3) out.push_back(p.B);
    out.push_back(p.L);
    out.push_back(p.has_projection ? p.proj.embed_dim : p.H * p.Dv);
  }
  if (a.weights != WeightsMode::kNone) {
    std::vector<int64_t>& w = p.info.weights_shape;
    if (p.rank != 2) w.push_back(p.B);
    if (a.weights == WeightsMode::kPerHead) w.push_back(p.H);
    w.push_back(p.L);
    w.push_back(p.S);
  }
}

// Work and memory are figured in double: every factor is below 2^40, so no
// overflow.

// Flops (multiply-adds x 2) of the heads' two products.
double AttentionFlops(const Plan& p) {
  return 2.0 * static_cast<double>(p.B) * p.H * p.L * p.S * (p.D + p.Dv);
}

// Flops of the whole call: the heads and the projections.
double CallFlops(const Plan& p) {
  double flops = AttentionFlops(p);
  if (p.has_projection) {
    const double B = p.B, L = p.L, S = p.S, E = p.proj.embed_dim;
    flops += 2.0 * B * E * (2 * L * E + S * (p.proj.kdim + p.proj.vdim)) + 2.0 * B * L * E * E;
  }
  return flops;
}

// Bytes the call takes whatever its schedule: float32 copies of inputs not
// read in place, projected Q, K, V and their concatenation, the results.
// With bfloat16 products: bfloat16 copies of the inputs (via float32 when
// they arrive as float16), of inline weights, projected Q, K, V in bfloat16
// and their concatenation.
double FixedBytes(const AttentionArgs& a, const Plan& p) {
  auto converted = [](const TensorView& t) {
    return ReadableAsFloat32(t) ? 0.0 : 4.0 * ShapeProduct<double>(t.shape);
  };
  auto input = [&](const TensorView& t) {
    if (!p.bf16) return converted(t);
    if (ReadableAsBFloat16(t)) return 0.0;
    return converted(t) + 2.0 * ShapeProduct<double>(t.shape);
  };
  double bytes = input(a.query);
  if (!a.self_attention) bytes += input(*a.key) + input(*a.value);
  if (p.has_projection) {
    const double B = p.B, L = p.L, S = p.S, E = p.proj.embed_dim;
    const bool per_call_bf16 = p.bf16 && a.projection->prepared == nullptr;
    for (const ProjectionTensor& t : kProjectionTensors) {
      const std::optional<TensorView>& w = a.projection->*t.member;
      if (w) bytes += converted(*w) + (per_call_bf16 ? 2.0 * ShapeProduct<double>(w->shape) : 0);
    }
    if (p.bf16) {
      bytes += 2.0 * E * (2 * B * L + 2 * B * S);
    } else {
      bytes += 4.0 * E * (2 * B * L + 2 * B * S);  // q, k, v projected + concat
    }
  }
  for (const auto* m : {&a.attn_mask, &a.key_padding_mask}) {
    if (*m && (*m)->dtype != DType::kBool) bytes += converted(**m);
  }
  const std::vector<int64_t>& w = p.info.weights_shape;
  bytes += 4.0 * (ShapeProduct<double>(p.info.output_shape) +
                  (w.empty() ? 0.0 : ShapeProduct<double>(w)));
  return bytes;
}

// Threads, kernel (fused, batched or row tiles) and head shares, for speed.
void ChooseSchedule(const AttentionArgs& a, const ComputeOptions& o, Plan& p) {
  const double B = p.B, L = p.L, S = p.S, H = p.H;
  p.threads = o.max_threads > 0 ? o.max_threads : omp_get_max_threads();
  const double tiles = CeilDiv(p.L, kRowTile);
  if (a.weights == WeightsMode::kAveraged && B * tiles < p.threads) {  // shares for idle threads
    p.head_splits =
        std::min<int64_t>(p.H, static_cast<int64_t>(std::ceil(p.threads / (B * tiles))));
  }
  const double units =
      a.weights == WeightsMode::kAveraged ? B * tiles * p.head_splits : B * H * tiles;
  // One thread, or the whole team: a team of another size makes libgomp let
  // its spare threads exit and start new ones later, which costs thread starts
  // and loses the CPU pinning of an Executor's threads (new threads inherit
  // the master's CPU).
  const double wanted = std::min(units, std::floor(AttentionFlops(p) / kMinFlopsPerThread));
  if (wanted < 2) p.threads = 1;
  p.fused = a.weights == WeightsMode::kNone && p.S >= o.fused_min_keys;
  // Many (batch, head) pairs of little work each (short sequences, large
  // batches): one batched product per group of batch entries and all heads,
  // instead of a few microseconds of primitive overhead per pair.
  const double per_head = std::min<double>(L, kRowTile) * S * (p.D + p.Dv);
  const bool many_units = B * tiles >= 2.0 * p.threads;  // else batching idles threads
  // Too few batch entries and row tiles for the threads: bfloat16 products
  // still batch, over smaller row tiles (brgemm takes those views; float32
  // products run about as fast per head).
  const bool split_rows = p.bf16 && !many_units && p.threads > 1 && L >= 2 * kMinSplitRows;
  const double small_head =
      p.bf16 && (many_units || split_rows) ? kSmallHeadWorkBfloat16 : kSmallHeadWork;
  if (a.weights != WeightsMode::kPerHead && !p.fused && per_head < small_head) {
    if (split_rows) {  // a row tile a thread (of at least kMinSplitRows rows)
      const int64_t tiles_wanted = CeilDiv(p.threads, p.B);
      p.row_tile = std::max(kMinSplitRows, RoundUp(CeilDiv(p.L, tiles_wanted), 16));
      p.row_tile = std::min(p.row_tile, kRowTile);
    }
    const int64_t row_tiles = CeilDiv(p.L, p.row_tile);
    p.group = std::clamp<int64_t>(static_cast<int64_t>(kGroupWork / (H * per_head)), 1, p.B);
    const int64_t most = CeilDiv(p.B * row_tiles, p.threads);  // keep threads busy
    p.group = std::max<int64_t>(1, std::min(p.group, most));
    if (CeilDiv(p.B, p.group) * row_tiles < 2) p.threads = 1;  // one thread or the team
    p.head_splits = 1;  // the batched path averages every head of its scores itself
  }
  if (p.threads == 1) p.head_splits = 1;
}

// `bytes` plus what the schedule adds: per-thread scratch, partial averages
// and packed keys/values. Head shares and packing are only speed-ups: they
// are reduced or dropped rather than take the call over the memory limit.
double ScheduleBytes(const AttentionArgs& a, const ComputeOptions& o, Plan& p, double bytes) {
  const double limit = static_cast<double>(o.max_memory_bytes);
  bytes += 4.0 * p.threads * ScratchPerThread(p, a.weights);
  while (p.head_splits > 1 && bytes + 4.0 * PartialAverageFloats(p) > limit) --p.head_splits;
  bytes += 4.0 * PartialAverageFloats(p);
  // Whole score rows or key tiles read K^T and V through views with the
  // stride of a projected row; when several row tiles (or grouped query
  // heads) read the same head, one contiguous copy per head is cheaper than
  // oneDNN's strided access in every product.
  const double packed_bytes = 4.0 * (PackedKeyFloats(p) + PackedValueFloats(p));
  p.pack_kv = p.group == 0 && p.S >= o.pack_min_keys &&
              CeilDiv(p.L, kRowTile) * (p.H / p.Hkv) >= kMinPackReuse &&
              bytes + packed_bytes <= limit;
  if (p.pack_kv) bytes += packed_bytes;
  return bytes;
}

}  // namespace

int64_t ScoreScratchPerThread(const Plan& p, WeightsMode weights) {
  if (p.fused) return kRowTile * kKeyTile + 2 * kRowTile * p.Dv;
  if (p.group > 0) return p.group * p.H * std::min(kRowTile, p.L) * p.S;
  return weights == WeightsMode::kPerHead ? 0 : kRowTile * p.S;
}

int64_t ProbabilityElements(const Plan& p) {
  if (p.fused) return kRowTile * kKeyTile;
  if (p.group > 0) return p.group * p.H * std::min(kRowTile, p.L) * p.S;
  return kRowTile * p.S;
}

int64_t ScratchPerThread(const Plan& p, WeightsMode weights) {
  const int64_t scores = ScoreScratchPerThread(p, weights);
  if (!p.bf16) return scores;
  return RoundUp(scores, 16) + RoundUp(CeilDiv(ProbabilityElements(p), 2), 16);
}

int64_t PartialAverageFloats(const Plan& p) { return (p.head_splits - 1) * p.B * p.L * p.S; }

int64_t PackedKeyFloats(const Plan& p) { return p.B * p.Hkv * p.D * PackedKeyStride(p.S); }
int64_t PackedValueFloats(const Plan& p) { return p.B * p.Hkv * p.S * p.Dv; }

absl::StatusOr<Plan> MakePlan(const AttentionArgs& a, const ComputeOptions& o) {
  Plan p;
  if (absl::Status s = ValidateArgs(a, p); !s.ok()) return s;
  SetResultShapes(a, p);
  p.info.precision = EffectivePrecision(a.precision);
  p.bf16 = p.info.precision == Precision::kBFloat16;
  ChooseSchedule(a, o, p);
  const double bytes = ScheduleBytes(a, o, p, FixedBytes(a, p));
  p.info.memory_bytes = static_cast<int64_t>(std::min(bytes, 9e18));
  p.info.flops = CallFlops(p);
  if (bytes > static_cast<double>(o.max_memory_bytes)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "request needs an estimated ", MiB(bytes), " MiB (B=", p.B, ", H=", p.H, ", L=", p.L,
        ", S=", p.S, "), over the per-request memory limit of ", MiB(o.max_memory_bytes), " MiB"));
  }
  return p;
}

}  // namespace internal
}  // namespace attention
