#include "core/decode.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/arith.h"
#include "core/decode_kernels.h"
#include "core/guard.h"

namespace attention {
namespace {

constexpr int64_t kBlock = SequenceCache::kBlockTokens;

// A sequence's message disagrees with what its first message fixed.
absl::Status Differs(absl::string_view field, const std::string& got, const std::string& held) {
  return absl::InvalidArgumentError(absl::StrCat(
      field, ": ", got, " differs from the sequence's ", held,
      " (fixed by its first message; leave it unset or repeat it, or start a new sequence)"));
}

// The rows of a rank-2 [rows, width] or rank-3 [1, rows, width] tensor.
absl::Status Rows(const TensorView& v, absl::string_view name, int64_t* rows, int64_t* width) {
  if (absl::Status s = CheckFloatTensor(v, name); !s.ok()) return s;
  if (v.shape.size() == 3 && v.shape[0] != 1) {
    return InvalidField(name, absl::StrCat("shape ", ShapeString(v.shape),
                                           ": StreamDecode takes one sequence a message, [T, E] "
                                           "or [1, T, E]; name each sequence in `sequence`"));
  }
  if (v.shape.size() != 2 && v.shape.size() != 3) {
    return InvalidField(name, absl::StrCat("shape ", ShapeString(v.shape),
                                           ": StreamDecode takes [T, E] or [1, T, E]"));
  }
  *rows = v.shape[v.shape.size() - 2];
  *width = v.shape.back();
  return absl::OkStatus();
}

// The shape a message gives its sequence (before comparing with a held one).
struct Message {
  SequenceShape shape;
  int64_t queries = 0, keys = 0;
  int64_t query_width = 0, key_width = 0, value_width = 0;
  ProjectionShape projection;
};

absl::Status ReadTensors(const AttentionArgs& a, Message* m) {
  const char* qname = a.self_attention ? "input" : "query";
  if (absl::Status s = Rows(a.query, qname, &m->queries, &m->query_width); !s.ok()) return s;
  if (m->queries == 0) return InvalidField(qname, "no rows: send at least one token");
  if (a.self_attention) {
    m->keys = m->queries;
    m->key_width = m->value_width = m->query_width;
    return absl::OkStatus();
  }
  if (a.key.has_value() != a.value.has_value()) {
    return InvalidField(a.key ? "value" : "key", "required with the other (send both or neither)");
  }
  if (!a.key) return absl::OkStatus();
  int64_t value_rows = 0;
  if (absl::Status s = Rows(*a.key, "key", &m->keys, &m->key_width); !s.ok()) return s;
  if (absl::Status s = Rows(*a.value, "value", &value_rows, &m->value_width); !s.ok()) return s;
  if (value_rows != m->keys) {
    return InvalidField("value", absl::StrCat("shape ", ShapeString(a.value->shape), " has ",
                                              value_rows, " rows where key has ", m->keys));
  }
  if (a.key->shape.size() != a.query.shape.size() ||
      a.value->shape.size() != a.query.shape.size()) {
    return InvalidField("key", "must have the query's rank");
  }
  return absl::OkStatus();
}

// Heads and head dims from the message alone; `held` fills what it leaves unset.
absl::Status ReadShape(const AttentionArgs& a, const SequenceCache* held, Message* m) {
  SequenceShape& s = m->shape;
  s.projection = a.projection != nullptr ? a.projection
                 : held != nullptr       ? held->shape().projection
                                         : nullptr;
  s.num_heads = a.num_heads > 0 ? a.num_heads : held != nullptr ? held->shape().num_heads : 0;
  if (s.num_heads <= 0) return InvalidField("options.num_heads", "required (at least 1)");
  const bool has_keys = a.self_attention || a.key.has_value();
  if (s.projection != nullptr) {
    absl::StatusOr<ProjectionShape> ps = ValidateProjection(*s.projection, "options.projection.");
    if (!ps.ok()) return ps.status();
    m->projection = *ps;
    s.embed_dim = ps->embed_dim;
    if (m->query_width != ps->embed_dim) {
      return InvalidField(
          a.self_attention ? "input" : "query",
          absl::StrCat("width ", m->query_width, " does not match the model's ", ps->embed_dim));
    }
    if (has_keys && !a.self_attention && (m->key_width != ps->kdim || m->value_width != ps->vdim)) {
      return InvalidField(
          m->key_width != ps->kdim ? "key" : "value",
          absl::StrCat("width ", m->key_width != ps->kdim ? m->key_width : m->value_width,
                       " does not match the model's ",
                       m->key_width != ps->kdim ? ps->kdim : ps->vdim));
    }
    if (ps->embed_dim % s.num_heads != 0) {
      return InvalidField("options.num_heads",
                          absl::StrCat(s.num_heads, " does not divide ", ps->embed_dim));
    }
    if (a.num_kv_heads != 0 && a.num_kv_heads != s.num_heads) {
      return InvalidField("options.num_kv_heads",
                          "grouped-query heads need plain attention (no model)");
    }
    s.num_kv_heads = s.num_heads;
    s.head_dim = s.value_dim = ps->embed_dim / s.num_heads;
  } else {
    const int64_t kv = a.num_kv_heads > 0 ? a.num_kv_heads
                       : a.self_attention ? s.num_heads
                       : held != nullptr  ? held->shape().num_kv_heads
                                          : s.num_heads;
    if (kv <= 0 || s.num_heads % kv != 0) {
      return InvalidField("options.num_kv_heads",
                          absl::StrCat(kv, " does not divide num_heads ", s.num_heads));
    }
    s.num_kv_heads = kv;
    if (m->query_width % s.num_heads != 0) {
      return InvalidField(
          a.self_attention ? "input" : "query",
          absl::StrCat("width ", m->query_width, " is not a multiple of num_heads ", s.num_heads));
    }
    s.head_dim = m->query_width / s.num_heads;
    if (a.self_attention && kv != s.num_heads) {
      return InvalidField("options.num_kv_heads", "self-attention uses num_heads key heads");
    }
    if (has_keys) {
      if (m->key_width != kv * s.head_dim) {
        return InvalidField("key", absl::StrCat("width ", m->key_width, " is not num_kv_heads (",
                                                kv, ") x the head dim ", s.head_dim));
      }
      if (m->value_width % kv != 0) {
        return InvalidField("value", absl::StrCat("width ", m->value_width,
                                                  " is not a multiple of num_kv_heads ", kv));
      }
      s.value_dim = m->value_width / kv;
    } else {
      s.value_dim = held != nullptr ? held->shape().value_dim : s.head_dim;
    }
  }
  if (a.scale.has_value() && !std::isfinite(*a.scale)) {
    return InvalidField("options.scale", absl::StrCat(*a.scale, " is not a finite number"));
  }
  s.scale = a.scale.has_value() ? *a.scale
            : held != nullptr   ? held->shape().scale
                                : 1.0f / std::sqrt(static_cast<float>(s.head_dim));
  s.bfloat16 = a.precision == Precision::kBFloat16 || (held != nullptr && held->shape().bfloat16);
  return absl::OkStatus();
}

absl::Status CompareWithHeld(const SequenceShape& got, const SequenceShape& held) {
  if (got.projection != held.projection) {
    return Differs("options.model", got.projection ? "this model" : "no model",
                   held.projection ? "model" : "plain attention");
  }
  if (got.num_heads != held.num_heads) {
    return Differs("options.num_heads", absl::StrCat(got.num_heads), absl::StrCat(held.num_heads));
  }
  if (got.num_kv_heads != held.num_kv_heads) {
    return Differs("options.num_kv_heads", absl::StrCat(got.num_kv_heads),
                   absl::StrCat(held.num_kv_heads));
  }
  if (got.head_dim != held.head_dim || got.value_dim != held.value_dim) {
    return Differs("the head dims", absl::StrCat(got.head_dim, "/", got.value_dim),
                   absl::StrCat(held.head_dim, "/", held.value_dim));
  }
  if (got.bfloat16 != held.bfloat16) {  // (float32 is also "unset": it keeps bfloat16)
    return Differs("options.precision", "PRECISION_BFLOAT16", "float32 keys and values");
  }
  if (got.scale != held.scale) {
    return Differs("options.scale", absl::StrCat(got.scale), absl::StrCat(held.scale));
  }
  return absl::OkStatus();
}

// A view of `floats` float32 elements (for planning; never read).
TensorView Planned(std::vector<int64_t> shape) {
  static const float kNothing = 0;
  const auto bytes = static_cast<size_t>(ShapeProduct<int64_t>(shape) * 4);
  return TensorView{DType::kFloat32, std::move(shape), &kNothing, bytes};
}

// The gathered call (ComputeAttention over the held keys) for `plan`.
AttentionArgs Gathered(const DecodePlan& plan, WeightsMode weights) {
  const SequenceShape& s = plan.shape;
  const int64_t S = plan.length_after;
  AttentionArgs g;
  g.query = Planned({1, plan.queries, s.num_heads * s.head_dim});
  g.key = Planned({1, S, s.num_kv_heads * s.head_dim});
  g.value = Planned({1, S, s.num_kv_heads * s.value_dim});
  g.num_heads = s.num_heads;
  g.num_kv_heads = s.num_kv_heads;
  g.scale = s.scale;
  g.weights = weights;
  return g;
}

bool UsesKernel(const AttentionArgs& a, const DecodePlan& plan) {
  return a.weights == WeightsMode::kNone && plan.queries <= kStepMaxQueries;
}

}  // namespace

absl::StatusOr<DecodePlan> PlanDecode(const AttentionArgs& a, const SequenceCache* held,
                                      const ComputeOptions& options) {
  if (a.attn_mask)
    return InvalidField("options.attn_mask", "not taken by StreamDecode (use causal)");
  if (a.key_padding_mask) {
    return InvalidField("options.key_padding_mask",
                        "not taken by StreamDecode (send only the tokens to attend)");
  }
  Message m;
  if (absl::Status s = ReadTensors(a, &m); !s.ok()) return s;
  if (absl::Status s = ReadShape(a, held, &m); !s.ok()) return s;
  if (held != nullptr) {
    if (absl::Status s = CompareWithHeld(m.shape, held->shape()); !s.ok()) return s;
  }
  DecodePlan plan;
  plan.shape = m.shape;
  plan.queries = m.queries;
  plan.new_keys = m.keys;
  const int64_t P = held != nullptr ? held->length() : 0;
  plan.length_after = P + m.keys;
  plan.append_bytes = held != nullptr ? held->AppendBytes(m.keys) : [&] {
    SequenceCache empty(m.shape);
    return empty.AppendBytes(m.keys);
  }();
  const SequenceShape& s = m.shape;
  const int64_t T = m.queries, out_width = s.projection ? s.embed_dim : s.num_heads * s.value_dim;
  const bool rank3 = a.query.shape.size() == 3;
  plan.output_shape =
      rank3 ? std::vector<int64_t>{1, T, out_width} : std::vector<int64_t>{T, out_width};
  if (a.weights != WeightsMode::kNone) {
    plan.weights_shape = {T, plan.length_after};
    if (a.weights == WeightsMode::kPerHead)
      plan.weights_shape.insert(plan.weights_shape.begin(), s.num_heads);
    if (rank3) plan.weights_shape.insert(plan.weights_shape.begin(), 1);
  }
  // Intermediates, in floats: the inputs converted, the projections, the
  // heads' output, the output; then the attention's own.
  double floats = T * m.query_width + m.keys * (m.key_width + m.value_width) +
                  T * s.num_heads * s.head_dim +
                  m.keys * s.num_kv_heads * (s.head_dim + s.value_dim) +
                  T * s.num_heads * s.value_dim + T * out_width;
  double bytes = 0;
  if (UsesKernel(a, plan) || plan.length_after == 0) {
    const double units = s.num_kv_heads * (internal::CeilDiv(plan.length_after, kBlock) + 1);
    const int64_t queries = T * s.num_heads;  // over all key/value heads' groups
    floats += units / static_cast<double>(s.num_kv_heads) * static_cast<double>(queries) *
              static_cast<double>(s.value_dim + 2);
  } else {
    floats += static_cast<double>(plan.length_after) * s.num_kv_heads * (s.head_dim + s.value_dim);
    bytes += static_cast<double>(T) * plan.length_after;  // the causal mask
    absl::StatusOr<AttentionPlanInfo> g = PlanAttention(Gathered(plan, a.weights), options);
    if (!g.ok()) return g.status();
    bytes += static_cast<double>(g->memory_bytes);
  }
  bytes += 4 * floats;
  if (bytes > static_cast<double>(options.max_memory_bytes)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the message needs about ", static_cast<int64_t>(bytes / (1 << 20)) + 1,
        " MiB to compute, over the per-request limit of ", options.max_memory_bytes >> 20,
        " MiB; send fewer tokens a message or ask for no weights"));
  }
  plan.memory_bytes = static_cast<int64_t>(bytes);
  return plan;
}

namespace {

// Forwards ComputeAttention's results to where the step wants them.
class Redirect final : public OutputBuffers {
 public:
  Redirect(float* output, OutputBuffers* outer, std::vector<int64_t> weights_shape)
      : output_(output), outer_(outer), weights_shape_(std::move(weights_shape)) {}
  float* Output(const std::vector<int64_t>&) override { return output_; }
  float* Weights(const std::vector<int64_t>&) override { return outer_->Weights(weights_shape_); }

 private:
  float* output_;
  OutputBuffers* outer_;
  std::vector<int64_t> weights_shape_;
};

// The attention of the step's queries `q` [T, H*D] over everything held,
// into `heads` [T, H*Dv], through ComputeAttention on gathered keys.
absl::Status GatheredAttention(const AttentionArgs& a, const DecodePlan& plan,
                               const SequenceCache& cache, int64_t held_before, const float* q,
                               const ComputeOptions& options, float* heads,
                               OutputBuffers* outputs) {
  const SequenceShape& s = plan.shape;
  const int64_t S = cache.length(), T = plan.queries, D = s.head_dim, Dv = s.value_dim;
  const int64_t Hkv = s.num_kv_heads;
  std::vector<float> keys(S * Hkv * D), values(S * Hkv * Dv);
  for (int64_t pos = 0; pos < S; ++pos) {
    const int64_t b = pos / kBlock, j = pos % kBlock;
    for (int64_t g = 0; g < Hkv; ++g) {
      float* k = keys.data() + pos * Hkv * D + g * D;
      float* v = values.data() + pos * Hkv * Dv + g * Dv;
      if (s.bfloat16) {
        const auto* kb = static_cast<const uint16_t*>(cache.Keys(b, g)) + j;
        const auto* vb = static_cast<const uint16_t*>(cache.Values(b, g)) + j * Dv;
        for (int64_t d = 0; d < D; ++d) k[d] = BFloat16ToFloat(kb[d * kBlock]);
        for (int64_t d = 0; d < Dv; ++d) v[d] = BFloat16ToFloat(vb[d]);
      } else {
        const auto* kf = static_cast<const float*>(cache.Keys(b, g)) + j;
        for (int64_t d = 0; d < D; ++d) k[d] = kf[d * kBlock];
        std::memcpy(v, static_cast<const float*>(cache.Values(b, g)) + j * Dv, Dv * sizeof(float));
      }
    }
  }
  AttentionArgs g = Gathered(plan, a.weights);
  g.query.data = q;
  g.key->data = keys.data();
  g.value->data = values.data();
  std::vector<uint8_t> mask;
  if (a.causal && held_before == 0) {
    g.causal = true;  // top-left: query i attends keys j <= i
  } else if (a.causal) {
    mask.resize(T * S);
    for (int64_t i = 0; i < T; ++i) {
      for (int64_t j = 0; j < S; ++j) mask[i * S + j] = j > held_before + i;
    }
    g.attn_mask = TensorView{DType::kBool, {T, S}, mask.data(), mask.size()};
  }
  Redirect redirect(heads, outputs, plan.weights_shape);
  return ComputeAttention(g, options, &redirect);
}

// A member of a batched step, as validation found it.
struct StepMember {
  const DecodeMember* member;
  DecodePlan plan;
  absl::Status* status;
  int64_t held_before = 0;
  const float* q = nullptr;  // float32 queries, keys and values (the message's own
  const float* k = nullptr;  // or converted copies)
  const float* v = nullptr;
  std::vector<float> q_in, k_in, v_in;
};

// The attention of one member's projected queries `q` [T, H*D] over its
// sequence (its keys appended already) into `heads` [T, H*Dv].
absl::Status Attend(const StepMember& m, const float* q, const ComputeOptions& options,
                    float* heads) {
  const AttentionArgs& a = *m.member->args;
  const DecodePlan& plan = m.plan;
  const SequenceShape& s = plan.shape;
  const int64_t T = plan.queries;
  if (plan.length_after == 0) {  // nothing to attend: zeros, as everywhere
    std::fill(heads, heads + T * s.num_heads * s.value_dim, 0.0f);
    if (!plan.weights_shape.empty()) m.member->outputs->Weights(plan.weights_shape);  // empty
    return absl::OkStatus();
  }
  if (!UsesKernel(a, plan)) {
    return GatheredAttention(a, plan, *m.member->cache, m.held_before, q, options, heads,
                             m.member->outputs);
  }
  internal::DecodeKernelArgs k_args(
      {s.num_heads, s.num_kv_heads, s.head_dim, s.value_dim, s.scale});
  k_args.cache = m.member->cache;
  k_args.length = m.member->cache->length();
  k_args.queries = {q, s.head_dim, s.num_heads * s.head_dim};
  k_args.count = T;
  k_args.held_before = m.held_before;
  k_args.causal = a.causal;
  k_args.out = {heads, s.value_dim, s.num_heads * s.value_dim};
  k_args.max_threads = options.max_threads;
  internal::DecodeAttention(k_args);
  return absl::OkStatus();
}

// Rows of every member's `part` one after the other; a member's own rows
// when it is alone (no copy).
const float* Concatenated(const std::vector<StepMember*>& group, int64_t width,
                          const float* StepMember::*part, int64_t (*rows)(const DecodePlan&),
                          std::vector<float>* storage) {
  if (group.size() == 1) return group[0]->*part;
  int64_t total = 0;
  for (const StepMember* m : group) total += rows(m->plan);
  storage->resize(static_cast<size_t>(total * width));
  float* at = storage->data();
  for (const StepMember* m : group) {
    const int64_t n = rows(m->plan) * width;
    if (n > 0) std::memcpy(at, m->*part, static_cast<size_t>(n) * sizeof(float));
    at += n;
  }
  return storage->data();
}

int64_t QueryRows(const DecodePlan& p) { return p.queries; }
int64_t KeyRows(const DecodePlan& p) { return p.new_keys; }

// The out-projection of every member's rows of `heads` [rows, E] as one
// product, then each member's rows to its output (members whose attention
// failed get none).
absl::Status OutProject(const std::vector<StepMember*>& group, const internal::CallProjection& call,
                        int64_t embed, const std::vector<float>& heads) {
  const auto rows = static_cast<int64_t>(heads.size()) / embed;
  std::vector<float> out_all;
  float* out = group.size() == 1 ? group[0]->member->outputs->Output(group[0]->plan.output_shape)
                                 : (out_all.resize(heads.size()), out_all.data());
  if (out == nullptr) return absl::InternalError("no output buffer");
  call.Out(rows, heads.data(), out);
  if (group.size() == 1) return absl::OkStatus();
  int64_t row = 0;
  for (StepMember* m : group) {
    const int64_t n = m->plan.queries * embed;
    if (m->status->ok()) {
      float* own = m->member->outputs->Output(m->plan.output_shape);
      if (own == nullptr) return absl::InternalError("no output buffer");
      std::memcpy(own, out_all.data() + row, static_cast<size_t>(n) * sizeof(float));
    }
    row += n;
  }
  return absl::OkStatus();
}

// The steps of members that share `projection` (null: plain attention): the
// products over all their rows at once, each one's attention over its own
// keys. A member whose attention fails is undone alone; a failure of what
// they share is returned (every member undone).
absl::Status RunGroup(const std::vector<StepMember*>& group, const ProjectionWeights* projection,
                      const ComputeOptions& options) {
  for (StepMember* m : group) m->held_before = m->member->cache->length();
  absl::Status shared = GuardStatus([&]() -> absl::Status {
    for (StepMember* m : group) {
      const AttentionArgs& a = *m->member->args;
      m->q = AsFloat32(a.query, m->q_in);
      m->k = a.self_attention ? m->q : a.key ? AsFloat32(*a.key, m->k_in) : nullptr;
      m->v = a.self_attention ? m->q : a.value ? AsFloat32(*a.value, m->v_in) : nullptr;
    }
    // The in-projection of every member's rows as one product.
    std::optional<ProjectionShape> ps;
    std::optional<internal::CallProjection> call;
    std::vector<float> q_all, k_all, v_all, qp, kp, vp;
    int64_t q_rows = 0, k_rows = 0;
    for (const StepMember* m : group) {
      q_rows += m->plan.queries;
      k_rows += m->plan.new_keys;
    }
    if (projection != nullptr) {
      ps = *ValidateProjection(*projection, "options.projection.");
      call.emplace(*projection, *ps);
      const float* q = Concatenated(group, ps->embed_dim, &StepMember::q, QueryRows, &q_all);
      const float* k = Concatenated(group, ps->kdim, &StepMember::k, KeyRows, &k_all);
      const float* v = Concatenated(group, ps->vdim, &StepMember::v, KeyRows, &v_all);
      qp.resize(static_cast<size_t>(q_rows * ps->embed_dim));
      kp.resize(static_cast<size_t>(k_rows * ps->embed_dim));
      vp.resize(static_cast<size_t>(k_rows * ps->embed_dim));
      call->In(q_rows, k_rows, q, k, v, qp.data(), kp.data(), vp.data());
      int64_t qi = 0, ki = 0;
      for (StepMember* m : group) {
        m->q = qp.data() + qi * ps->embed_dim;
        m->k = kp.data() + ki * ps->embed_dim;
        m->v = vp.data() + ki * ps->embed_dim;
        qi += m->plan.queries;
        ki += m->plan.new_keys;
      }
    }
    for (StepMember* m : group) {
      const SequenceShape& s = m->plan.shape;
      if (m->plan.new_keys > 0) {
        m->member->cache->Append(m->plan.new_keys, m->k, s.num_kv_heads * s.head_dim, m->v,
                                 s.num_kv_heads * s.value_dim);
      }
    }
    // Each member's attention over its own keys: into its output (plain),
    // or into its rows of `heads` for the out-projection.
    std::vector<float> heads;
    if (projection != nullptr) heads.resize(static_cast<size_t>(q_rows * ps->embed_dim));
    std::vector<float*> targets;
    int64_t row = 0;
    for (StepMember* m : group) {
      targets.push_back(projection != nullptr ? heads.data() + row * ps->embed_dim
                                              : m->member->outputs->Output(m->plan.output_shape));
      row += m->plan.queries;
    }
    auto attend = [&](size_t i, const ComputeOptions& o) {
      StepMember* m = group[i];
      absl::Status s = targets[i] == nullptr
                           ? absl::InternalError("no output buffer")
                           : GuardStatus([&] { return Attend(*m, m->q, o, targets[i]); });
      if (!s.ok()) {
        m->member->cache->Truncate(m->held_before);
        *m->status = s;
      }
    };
    // Many members on the decode kernel: one thread each, in one parallel
    // region (a region per member would start and stop the threads as many
    // times); the others alone, each with every thread.
    std::vector<size_t> kernel, alone;
    for (size_t i = 0; i < group.size(); ++i) {
      const StepMember& m = *group[i];
      (group.size() > 1 && UsesKernel(*m.member->args, m.plan) ? kernel : alone).push_back(i);
    }
    ComputeOptions one = options;
    one.max_threads = 1;
    const int threads = options.max_threads > 0 ? options.max_threads : omp_get_max_threads();
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (size_t k = 0; k < kernel.size(); ++k) attend(kernel[k], one);
    for (size_t i : alone) attend(i, options);
    if (projection == nullptr) return absl::OkStatus();
    return OutProject(group, *call, ps->embed_dim, heads);
  });
  if (!shared.ok()) {
    for (StepMember* m : group) m->member->cache->Truncate(m->held_before);
  }
  return shared;
}

}  // namespace

std::vector<absl::Status> DecodeSteps(const std::vector<DecodeMember>& members,
                                      const ComputeOptions& options) {
  std::vector<absl::Status> status(members.size());
  std::vector<std::unique_ptr<StepMember>> planned;
  for (size_t i = 0; i < members.size(); ++i) {
    const DecodeMember& m = members[i];
    absl::StatusOr<DecodePlan> plan = PlanDecode(*m.args, m.cache, options);
    if (!plan.ok()) {
      status[i] = plan.status();
    } else if (!(plan->shape == m.cache->shape())) {
      status[i] = absl::InternalError("DecodeStep: the cache was made for another shape");
    } else {
      planned.push_back(std::make_unique<StepMember>());
      planned.back()->member = &m;
      planned.back()->plan = *std::move(plan);
      planned.back()->status = &status[i];
    }
  }
  if (options.check && !planned.empty()) {
    if (absl::Status s = options.check(); !s.ok()) {
      for (auto& m : planned) *m->status = s;
      return status;
    }
  }
  // Groups of one model (or of none), in the members' order.
  std::vector<const ProjectionWeights*> models;
  for (const auto& m : planned) {
    if (std::find(models.begin(), models.end(), m->plan.shape.projection) == models.end()) {
      models.push_back(m->plan.shape.projection);
    }
  }
  for (const ProjectionWeights* model : models) {
    std::vector<StepMember*> group;
    for (const auto& m : planned) {
      if (m->plan.shape.projection == model) group.push_back(m.get());
    }
    const absl::Status shared = RunGroup(group, model, options);
    if (shared.ok()) continue;
    if (group.size() == 1) {
      *group[0]->status = shared;
      continue;
    }
    // What they share failed (memory, say): each alone, so that one member
    // never fails another.
    for (StepMember* m : group) {
      *m->status = absl::OkStatus();
      if (absl::Status s = RunGroup({m}, model, options); !s.ok()) *m->status = s;
    }
  }
  return status;
}

absl::Status DecodeStep(const AttentionArgs& a, SequenceCache* cache, const ComputeOptions& options,
                        OutputBuffers* outputs) {
  return DecodeSteps({DecodeMember{&a, cache, outputs}}, options)[0];
}

}  // namespace attention
