#include "core/attention.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/onednn_ops.h"
#include "oneapi/dnnl/dnnl.hpp"

namespace attention {

struct PreparedProjection {
  // B of each projection's product, reordered (nullptr: read in place).
  std::shared_ptr<const internal::PackedMatrix> q, k, v, out;
};

namespace {

using internal::Gemm;
using internal::GemmShape;
using internal::Mat;

// Query rows per unit of work. A unit's score tile is kRowTile x S floats, so
// memory for scores is O(threads x kRowTile x S) at most (O(threads x
// kRowTile x kKeyTile) on the fused path), never O(B x H x L x S)
// (unless the caller asks for per-head weights, which are that size).
constexpr int64_t kRowTile = 128;
// Keys per tile of the fused path (no weights asked for).
constexpr int64_t kKeyTile = 512;
// With causal masking a tile computes only the keys up to its last row,
// rounded up to this many columns (bounds the number of distinct shapes).
constexpr int64_t kCausalColumnStep = 64;
// Heads with fewer multiply-adds than this (per row tile) are batched, in
// groups of about kGroupWork multiply-adds a unit.
constexpr double kSmallHeadWork = 1 << 20;
constexpr double kGroupWork = 1 << 22;
// Below this many flops a unit of work, extra threads cost more than they give.
constexpr double kMinFlopsPerThread = 4e6;

// Row tiles (times query heads per key/value head) that read one head's
// keys and values before they are packed into contiguous copies.
constexpr int64_t kMinPackReuse = 4;

// Row stride of packed K^T: S rounded up to 16 floats (64 bytes), plus 16,
// so that rows are not a power of two apart (they would share cache sets).
int64_t PackedKeyStride(int64_t S) { return (S + 15) / 16 * 16 + 16; }

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Element strides of a [B, H, rows, dim] view. The features of a row are
// contiguous (dim = 1) except in keys packed as K^T (row = 1, dim =
// PackedKeyStride(S)).
struct HeadLayout {
  int64_t batch = 0;
  int64_t head = 0;
  int64_t row = 0;
  int64_t dim = 1;
};

// A mask broadcast to [B, H, L, S] by element strides (0 = broadcast).
struct MaskLayout {
  const TensorView* view = nullptr;
  int64_t batch = 0;
  int64_t head = 0;
  int64_t row = 0;
  int64_t col = 0;
};

struct Plan {
  AttentionPlanInfo info;
  int rank = 3;
  int64_t B = 1, L = 0, S = 0, H = 0, Hkv = 0, D = 0, Dv = 0;
  int64_t Eq = 0, Ek = 0, Ev = 0;
  float scale = 1.0f;
  bool has_projection = false;
  bool fused = false;  // AttendRowsFused rather than AttendRows
  bool pack_kv = false;  // K^T and V copied per head before the heads run
  int64_t group = 0;   // > 0: AttendBatched over this many batch entries a unit
  // Averaged weights on the row path: units of work split each row tile's
  // heads this many ways, each share summing into its own partial average
  // (added up after the heads ran), when row tiles are fewer than threads.
  int64_t head_splits = 1;
  ProjectionShape proj;
  std::optional<MaskLayout> attn_mask;
  std::optional<MaskLayout> key_padding_mask;
  int threads = 1;
};

// Floats of per-thread scratch: the fused path's score tile and two output
// tiles; the batched path's scores of `group` batch entries x all heads; or
// the row path's kRowTile whole score rows (none for per-head weights, whose
// rows are computed in place in the output).
int64_t ScratchPerThread(const Plan& p, WeightsMode weights) {
  if (p.fused) return kRowTile * kKeyTile + 2 * kRowTile * p.Dv;
  if (p.group > 0) return p.group * p.H * std::min(kRowTile, p.L) * p.S;
  return weights == WeightsMode::kPerHead ? 0 : kRowTile * p.S;
}

// Floats of the partial averages beyond the first (Plan::head_splits).
int64_t PartialAverageFloats(const Plan& p) { return (p.head_splits - 1) * p.B * p.L * p.S; }

// Floats of the packed copies of K^T and V (Plan::pack_kv).
int64_t PackedKeyFloats(const Plan& p) { return p.B * p.Hkv * p.D * PackedKeyStride(p.S); }
int64_t PackedValueFloats(const Plan& p) { return p.B * p.Hkv * p.S * p.Dv; }

absl::Status Invalid(absl::string_view name, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(name, ": ", what));
}

absl::Status CheckFloatTensor(const TensorView& v, absl::string_view name) {
  if (!IsFloat(v.dtype)) {
    return Invalid(name, absl::StrCat("dtype ", DTypeName(v.dtype),
                                      " is not supported; use FLOAT32, FLOAT16 or BFLOAT16"));
  }
  return CheckedElements(v, name).status();
}

absl::Status CheckMatrix(const std::optional<TensorView>& v, absl::string_view name,
                         std::vector<int64_t> want) {
  if (!v) return absl::OkStatus();
  if (absl::Status s = CheckFloatTensor(*v, name); !s.ok()) return s;
  if (v->shape != want) {
    return Invalid(name,
                   absl::StrCat("shape ", ShapeString(v->shape), " should be ", ShapeString(want)));
  }
  return absl::OkStatus();
}

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
  return Invalid(
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
    return Invalid(kName, absl::StrCat("shape ", ShapeString(v.shape), " should be ",
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
    return Invalid("options.projection",
                   "rank-4 inputs [B, H, L, D] are already split into heads; "
                   "projection weights need [B, L, E] inputs");
  }
  p.B = q[0], p.H = q[1], p.L = q[2], p.D = q[3];
  if (k.shape[0] != p.B) {
    return Invalid(
        "key", absl::StrCat("shape ", ShapeString(k.shape), " does not match query batch ", p.B));
  }
  if (k.shape[3] != p.D) {
    return Invalid("key", absl::StrCat("head dim ", k.shape[3], " (shape ", ShapeString(k.shape),
                                       ") does not match query head dim ", p.D));
  }
  p.Hkv = k.shape[1], p.S = k.shape[2];
  if (v.shape[0] != p.B || v.shape[1] != p.Hkv || v.shape[2] != p.S) {
    return Invalid(
        "value", absl::StrCat("shape ", ShapeString(v.shape), " should be [", p.B, ",", p.Hkv, ",",
                              p.S, ",Dv] to match key ", ShapeString(k.shape)));
  }
  p.Dv = v.shape[3];
  if (a.num_heads != 0 && a.num_heads != p.H) {
    return Invalid("options.num_heads", absl::StrCat(a.num_heads, " does not match the ", p.H,
                                                     " heads of query ", ShapeString(q)));
  }
  if (a.num_kv_heads != 0 && a.num_kv_heads != p.Hkv) {
    return Invalid("options.num_kv_heads",
                   absl::StrCat(a.num_kv_heads, " does not match the ", p.Hkv, " heads of key ",
                                ShapeString(k.shape)));
  }
  if (p.H % p.Hkv != 0) {
    return Invalid("key",
                   absl::StrCat("its ", p.Hkv, " heads do not divide the query's ", p.H, " heads"));
  }
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
    return Invalid(
        "key", absl::StrCat("shape ", ShapeString(k.shape), " does not match query batch ", p.B));
  }
  if (batched && v.shape[0] != p.B) {
    return Invalid(
        "value", absl::StrCat("shape ", ShapeString(v.shape), " does not match query batch ", p.B));
  }
  p.S = k.shape[k.shape.size() - 2];
  p.Ek = k.shape.back();
  if (v.shape[v.shape.size() - 2] != p.S) {
    return Invalid("value",
                   absl::StrCat("length ", v.shape[v.shape.size() - 2], " (shape ",
                                ShapeString(v.shape), ") does not match key length ", p.S));
  }
  p.Ev = v.shape.back();
  if (a.num_heads <= 0) {
    return Invalid("options.num_heads", absl::StrCat("must be positive (got ", a.num_heads, ")"));
  }
  p.H = a.num_heads;
  const char* qname = a.self_attention ? "input" : "query";
  if (a.projection != nullptr) {
    absl::StatusOr<ProjectionShape> ps = ValidateProjection(*a.projection, "options.projection.");
    if (!ps.ok()) return ps.status();
    p.has_projection = true;
    p.proj = *ps;
    const int64_t E = ps->embed_dim;
    if (p.Eq != E) {
      return Invalid(qname, absl::StrCat("last dim ", p.Eq, " (shape ", ShapeString(q),
                                         ") does not match the projection's embed_dim ", E));
    }
    if (p.Ek != ps->kdim) {
      return Invalid("key", absl::StrCat("last dim ", p.Ek, " (shape ", ShapeString(k.shape),
                                         ") does not match the projection's kdim ", ps->kdim));
    }
    if (p.Ev != ps->vdim) {
      return Invalid("value", absl::StrCat("last dim ", p.Ev, " (shape ", ShapeString(v.shape),
                                           ") does not match the projection's vdim ", ps->vdim));
    }
    if (E % p.H != 0) {
      return Invalid("options.num_heads",
                     absl::StrCat(p.H, " does not divide the model's embed_dim ", E));
    }
    if (a.num_kv_heads != 0 && a.num_kv_heads != p.H) {
      return Invalid("options.num_kv_heads",
                     "grouped-query heads are for inputs without projection weights "
                     "(nn.MultiheadAttention has num_heads key/value heads)");
    }
    p.Hkv = p.H;
    p.D = p.Dv = E / p.H;
    return absl::OkStatus();
  }
  if (p.Eq % p.H != 0) {
    return Invalid("options.num_heads",
                   absl::StrCat(p.H, " does not divide the ", qname, " dim ", p.Eq));
  }
  p.D = p.Eq / p.H;
  p.Hkv = a.num_kv_heads == 0 ? p.H : a.num_kv_heads;
  if (p.Hkv < 0 || p.H % p.Hkv != 0) {
    return Invalid("options.num_kv_heads",
                   absl::StrCat(a.num_kv_heads, " must divide num_heads ", p.H));
  }
  if (p.Ek != p.Hkv * p.D) {
    return Invalid("key",
                   absl::StrCat("last dim ", p.Ek, " (shape ", ShapeString(k.shape),
                                ") should be num_kv_heads x head_dim = ", p.Hkv, " x ", p.D));
  }
  if (p.Ev % p.Hkv != 0) {
    return Invalid(
        "value", absl::StrCat("last dim ", p.Ev, " is not a multiple of ", "num_kv_heads ", p.Hkv));
  }
  p.Dv = p.Ev / p.Hkv;
  return absl::OkStatus();
}

double MiB(double bytes) { return std::ceil(bytes / (1 << 20)); }

absl::StatusOr<Plan> MakePlan(const AttentionArgs& a, const ComputeOptions& o) {
  Plan p;
  const char* qname = a.self_attention ? "input" : "query";
  if (absl::Status s = CheckFloatTensor(a.query, qname); !s.ok()) return s;
  p.rank = static_cast<int>(a.query.shape.size());
  if (p.rank < 2 || p.rank > 4) {
    return Invalid(qname, absl::StrCat("shape ", ShapeString(a.query.shape),
                                       " is not supported; expected [B, L, E], [L, E] "
                                       "or [B, H, L, D]"));
  }
  if (a.self_attention && (a.key || a.value)) {
    return Invalid("key", "self-attention takes one input (query = key = value)");
  }
  const TensorView& k = a.self_attention ? a.query : (a.key ? *a.key : a.query);
  const TensorView& v = a.self_attention ? a.query : (a.value ? *a.value : a.query);
  if (!a.self_attention) {
    if (!a.key) return Invalid("key", "missing");
    if (!a.value) return Invalid("value", "missing");
    for (const auto& [t, name] : {std::pair{&k, "key"}, std::pair{&v, "value"}}) {
      if (absl::Status s = CheckFloatTensor(*t, name); !s.ok()) return s;
      if (t->shape.size() != a.query.shape.size()) {
        return Invalid(name,
                       absl::StrCat("rank ", t->shape.size(), " (shape ", ShapeString(t->shape),
                                    ") does not match query rank ", p.rank));
      }
    }
  }
  absl::Status shaped = p.rank == 4 ? PlanRank4(a, k, v, p) : PlanEmbedded(a, k, v, p);
  if (!shaped.ok()) return shaped;

  if (a.scale && !std::isfinite(*a.scale)) {
    return Invalid("options.scale", absl::StrCat(*a.scale, " is not finite"));
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

  // Result shapes (unbatched calls drop B).
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

  // Work and memory, in double: every factor is below 2^40, so no overflow.
  const double B = p.B, L = p.L, S = p.S, H = p.H;
  const double attention_flops = 2.0 * B * H * L * S * (p.D + p.Dv);
  double flops = attention_flops;
  p.threads = o.max_threads > 0 ? o.max_threads : omp_get_max_threads();
  const double tiles = std::ceil(L / kRowTile);
  if (a.weights == WeightsMode::kAveraged && B * tiles < p.threads) {  // shares for idle threads
    p.head_splits = std::min<int64_t>(p.H, static_cast<int64_t>(std::ceil(p.threads / (B * tiles))));
  }
  const double units = a.weights == WeightsMode::kAveraged ? B * tiles * p.head_splits
                                                           : B * H * tiles;
  // One thread, or the whole team: a team of another size makes libgomp let
  // its spare threads exit and start new ones later, which costs thread starts
  // and loses the CPU pinning of an Executor's threads (new threads inherit
  // the master's CPU).
  const double wanted = std::min(units, std::floor(attention_flops / kMinFlopsPerThread));
  if (wanted < 2) p.threads = 1;
  double bytes = 0;
  auto converted = [](const TensorView& t) {
    double n = 1;
    for (int64_t d : t.shape) n *= d;
    const bool in_place =
        t.dtype == DType::kFloat32 && reinterpret_cast<uintptr_t>(t.data) % alignof(float) == 0;
    return in_place ? 0.0 : 4.0 * n;
  };
  bytes += converted(a.query);
  if (!a.self_attention) bytes += converted(k) + converted(v);
  if (p.has_projection) {
    const double E = p.proj.embed_dim;
    const ProjectionWeights& w = *a.projection;
    for (const auto* t : {&w.in_proj_weight, &w.q_proj_weight, &w.k_proj_weight, &w.v_proj_weight,
                          &w.in_proj_bias, &w.out_proj_weight, &w.out_proj_bias}) {
      if (*t) bytes += converted(**t);
    }
    bytes += 4.0 * E * (2 * B * L + 2 * B * S);  // q, k, v projected + concat
    flops += 2.0 * B * E * (2 * L * E + S * (p.proj.kdim + p.proj.vdim)) + 2.0 * B * L * E * E;
  }
  for (const auto* m : {&a.attn_mask, &a.key_padding_mask}) {
    if (*m && (*m)->dtype != DType::kBool) bytes += converted(**m);
  }
  double out_elems = 1, weight_elems = p.info.weights_shape.empty() ? 0 : 1;
  for (int64_t d : p.info.output_shape) out_elems *= d;
  for (int64_t d : p.info.weights_shape) weight_elems *= d;
  bytes += 4.0 * (out_elems + weight_elems);
  p.fused = a.weights == WeightsMode::kNone && p.S >= o.fused_min_keys;
  // Many (batch, head) pairs of little work each (short sequences, large
  // batches): one batched product per group of batch entries and all heads,
  // instead of a few microseconds of primitive overhead per pair.
  const double per_head = std::min<double>(L, kRowTile) * S * (p.D + p.Dv);
  if (a.weights != WeightsMode::kPerHead && !p.fused && per_head < kSmallHeadWork) {
    const int64_t tiles = (p.L + kRowTile - 1) / kRowTile;
    p.group = std::clamp<int64_t>(static_cast<int64_t>(kGroupWork / (H * per_head)), 1, p.B);
    const int64_t most = (p.B * tiles + p.threads - 1) / p.threads;  // keep threads busy
    p.group = std::max<int64_t>(1, std::min(p.group, most));
    if ((p.B + p.group - 1) / p.group * tiles < 2) p.threads = 1;  // one thread or the team
    p.head_splits = 1;  // the batched path averages every head of its scores itself
  }
  if (p.threads == 1) p.head_splits = 1;
  bytes += 4.0 * p.threads * ScratchPerThread(p, a.weights);
  // Head shares are only a speed-up too: fewer of them (or none) rather than
  // a request over the memory limit.
  while (p.head_splits > 1 &&
         bytes + 4.0 * PartialAverageFloats(p) > static_cast<double>(o.max_memory_bytes)) {
    --p.head_splits;
  }
  bytes += 4.0 * PartialAverageFloats(p);
  // Whole score rows or key tiles read K^T and V through views with the
  // stride of a projected row; when several row tiles (or grouped query
  // heads) read the same head, one contiguous copy per head is cheaper than
  // oneDNN's strided access in every product.
  // Only a speed-up: never the reason a request goes over the memory limit.
  const double packed_bytes = 4.0 * (PackedKeyFloats(p) + PackedValueFloats(p));
  p.pack_kv = p.group == 0 && p.S >= o.pack_min_keys &&
              (p.L + kRowTile - 1) / kRowTile * (p.H / p.Hkv) >= kMinPackReuse &&
              bytes + packed_bytes <= static_cast<double>(o.max_memory_bytes);
  if (p.pack_kv) bytes += packed_bytes;
  p.info.memory_bytes = static_cast<int64_t>(std::min(bytes, 9e18));
  p.info.flops = flops;
  if (bytes > static_cast<double>(o.max_memory_bytes)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "request needs an estimated ", MiB(bytes), " MiB (B=", p.B, ", H=", p.H, ", L=", p.L,
        ", S=", p.S, "), over the per-request memory limit of ", MiB(o.max_memory_bytes), " MiB"));
  }
  return p;
}

// Float storage for one call's intermediates (projections, packed heads,
// score tiles), carved from a block kept per thread between calls. Fresh
// allocations of these megabytes came back from the system on most calls
// (free() trims the heap when that much is free at its top), so every call
// page-faulted and had the kernel zero them: ~7000 faults a call at
// (1, 2048, 512, 8) self-attention. Blocks over kKeptWorkspaceBytes are
// allocated for the call and freed after it. Not zero-filled: every element
// is written before it is read.
constexpr int64_t kKeptWorkspaceBytes = int64_t{64} << 20;

class Workspace {
 public:
  // Room for `floats` floats in total (Take rounds each piece up to 64 bytes).
  explicit Workspace(int64_t floats) {
    Kept& kept = ThisThread();
    if (!kept.in_use && floats * 4 <= kKeptWorkspaceBytes) {
      if (kept.floats < floats) {
        kept.block.reset();  // the old block goes before the larger one comes
        kept.floats = 0;     // (and none is kept if that allocation throws)
        kept.block = Allocate(floats);
        kept.floats = floats;
      }
      kept.in_use = true;
      kept_ = &kept;
      next_ = kept.block.get();
    } else if (floats > 0) {
      own_ = Allocate(floats);
      next_ = own_.get();
    }
    end_ = next_ + floats;
  }
  ~Workspace() {
    if (kept_ != nullptr) kept_->in_use = false;
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  // The next n floats (nullptr for none).
  float* Take(int64_t n) {
    if (n <= 0) return nullptr;
    float* p = next_;
    next_ += Round(n);
    if (next_ > end_) throw std::logic_error("workspace too small");  // a sizing bug
    return p;
  }

  // What Take(n) uses of the total.
  static int64_t Round(int64_t n) { return n <= 0 ? 0 : (n + 15) / 16 * 16; }

 private:
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  using Block = std::unique_ptr<float[], Free>;
  // 64-byte aligned (cache lines; AVX-512 vectors), like the pieces Take
  // hands out. Throws std::bad_alloc.
  static Block Allocate(int64_t floats) {
    void* p = std::aligned_alloc(64, static_cast<size_t>(Round(floats)) * sizeof(float));
    if (p == nullptr) throw std::bad_alloc();
    return Block(static_cast<float*>(p));
  }
  struct Kept {
    Block block;
    int64_t floats = 0;
    bool in_use = false;
  };
  static Kept& ThisThread() {
    thread_local Kept kept;
    return kept;
  }

  Kept* kept_ = nullptr;
  Block own_;
  float* next_ = nullptr;
  float* end_ = nullptr;
};

// A float32 pointer to `t`'s elements: `t` itself when it is aligned float32,
// else a converted copy kept in `storage`.
const float* AsFloat32(const TensorView& t, std::vector<float>& storage) {
  if (t.dtype == DType::kFloat32 && reinterpret_cast<uintptr_t>(t.data) % alignof(float) == 0) {
    return static_cast<const float*>(t.data);
  }
  int64_t n = 1;
  for (int64_t d : t.shape) n *= d;
  storage.resize(n);
  ConvertToFloat32(t, storage.data());
  return storage.data();
}

// A mask ready for the kernel: bool bytes or float32 values.
struct Mask {
  MaskLayout layout;
  const uint8_t* bools = nullptr;
  const float* floats = nullptr;
};

std::optional<Mask> PrepareMask(const std::optional<MaskLayout>& layout,
                                std::vector<float>& storage) {
  if (!layout) return std::nullopt;
  Mask m{*layout};
  if (layout->view->dtype == DType::kBool) {
    m.bools = static_cast<const uint8_t*>(layout->view->data);
  } else {
    m.floats = AsFloat32(*layout->view, storage);
  }
  return m;
}

// Adds `mask` at (b, h, i, j0..j0+n) to `row`.
void AddMask(const Mask& mask, int64_t b, int64_t h, int64_t i, int64_t j0, int64_t n, float* row) {
  const MaskLayout& l = mask.layout;
  const int64_t base = b * l.batch + h * l.head + i * l.row + j0 * l.col;
  if (mask.bools != nullptr) {
    const uint8_t* m = mask.bools + base;
    for (int64_t j = 0; j < n; ++j) {
      if (m[j * l.col]) row[j] = kNegInf;
    }
  } else {
    const float* m = mask.floats + base;
    for (int64_t j = 0; j < n; ++j) row[j] += m[j * l.col];
  }
}

// The tensors of one attention core call, after projections.
struct HeadsProblem {
  const Plan* plan;
  const float* q;
  const float* k;
  const float* v;
  HeadLayout ql, kl, vl, ol;
  float* out;
  WeightsMode weights;
  float* weights_out;  // [B, L, S] or [B, H, L, S], or nullptr
  std::optional<Mask> attn_mask, key_padding_mask;
  bool causal;
};

// Keys a tile of query rows [i0, i0 + m) needs: all S, or with causal
// masking those up to its last row, rounded up to kCausalColumnStep.
int64_t KeysNeeded(const HeadsProblem& pr, int64_t i0, int64_t m) {
  const int64_t S = pr.plan->S;
  if (!pr.causal) return S;
  return std::min(S, (i0 + m + kCausalColumnStep - 1) / kCausalColumnStep * kCausalColumnStep);
}

// The largest of n floats (-inf for none). std::max_element is one compare
// at a time, a dependency chain: over every score row it cost ~9% of a
// (1, 2048, 512, 8) call; this reduction runs in SIMD lanes.
float RowMax(const float* row, int64_t n) {
  float m = kNegInf;
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) m = m > row[j] ? m : row[j];  // std::max: not vectorized
  return m;
}

// Adds every mask to the scores of query row i of head h over keys
// [j0, j0 + n) and returns the row's largest masked score (-inf when all of
// them are masked).
float MaskRow(const HeadsProblem& pr, int64_t b, int64_t h, int64_t i, int64_t j0, int64_t n,
              float* row) {
  if (pr.attn_mask) AddMask(*pr.attn_mask, b, h, i, j0, n, row);
  if (pr.key_padding_mask) AddMask(*pr.key_padding_mask, b, h, i, j0, n, row);
  if (pr.causal) std::fill(row + std::clamp<int64_t>(i + 1 - j0, 0, n), row + n, kNegInf);
  return RowMax(row, n);
}

// Probabilities of query rows [i0, i0 + m) of head h over keys [j0, j0 + n)
// into `p` (row stride ld): scaled scores, masks, softmax over those n keys.
// row_max[r] is row r's largest masked score; a row whose n keys are all
// masked has row_max -inf and becomes zeros.
void TileProbabilities(const HeadsProblem& pr, int64_t b, int64_t h, int64_t i0, int64_t m,
                       int64_t j0, int64_t n, float* p, int64_t ld, float* row_max) {
  const Plan& pl = *pr.plan;
  const int64_t kvh = h / (pl.H / pl.Hkv);
  GemmShape qk;
  qk.a = Mat{m, pl.D, pr.ql.row, 1};
  qk.b = Mat{pl.D, n, pr.kl.dim, pr.kl.row};  // K^T: in place, or packed
  qk.c = Mat{m, n, ld, 1};
  qk.scale = pl.scale;
  Gemm(qk, pr.q + b * pr.ql.batch + h * pr.ql.head + i0 * pr.ql.row,
       pr.k + b * pr.kl.batch + kvh * pr.kl.head + j0 * pr.kl.row, p, nullptr);
  bool any_empty = false;
  for (int64_t r = 0; r < m; ++r) {
    row_max[r] = MaskRow(pr, b, h, i0 + r, j0, n, p + r * ld);
    any_empty |= row_max[r] == kNegInf;
  }
  internal::SoftmaxRows(m, n, ld, p);
  for (int64_t r = 0; r < m && any_empty; ++r) {
    if (row_max[r] == kNegInf) std::fill(p + r * ld, p + r * ld + n, 0.0f);
  }
}

// out (row stride out_row) = P x V for m query rows of head h over keys
// [j0, j0 + n).
void ApplyValues(const HeadsProblem& pr, int64_t b, int64_t h, int64_t m, int64_t j0, int64_t n,
                 const float* p, int64_t ld, float* out, int64_t out_row) {
  const Plan& pl = *pr.plan;
  const int64_t kvh = h / (pl.H / pl.Hkv);
  GemmShape pv;
  pv.a = Mat{m, n, ld, 1};
  pv.b = Mat{n, pl.Dv, pr.vl.row, 1};
  pv.c = Mat{m, pl.Dv, out_row, 1};
  Gemm(pv, p, pr.v + b * pr.vl.batch + kvh * pr.vl.head + j0 * pr.vl.row, out, nullptr);
}

float* OutputRows(const HeadsProblem& pr, int64_t b, int64_t h, int64_t i0) {
  return pr.out + b * pr.ol.batch + h * pr.ol.head + i0 * pr.ol.row;
}

// Query rows [i0, i0 + m) of head h with whole score rows, for calls that
// return attention weights. `scratch` holds kRowTile x S floats (unused for
// per-head weights, whose rows are computed in place in the output).
void AttendRows(const HeadsProblem& pr, int64_t b, int64_t h, int64_t i0, float* scratch) {
  const Plan& p = *pr.plan;
  const int64_t m = std::min(kRowTile, p.L - i0);
  const int64_t n = KeysNeeded(pr, i0, m);
  float* probs = scratch;
  int64_t ld = n;
  if (pr.weights == WeightsMode::kPerHead) {
    probs = pr.weights_out + ((b * p.H + h) * p.L + i0) * p.S;
    ld = p.S;
  }
  float row_max[kRowTile];
  TileProbabilities(pr, b, h, i0, m, 0, n, probs, ld, row_max);
  if (pr.weights == WeightsMode::kPerHead && n < p.S) {
    for (int64_t r = 0; r < m; ++r) std::fill(probs + r * ld + n, probs + (r + 1) * ld, 0.0f);
  }
  if (pr.weights == WeightsMode::kAveraged) {
    const float inv_h = 1.0f / static_cast<float>(p.H);
    float* avg = pr.weights_out + (b * p.L + i0) * p.S;
    for (int64_t r = 0; r < m; ++r) {
      for (int64_t j = 0; j < n; ++j) avg[r * p.S + j] += probs[r * ld + j] * inv_h;
    }
  }
  ApplyValues(pr, b, h, m, 0, n, probs, ld, OutputRows(pr, b, h, i0), pr.ol.row);
}

// Query rows [i0, i0 + m) of head h without weights, flash-attention style:
// one tile of keys at a time with an online softmax, so score memory is
// O(kRowTile x kKeyTile) whatever S is (K and V may be packed copies, O(S)),
// and causal masking skips whole tiles.
// For tile t, oneDNN's softmax gives p_t = exp(s - m_t) / l_t with m_t the
// row's largest score there; its largest entry is exp(0) / l_t, which gives
// l_t. With the running maximum M, denominator Z and unnormalised output O:
//   M' = max(M, m_t), a = exp(M - M'), c = l_t exp(m_t - M'),
//   O' = a O + c (p_t V_t), Z' = a Z + c; the output row is O / Z (zeros
//   when every key was masked: Z = 0).
void AttendRowsFused(const HeadsProblem& pr, int64_t b, int64_t h, int64_t i0, float* scratch) {
  const Plan& p = *pr.plan;
  const int64_t m = std::min(kRowTile, p.L - i0);
  const int64_t keys = KeysNeeded(pr, i0, m);
  const int64_t dv = p.Dv;
  float* probs = scratch;                    // kRowTile x kKeyTile
  float* acc = probs + kRowTile * kKeyTile;  // kRowTile x Dv
  float* tile_out = acc + kRowTile * dv;     // kRowTile x Dv
  float run_max[kRowTile], denom[kRowTile], tile_max[kRowTile];
  std::fill_n(run_max, m, kNegInf);
  std::fill_n(denom, m, 0.0f);
  std::fill_n(acc, m * dv, 0.0f);
  for (int64_t j0 = 0; j0 < keys; j0 += kKeyTile) {
    const int64_t n = std::min(kKeyTile, keys - j0);
    TileProbabilities(pr, b, h, i0, m, j0, n, probs, n, tile_max);
    ApplyValues(pr, b, h, m, j0, n, probs, n, tile_out, dv);
    for (int64_t r = 0; r < m; ++r) {
      if (tile_max[r] == kNegInf) continue;  // every key of this tile masked
      const float* row = probs + r * n;
      const float l_t = 1.0f / RowMax(row, n);
      const float new_max = std::max(run_max[r], tile_max[r]);
      const float a = run_max[r] == kNegInf ? 0.0f : std::exp(run_max[r] - new_max);
      const float c = l_t * std::exp(tile_max[r] - new_max);
      for (int64_t d = 0; d < dv; ++d) {
        acc[r * dv + d] = a * acc[r * dv + d] + c * tile_out[r * dv + d];
      }
      denom[r] = a * denom[r] + c;
      run_max[r] = new_max;
    }
  }
  float* out = OutputRows(pr, b, h, i0);
  for (int64_t r = 0; r < m; ++r) {
    const float inv = denom[r] > 0 ? 1.0f / denom[r] : 0.0f;
    for (int64_t d = 0; d < dv; ++d) out[r * pr.ol.row + d] = acc[r * dv + d] * inv;
  }
}

// Query rows [i0, i0 + m) of every head of batch entries [b0, b0 + nb), no
// weights: two batched products over [nb, Hkv, G, m, *] (query head h =
// kv * G + g reads key/value head kv by broadcasting), masks and softmax on
// the nb x H x m score rows in `scratch`.
void AttendBatched(const HeadsProblem& pr, int64_t b0, int64_t nb, int64_t i0, float* scratch) {
  const Plan& p = *pr.plan;
  const int64_t m = std::min(kRowTile, p.L - i0);
  const int64_t n = KeysNeeded(pr, i0, m);
  const int64_t H = p.H, Hkv = p.Hkv, G = p.H / p.Hkv;
  const HeadLayout &ql = pr.ql, &kl = pr.kl, &vl = pr.vl, &ol = pr.ol;
  // [nb, Hkv, G, rows, cols]; without grouped heads (G = 1) the group
  // dimension is left out, which lets oneDNN pick its faster brgemm kernel.
  auto view = [G](std::vector<int64_t> dims, std::vector<int64_t> strides) {
    if (G == 1) {
      dims.erase(dims.begin() + 2);
      strides.erase(strides.begin() + 2);
    }
    return internal::BatchMat{std::move(dims), std::move(strides)};
  };
  const internal::BatchMat scores =
      view({nb, Hkv, G, m, n}, {Hkv * G * m * n, G * m * n, m * n, n, 1});
  internal::BatchedGemm(view({nb, Hkv, G, m, p.D}, {ql.batch, G * ql.head, ql.head, ql.row, 1}),
                        view({nb, Hkv, 1, p.D, n}, {kl.batch, kl.head, p.D * n, 1, kl.row}), scores,
                        p.scale, pr.q + b0 * ql.batch + i0 * ql.row, pr.k + b0 * kl.batch, scratch);
  const bool masked = pr.causal || pr.attn_mask || pr.key_padding_mask;
  std::vector<int64_t> empty_rows;
  for (int64_t bi = 0; bi < nb && masked; ++bi) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t r = 0; r < m; ++r) {
        const int64_t row = (bi * H + h) * m + r;
        if (MaskRow(pr, b0 + bi, h, i0 + r, 0, n, scratch + row * n) == kNegInf) {
          empty_rows.push_back(row);
        }
      }
    }
  }
  internal::SoftmaxRows(nb * H * m, n, n, scratch);
  for (int64_t row : empty_rows) std::fill_n(scratch + row * n, n, 0.0f);
  if (pr.weights == WeightsMode::kAveraged) {  // the mean over heads, keys past n zero
    const float inv_h = 1.0f / static_cast<float>(H);
    for (int64_t bi = 0; bi < nb; ++bi) {
      for (int64_t r = 0; r < m; ++r) {
        float* avg = pr.weights_out + ((b0 + bi) * p.L + i0 + r) * p.S;
        const float* first = scratch + (bi * H * m + r) * n;
        for (int64_t j = 0; j < n; ++j) avg[j] = first[j] * inv_h;
        for (int64_t h = 1; h < H; ++h) {
          const float* probs = scratch + ((bi * H + h) * m + r) * n;
          for (int64_t j = 0; j < n; ++j) avg[j] += probs[j] * inv_h;
        }
        std::fill(avg + n, avg + p.S, 0.0f);
      }
    }
  }
  internal::BatchedGemm(scores,
                        view({nb, Hkv, 1, n, p.Dv}, {vl.batch, vl.head, n * p.Dv, vl.row, 1}),
                        view({nb, Hkv, G, m, p.Dv}, {ol.batch, G * ol.head, ol.head, ol.row, 1}),
                        1.0f, scratch, pr.v + b0 * vl.batch, pr.out + b0 * ol.batch + i0 * ol.row);
}

// Sets this thread's OpenMP team size for the call and restores it after.
class OmpThreadsScope {
 public:
  explicit OmpThreadsScope(int n) : saved_(omp_get_max_threads()) { omp_set_num_threads(n); }
  ~OmpThreadsScope() { omp_set_num_threads(saved_); }

 private:
  int saved_;
};

// Copies every key/value head of `pr` into contiguous blocks, K^T as
// [B, Hkv, D, S] (rows PackedKeyStride apart) and V as [B, Hkv, S, Dv], and
// points `pr` at them.
void PackKeysValues(HeadsProblem& pr, float* kt, float* v) {
  const Plan& p = *pr.plan;
  const int64_t S = p.S, D = p.D, Dv = p.Dv, heads = p.B * p.Hkv;
  const int64_t ld = PackedKeyStride(S);
  constexpr int64_t kBlock = 16;  // keys a pass: a cache-friendly transpose
#pragma omp parallel for num_threads(p.threads) schedule(static)
  for (int64_t u = 0; u < heads; ++u) {
    const int64_t b = u / p.Hkv, h = u % p.Hkv;
    const float* ks = pr.k + b * pr.kl.batch + h * pr.kl.head;
    const float* vs = pr.v + b * pr.vl.batch + h * pr.vl.head;
    float* kd = kt + u * D * ld;
    float* vd = v + u * S * Dv;
    for (int64_t s0 = 0; s0 < S; s0 += kBlock) {
      const int64_t s1 = std::min(S, s0 + kBlock);
      for (int64_t d = 0; d < D; ++d) {
        for (int64_t s = s0; s < s1; ++s) kd[d * ld + s] = ks[s * pr.kl.row + d];
      }
    }
    for (int64_t s = 0; s < S; ++s) std::copy_n(vs + s * pr.vl.row, Dv, vd + s * Dv);
  }
  pr.k = kt;
  pr.kl = {p.Hkv * D * ld, D * ld, 1, ld};
  pr.v = v;
  pr.vl = {p.Hkv * S * Dv, S * Dv, Dv};
}

// Workspace floats AttendHeads takes.
int64_t HeadsFloats(const Plan& p, WeightsMode weights) {
  const int64_t packed =
      p.pack_kv ? Workspace::Round(PackedKeyFloats(p)) + Workspace::Round(PackedValueFloats(p)) : 0;
  return packed + Workspace::Round(PartialAverageFloats(p)) +
         Workspace::Round(p.threads * ScratchPerThread(p, weights));
}

// Runs every (batch, head, row tile) on an OpenMP team; single-threaded oneDNN
// primitives inside. Errors (and the caller's check) stop the remaining units.
absl::Status AttendHeads(HeadsProblem pr, const ComputeOptions& o, Workspace& ws) {
  const Plan& p = *pr.plan;
  if (p.pack_kv) {
    float* kt = ws.Take(PackedKeyFloats(p));
    float* v = ws.Take(PackedValueFloats(p));
    PackKeysValues(pr, kt, v);
  }
  const int64_t tiles = (p.L + kRowTile - 1) / kRowTile;
  const bool averaged = pr.weights == WeightsMode::kAveraged;
  const int64_t groups = p.group > 0 ? (p.B + p.group - 1) / p.group : 0;
  const int64_t splits = p.head_splits;
  const int64_t units =
      p.group > 0 ? groups * tiles : averaged ? p.B * tiles * splits : p.B * p.H * tiles;
  float* const partials = splits > 1 ? ws.Take(PartialAverageFloats(p)) : nullptr;
  const int64_t per_thread = ScratchPerThread(p, pr.weights);
  float* const scratch = ws.Take(p.threads * per_thread);
  std::atomic<bool> stop{false};
  std::mutex mu;
  absl::Status first_error;
  auto fail = [&](absl::Status s) {
    std::lock_guard<std::mutex> lock(mu);
    if (first_error.ok()) first_error = std::move(s);
    stop = true;
  };
  // Primitives inside run on their calling thread: with a team of one the
  // region is inactive, and oneDNN would otherwise start a nested team.
  OmpThreadsScope single_threaded_primitives(1);
#pragma omp parallel for num_threads(p.threads) schedule(dynamic, 1)
  for (int64_t u = 0; u < units; ++u) {
    if (stop.load(std::memory_order_relaxed)) continue;
    try {
      if (o.check) {
        absl::Status s = o.check();
        if (!s.ok()) {
          fail(std::move(s));
          continue;
        }
      }
      float* tile_scratch =
          scratch == nullptr ? nullptr : scratch + omp_get_thread_num() * per_thread;
      if (p.group > 0) {
        const int64_t b0 = (u / tiles) * p.group, i0 = (u % tiles) * kRowTile;
        AttendBatched(pr, b0, std::min(p.group, p.B - b0), i0, tile_scratch);
      } else if (averaged) {
        const int64_t share = u % splits, b = u / splits / tiles;
        const int64_t i0 = (u / splits % tiles) * kRowTile;
        const int64_t rows = std::min(kRowTile, p.L - i0);
        HeadsProblem part = pr;  // share 0 sums into the output, others into their partials
        if (share > 0) part.weights_out = partials + (share - 1) * p.B * p.L * p.S;
        std::fill_n(part.weights_out + (b * p.L + i0) * p.S, rows * p.S, 0.0f);
        for (int64_t h = share * p.H / splits; h < (share + 1) * p.H / splits; ++h) {
          AttendRows(part, b, h, i0, tile_scratch);
        }
      } else {
        const int64_t b = u / (p.H * tiles), h = (u / tiles) % p.H;
        const int64_t i0 = (u % tiles) * kRowTile;
        if (p.fused) {
          AttendRowsFused(pr, b, h, i0, tile_scratch);
        } else {
          AttendRows(pr, b, h, i0, tile_scratch);
        }
      }
    } catch (const dnnl::error& e) {
      fail(absl::InternalError(absl::StrCat("oneDNN: ", e.what())));
    } catch (const std::bad_alloc&) {
      fail(absl::ResourceExhaustedError("out of memory"));
    } catch (const std::exception& e) {  // nothing may leave an OpenMP region
      fail(absl::InternalError(e.what()));
    }
  }
  if (partials != nullptr && first_error.ok()) {
    const int64_t n = p.B * p.L * p.S;
#pragma omp parallel for num_threads(p.threads) schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t share = 1; share < splits; ++share) {
        pr.weights_out[i] += partials[(share - 1) * n + i];
      }
    }
  }
  return first_error;
}

// w^T for w [e, in] row-major: the B of a projection, read in place.
Mat ProjectionB(int64_t in, int64_t e) { return Mat{in, e, 1, in}; }

// out[rows, E] = x[rows, in] * w^T (+ bias); w is [E, in] row-major, read
// from `prepared` when that was made from it.
void Project(int64_t rows, int64_t in, int64_t e, const float* x, const float* w, const float* bias,
             float* out, int64_t out_stride, const internal::PackedMatrix* prepared) {
  GemmShape g;
  g.a = Mat{rows, in, in, 1};
  g.b = ProjectionB(in, e);
  g.c = Mat{rows, e, out_stride, 1};
  g.bias = bias != nullptr;
  if (prepared != nullptr) {
    internal::GemmPacked(g, x, w, *prepared, out, bias);
  } else {
    Gemm(g, x, w, out, bias);
  }
}

absl::Status Compute(const Plan& p, const AttentionArgs& a, const ComputeOptions& o,
                     OutputBuffers* outputs) {
  float* out = outputs->Output(p.info.output_shape);
  float* weights =
      a.weights == WeightsMode::kNone ? nullptr : outputs->Weights(p.info.weights_shape);
  if (out == nullptr || (a.weights != WeightsMode::kNone && weights == nullptr)) {
    return absl::InternalError("no output buffer");
  }
  OmpThreadsScope threads(std::max(1, o.max_threads > 0 ? o.max_threads : omp_get_max_threads()));
  std::vector<float> q_store, k_store, v_store, am_store, kpm_store;
  const float* q = AsFloat32(a.query, q_store);
  const float* k = a.self_attention ? q : AsFloat32(*a.key, k_store);
  const float* v = a.self_attention ? q : AsFloat32(*a.value, v_store);

  HeadsProblem pr;
  pr.plan = &p;
  pr.weights = a.weights;
  pr.weights_out = weights;
  pr.causal = a.causal;
  pr.attn_mask = PrepareMask(p.attn_mask, am_store);
  pr.key_padding_mask = PrepareMask(p.key_padding_mask, kpm_store);
  const int64_t B = p.B, L = p.L, S = p.S, H = p.H, D = p.D, Dv = p.Dv;

  if (!p.has_projection) {
    pr.q = q, pr.k = k, pr.v = v, pr.out = out;
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
    Workspace ws(HeadsFloats(p, a.weights));
    return AttendHeads(pr, o, ws);
  }

  // nn.MultiheadAttention: in-projection, heads, out-projection.
  const ProjectionWeights& w = *a.projection;
  const int64_t E = p.proj.embed_dim;
  std::vector<float> w_store[7];
  auto f32 = [&](const std::optional<TensorView>& t, int slot) -> const float* {
    return t ? AsFloat32(*t, w_store[slot]) : nullptr;
  };
  const float* in_w = f32(w.in_proj_weight, 0);
  const float* in_b = f32(w.in_proj_bias, 1);
  const float* wq = p.proj.packed ? in_w : f32(w.q_proj_weight, 2);
  const float* wk = p.proj.packed ? in_w + E * E : f32(w.k_proj_weight, 3);
  const float* wv = p.proj.packed ? in_w + 2 * E * E : f32(w.v_proj_weight, 4);
  const float* bq = in_b;
  const float* bk = in_b ? in_b + E : nullptr;
  const float* bv = in_b ? in_b + 2 * E : nullptr;
  const float* wo = f32(w.out_proj_weight, 5);
  const float* bo = f32(w.out_proj_bias, 6);

  const PreparedProjection no_preparation;
  const PreparedProjection& pp = w.prepared != nullptr ? *w.prepared : no_preparation;
  // Q, K and V projected by three products, also for self-attention with a
  // packed in_proj_weight: as fast as one product with 3E columns (alternating
  // processes at (1|8, 128), (4, 512), (1, 2048) with E=512: 0.99-1.02 of the
  // time), and a model prepares each slice once instead of the slices and
  // the whole.
  const int64_t projected_floats = B * (L + 2 * S) * E;
  Workspace ws(Workspace::Round(projected_floats) + Workspace::Round(B * L * E) +
               HeadsFloats(p, a.weights));
  float* const projected = ws.Take(projected_floats);
  float* const concat = ws.Take(B * L * E);
  float* qp = projected;
  float* kp = qp + B * L * E;
  float* vp = kp + B * S * E;
  Project(B * L, E, E, q, wq, bq, qp, E, pp.q.get());
  Project(B * S, p.proj.kdim, E, k, wk, bk, kp, E, pp.k.get());
  Project(B * S, p.proj.vdim, E, v, wv, bv, vp, E, pp.v.get());
  pr.q = qp, pr.k = kp, pr.v = vp;
  pr.ql = {L * E, D, E};
  pr.kl = pr.vl = {S * E, D, E};
  pr.out = concat;
  pr.ol = {L * E, Dv, E};
  if (absl::Status s = AttendHeads(pr, o, ws); !s.ok()) return s;
  Project(B * L, E, E, concat, wo, bo, out, E, pp.out.get());
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ProjectionShape> ValidateProjection(const ProjectionWeights& w,
                                                   absl::string_view prefix) {
  auto name = [&](absl::string_view field) { return absl::StrCat(prefix, field); };
  ProjectionShape ps;
  if (!w.out_proj_weight) return Invalid(name("out_proj_weight"), "missing");
  if (absl::Status s = CheckFloatTensor(*w.out_proj_weight, name("out_proj_weight")); !s.ok()) {
    return s;
  }
  const std::vector<int64_t>& o = w.out_proj_weight->shape;
  if (o.size() != 2 || o[0] != o[1]) {
    return Invalid(name("out_proj_weight"),
                   absl::StrCat("shape ", ShapeString(o), " should be [E, E]"));
  }
  const int64_t E = ps.embed_dim = o[0];
  const bool separate = w.q_proj_weight || w.k_proj_weight || w.v_proj_weight;
  if (w.in_proj_weight && separate) {
    return Invalid(name("in_proj_weight"),
                   "give either in_proj_weight or q/k/v_proj_weight, not both");
  }
  if (w.in_proj_weight) {
    ps.packed = true;
    ps.kdim = ps.vdim = E;
    if (absl::Status s = CheckMatrix(w.in_proj_weight, name("in_proj_weight"), {3 * E, E});
        !s.ok()) {
      return s;
    }
  } else {
    if (!w.q_proj_weight || !w.k_proj_weight || !w.v_proj_weight) {
      return Invalid(name(separate ? "q_proj_weight" : "in_proj_weight"),
                     "missing: give in_proj_weight, or all of q/k/v_proj_weight");
    }
    for (const auto& [t, field] : {std::pair{&w.k_proj_weight, "k_proj_weight"},
                                   std::pair{&w.v_proj_weight, "v_proj_weight"}}) {
      if (absl::Status s = CheckFloatTensor(**t, name(field)); !s.ok()) return s;
      if ((*t)->shape.size() != 2 || (*t)->shape[0] != E) {
        return Invalid(name(field), absl::StrCat("shape ", ShapeString((*t)->shape),
                                                 " should be [E, dim] with E = ", E));
      }
    }
    ps.kdim = w.k_proj_weight->shape[1];
    ps.vdim = w.v_proj_weight->shape[1];
    if (absl::Status s = CheckMatrix(w.q_proj_weight, name("q_proj_weight"), {E, E}); !s.ok()) {
      return s;
    }
  }
  if (absl::Status s = CheckMatrix(w.in_proj_bias, name("in_proj_bias"), {3 * E}); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckMatrix(w.out_proj_bias, name("out_proj_bias"), {E}); !s.ok()) {
    return s;
  }
  ps.in_bias = w.in_proj_bias.has_value();
  ps.out_bias = w.out_proj_bias.has_value();
  return ps;
}

absl::StatusOr<std::shared_ptr<const PreparedProjection>> PrepareProjection(
    const ProjectionWeights& w) {
  absl::StatusOr<ProjectionShape> shape = ValidateProjection(w, "");
  if (!shape.ok()) return shape.status();
  const int64_t E = shape->embed_dim;
  // B of w^T for rows [offset, offset + e) of an [*, in] weight.
  auto pack = [](const std::optional<TensorView>& t, int64_t in, int64_t e, int64_t offset)
      -> std::shared_ptr<const internal::PackedMatrix> {
    if (t->dtype != DType::kFloat32 || reinterpret_cast<uintptr_t>(t->data) % alignof(float) != 0) {
      return nullptr;  // converted by each call, so never the data a call reads
    }
    return internal::PackMatrix(ProjectionB(in, e),
                                static_cast<const float*>(t->data) + offset * in);
  };
  std::shared_ptr<PreparedProjection> prepared;
  try {
    prepared = std::make_shared<PreparedProjection>();
    if (shape->packed) {
      prepared->q = pack(w.in_proj_weight, E, E, 0);
      prepared->k = pack(w.in_proj_weight, E, E, E);
      prepared->v = pack(w.in_proj_weight, E, E, 2 * E);
    } else {
      prepared->q = pack(w.q_proj_weight, E, E, 0);
      prepared->k = pack(w.k_proj_weight, shape->kdim, E, 0);
      prepared->v = pack(w.v_proj_weight, shape->vdim, E, 0);
    }
    prepared->out = pack(w.out_proj_weight, E, E, 0);
  } catch (const dnnl::error& e) {
    return absl::InternalError(absl::StrCat("oneDNN: ", e.what()));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("out of memory preparing the projection weights");
  }
  return std::shared_ptr<const PreparedProjection>(std::move(prepared));
}

float* VectorOutputs::Output(const std::vector<int64_t>& shape) {
  output.shape = shape;
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  output.data.resize(n);
  return output.data.data();
}

float* VectorOutputs::Weights(const std::vector<int64_t>& shape) {
  weights.shape = shape;
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  weights.data.resize(n);
  return weights.data.data();
}

absl::StatusOr<AttentionPlanInfo> PlanAttention(const AttentionArgs& args,
                                                const ComputeOptions& options) {
  absl::StatusOr<Plan> plan = MakePlan(args, options);
  if (!plan.ok()) return plan.status();
  return plan->info;
}

absl::Status ComputeAttention(const AttentionArgs& args, const ComputeOptions& options,
                              OutputBuffers* outputs) {
  absl::StatusOr<Plan> plan = MakePlan(args, options);
  if (!plan.ok()) return plan.status();
  try {
    return Compute(*plan, args, options, outputs);
  } catch (const dnnl::error& e) {
    return absl::InternalError(absl::StrCat("oneDNN: ", e.what()));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("out of memory");
  } catch (const std::exception& e) {
    return absl::InternalError(e.what());
  }
}

}  // namespace attention
