#include "core/projection.h"

#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/guard.h"
#include "core/onednn_ops.h"

namespace attention {

namespace {

// The four weight matrices of a projection ([E, in] row-major) as bfloat16,
// each with its reordered B for the products (nullptr: read in place).
struct Bfloat16Weights {
  std::vector<uint16_t> q, k, v, out;
  std::shared_ptr<const internal::PackedMatrix> packed_q, packed_k, packed_v, packed_out;
};

}  // namespace

struct PreparedProjection {
  // B of each projection's product, reordered (nullptr: read in place).
  std::shared_ptr<const internal::PackedMatrix> q, k, v, out;
  // Made by the first bfloat16 call (MakeBfloat16), from the float32 weights.
  mutable std::once_flag bf16_once;
  mutable std::unique_ptr<const Bfloat16Weights> bf16;
};

namespace {

using internal::Elem;
using internal::Mat;

absl::Status CheckMatrix(const std::optional<TensorView>& v, absl::string_view name,
                         const std::vector<int64_t>& want) {
  if (!v) return absl::OkStatus();
  if (absl::Status s = CheckFloatTensor(*v, name); !s.ok()) return s;
  if (v->shape != want) {
    return InvalidField(
        name, absl::StrCat("shape ", ShapeString(v->shape), " should be ", ShapeString(want)));
  }
  return absl::OkStatus();
}

// w^T for w [e, in] row-major: the B of a projection, read in place.
Mat ProjectionB(int64_t in, int64_t e, Elem type) { return Mat{in, e, 1, in, type}; }

// out[rows, E] = x[rows, in] * w^T (+ bias); w is [E, in] row-major, read
// from `prepared` when that was made from it. x and w are of type `in_type`,
// out of `out_type`.
void Project(int64_t rows, int64_t in, int64_t e, const void* x, const void* w, const float* bias,
             void* out, const internal::PackedMatrix* prepared, Elem in_type, Elem out_type) {
  internal::GemmShape g;
  g.a = Mat{rows, in, in, 1, in_type};
  g.b = ProjectionB(in, e, in_type);
  g.c = Mat{rows, e, e, 1, out_type};
  g.bias = bias != nullptr;
  if (prepared != nullptr) {
    internal::GemmPacked(g, x, w, *prepared, out, bias);
  } else {
    internal::Gemm(g, x, w, out, bias);
  }
}

// n floats as bfloat16.
std::vector<uint16_t> ToBfloat16(const float* w, int64_t n) {
  std::vector<uint16_t> out(n);
  FloatsToBFloat16(w, n, out.data());
  return out;
}

// The bfloat16 weights of a projection whose float32 matrices [E, in] are
// wq, wk, wv and wo, reordered for the products.
std::unique_ptr<const Bfloat16Weights> MakeBfloat16(const ProjectionShape& ps, const float* wq,
                                                    const float* wk, const float* wv,
                                                    const float* wo) {
  const int64_t E = ps.embed_dim;
  auto w = std::make_unique<Bfloat16Weights>();
  w->q = ToBfloat16(wq, E * E);
  w->k = ToBfloat16(wk, E * ps.kdim);
  w->v = ToBfloat16(wv, E * ps.vdim);
  w->out = ToBfloat16(wo, E * E);
  w->packed_q = internal::PackMatrix(ProjectionB(E, E, Elem::kBF16), w->q.data());
  w->packed_k = internal::PackMatrix(ProjectionB(ps.kdim, E, Elem::kBF16), w->k.data());
  w->packed_v = internal::PackMatrix(ProjectionB(ps.vdim, E, Elem::kBF16), w->v.data());
  w->packed_out = internal::PackMatrix(ProjectionB(E, E, Elem::kBF16), w->out.data());
  return w;
}

// The separate q/k/v_proj_weight of `w`: present, float, [E, E], [E, kdim]
// and [E, vdim]; sets ps.kdim and ps.vdim.
absl::Status CheckSeparateWeights(const ProjectionWeights& w, absl::string_view prefix,
                                  ProjectionShape& ps) {
  auto name = [&](absl::string_view field) { return absl::StrCat(prefix, field); };
  const int64_t E = ps.embed_dim;
  if (!w.q_proj_weight || !w.k_proj_weight || !w.v_proj_weight) {
    const bool separate = w.q_proj_weight || w.k_proj_weight || w.v_proj_weight;
    return InvalidField(name(separate ? "q_proj_weight" : "in_proj_weight"),
                        "missing: give in_proj_weight, or all of q/k/v_proj_weight");
  }
  for (const auto& [t, field] : {std::pair{&w.k_proj_weight, "k_proj_weight"},
                                 std::pair{&w.v_proj_weight, "v_proj_weight"}}) {
    if (absl::Status s = CheckFloatTensor(**t, name(field)); !s.ok()) return s;
    if ((*t)->shape.size() != 2 || (*t)->shape[0] != E) {
      return InvalidField(name(field), absl::StrCat("shape ", ShapeString((*t)->shape),
                                                    " should be [E, dim] with E = ", E));
    }
  }
  ps.kdim = w.k_proj_weight->shape[1];
  ps.vdim = w.v_proj_weight->shape[1];
  return CheckMatrix(w.q_proj_weight, name("q_proj_weight"), {E, E});
}

}  // namespace

absl::StatusOr<ProjectionShape> ValidateProjection(const ProjectionWeights& w,
                                                   absl::string_view prefix) {
  auto name = [&](absl::string_view field) { return absl::StrCat(prefix, field); };
  ProjectionShape ps;
  if (!w.out_proj_weight) return InvalidField(name("out_proj_weight"), "missing");
  if (absl::Status s = CheckFloatTensor(*w.out_proj_weight, name("out_proj_weight")); !s.ok()) {
    return s;
  }
  const std::vector<int64_t>& o = w.out_proj_weight->shape;
  if (o.size() != 2 || o[0] != o[1]) {
    return InvalidField(name("out_proj_weight"),
                        absl::StrCat("shape ", ShapeString(o), " should be [E, E]"));
  }
  const int64_t E = ps.embed_dim = o[0];
  const bool separate = w.q_proj_weight || w.k_proj_weight || w.v_proj_weight;
  if (w.in_proj_weight && separate) {
    return InvalidField(name("in_proj_weight"),
                        "give either in_proj_weight or q/k/v_proj_weight, not both");
  }
  if (w.in_proj_weight) {
    ps.packed = true;
    ps.kdim = ps.vdim = E;
    if (absl::Status s = CheckMatrix(w.in_proj_weight, name("in_proj_weight"), {3 * E, E});
        !s.ok()) {
      return s;
    }
  } else if (absl::Status s = CheckSeparateWeights(w, prefix, ps); !s.ok()) {
    return s;
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
  auto pack = [](const std::optional<TensorView>& t, int64_t in, int64_t e,
                 int64_t offset) -> std::shared_ptr<const internal::PackedMatrix> {
    if (!ReadableAsFloat32(*t)) return nullptr;  // converted by each call: never the data read
    return internal::PackMatrix(ProjectionB(in, e, Elem::kF32),
                                static_cast<const float*>(t->data) + offset * in);
  };
  std::shared_ptr<PreparedProjection> prepared;
  absl::Status s = GuardStatus(
      [&] {
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
        return absl::OkStatus();
      },
      "out of memory preparing the projection weights");
  if (!s.ok()) return s;
  return std::shared_ptr<const PreparedProjection>(std::move(prepared));
}

namespace internal {

CallProjection::CallProjection(const ProjectionWeights& w, const ProjectionShape& shape, bool bf16)
    : shape_(shape), bf16_(bf16) {
  const float* f32[std::size(kProjectionTensors)];
  for (size_t i = 0; i < std::size(kProjectionTensors); ++i) {
    const std::optional<TensorView>& t = w.*kProjectionTensors[i].member;
    f32[i] = t ? AsFloat32(*t, store_[i]) : nullptr;
  }
  const auto [in_w, q_w, k_w, v_w, in_b, out_w, out_b] = f32;
  const int64_t E = shape.embed_dim;
  const float* wq = shape.packed ? in_w : q_w;
  const float* wk = shape.packed ? in_w + E * E : k_w;
  const float* wv = shape.packed ? in_w + 2 * E * E : v_w;
  bq_ = in_b;
  bk_ = in_b ? in_b + E : nullptr;
  bv_ = in_b ? in_b + 2 * E : nullptr;
  bo_ = out_b;
  const PreparedProjection* pp = w.prepared;
  if (!bf16) {
    wq_ = {wq, pp ? pp->q.get() : nullptr};
    wk_ = {wk, pp ? pp->k.get() : nullptr};
    wv_ = {wv, pp ? pp->v.get() : nullptr};
    wo_ = {out_w, pp ? pp->out.get() : nullptr};
    return;
  }
  if (pp == nullptr) {  // inline weights: converted for this call
    store16_[0] = ToBfloat16(wq, E * E);
    store16_[1] = ToBfloat16(wk, E * shape.kdim);
    store16_[2] = ToBfloat16(wv, E * shape.vdim);
    store16_[3] = ToBfloat16(out_w, E * E);
    wq_.data = store16_[0].data();
    wk_.data = store16_[1].data();
    wv_.data = store16_[2].data();
    wo_.data = store16_[3].data();
    return;
  }
  // out_w by value: C++17 lets no lambda capture a structured binding (GCC
  // allows it as an extension, clang refuses).
  std::call_once(pp->bf16_once,
                 [&, out_w = out_w] { pp->bf16 = MakeBfloat16(shape, wq, wk, wv, out_w); });
  const Bfloat16Weights& h = *pp->bf16;
  wq_ = {h.q.data(), h.packed_q.get()};
  wk_ = {h.k.data(), h.packed_k.get()};
  wv_ = {h.v.data(), h.packed_v.get()};
  wo_ = {h.out.data(), h.packed_out.get()};
}

// Q, K and V are projected by three products, also for self-attention with a
// packed in_proj_weight: as fast as one product with 3E columns, and a model
// prepares each slice once instead of the slices and the whole.
void CallProjection::In(int64_t q_rows, int64_t kv_rows, const void* q, const void* k,
                        const void* v, void* qp, void* kp, void* vp) const {
  const int64_t E = shape_.embed_dim;
  const Elem t = bf16_ ? Elem::kBF16 : Elem::kF32;
  if (q_rows > 0) Project(q_rows, E, E, q, wq_.data, bq_, qp, wq_.packed, t, t);
  if (kv_rows == 0) return;  // a decode step's queries over held keys only
  Project(kv_rows, shape_.kdim, E, k, wk_.data, bk_, kp, wk_.packed, t, t);
  Project(kv_rows, shape_.vdim, E, v, wv_.data, bv_, vp, wv_.packed, t, t);
}

void CallProjection::Out(int64_t rows, const void* x, float* out) const {
  const int64_t E = shape_.embed_dim;
  Project(rows, E, E, x, wo_.data, bo_, out, wo_.packed, bf16_ ? Elem::kBF16 : Elem::kF32,
          Elem::kF32);
}

}  // namespace internal
}  // namespace attention
