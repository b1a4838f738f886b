// nn.MultiheadAttention's projection weights: their names (one table for the
// state_dict, the wire and the structs), their validation, and their
// preparation for the matrix kernels. attention.h includes this header.
//
//   ProjectionWeights w;
//   w.in_proj_weight = in_w.view();              // [3E, E]
//   w.out_proj_weight = out_w.view();            // [E, E]
//   absl::StatusOr<ProjectionShape> shape = ValidateProjection(w, "");
//   auto prepared = PrepareProjection(w);        // once, for weights that stay
//   w.prepared = prepared->get();
//   args.projection = &w;                        // then ComputeAttention
//
// Contracts: weights are caller-owned views (see ProjectionWeights); errors
// are InvalidArgument naming the tensor; nothing throws. Thread-safe.
#ifndef CORE_PROJECTION_H_
#define CORE_PROJECTION_H_

#include <cstdint>
#include <iterator>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/tensor.h"

namespace attention {

struct PreparedProjection;  // opaque: made by PrepareProjection
namespace internal {
struct PackedMatrix;
}  // namespace internal

// nn.MultiheadAttention's parameters, named as in its state_dict. Either the
// packed in_proj_weight [3E, E] or q_proj_weight [E, E], k_proj_weight
// [E, kdim] and v_proj_weight [E, vdim]; in_proj_bias [3E] and out_proj_bias
// [E] are optional; out_proj_weight [E, E] is required. Views, not owned.
// `prepared` (optional, from PrepareProjection of these same views) holds the
// weights reordered for the matrix kernels, which otherwise repack them on
// every call: weights that stay the same across calls (a model's) are worth
// preparing once.
struct ProjectionWeights {
  std::optional<TensorView> in_proj_weight;
  std::optional<TensorView> q_proj_weight;
  std::optional<TensorView> k_proj_weight;
  std::optional<TensorView> v_proj_weight;
  std::optional<TensorView> in_proj_bias;
  std::optional<TensorView> out_proj_weight;
  std::optional<TensorView> out_proj_bias;
  const PreparedProjection* prepared = nullptr;
};

// One projection tensor under each of its names.
struct ProjectionTensor {
  // PyTorch's state_dict name ("out_proj.weight"), as model files hold it.
  const char* state_dict_name;
  // The name of the wire field (attention.v1.Projection) and of the
  // ProjectionWeights member ("out_proj_weight"), as errors name it.
  const char* field_name;
  std::optional<TensorView> ProjectionWeights::*member;
};

// The seven projection tensors, in the order of the wire message's fields.
inline constexpr ProjectionTensor kProjectionTensors[] = {
    {"in_proj_weight", "in_proj_weight", &ProjectionWeights::in_proj_weight},
    {"q_proj_weight", "q_proj_weight", &ProjectionWeights::q_proj_weight},
    {"k_proj_weight", "k_proj_weight", &ProjectionWeights::k_proj_weight},
    {"v_proj_weight", "v_proj_weight", &ProjectionWeights::v_proj_weight},
    {"in_proj_bias", "in_proj_bias", &ProjectionWeights::in_proj_bias},
    {"out_proj.weight", "out_proj_weight", &ProjectionWeights::out_proj_weight},
    {"out_proj.bias", "out_proj_bias", &ProjectionWeights::out_proj_bias},
};

// What ValidateProjection learns from the weights' shapes.
struct ProjectionShape {
  int64_t embed_dim = 0;
  int64_t kdim = 0;
  int64_t vdim = 0;
  bool packed = false;  // in_proj_weight rather than q/k/v_proj_weight
  bool in_bias = false;
  bool out_bias = false;
};

// Checks dtypes (float), byte lengths and shapes of `weights`. Errors are
// InvalidArgument naming the tensor as `prefix` + its field name (with
// prefix "options.projection." the names read as the wire fields).
absl::StatusOr<ProjectionShape> ValidateProjection(const ProjectionWeights& weights,
                                                   absl::string_view prefix);

// Validates `weights` (as ValidateProjection) and returns them reordered once
// for oneDNN's matmul kernels (opaque): a copy, so the views' data must
// outlive it and must not change while it exists. A call uses a prepared
// matrix only if it was made from the same address and layout the call reads
// (weights at other addresses, and calls whose kernel wants another layout,
// are computed from the views). Weights that are not aligned float32 are left
// to each call (converted there). The bfloat16 copies that
// Precision::kBFloat16 calls read (plain and reordered: together as many
// bytes as the float32 weights) are made by the first such call, once.
// ResourceExhausted when memory runs out, Internal for a oneDNN failure.
absl::StatusOr<std::shared_ptr<const PreparedProjection>> PrepareProjection(
    const ProjectionWeights& weights);

namespace internal {

// The projections of one call (not public: ComputeAttention runs them). Holds
// float32 copies of weights that are not aligned float32 (bfloat16 copies of
// the matrices for bfloat16 products without prepared weights), and uses the
// weights' prepared matrices when they match. Throws what the kernels throw
// (dnnl::error, std::bad_alloc): run under GuardStatus.
class CallProjection {
 public:
  // `weights` validated as `shape` (ValidateProjection); both must outlive
  // this object. `bf16`: the products read bfloat16 inputs and matrices
  // (only where NativeBfloat16()); biases and accumulation stay float32.
  CallProjection(const ProjectionWeights& weights, const ProjectionShape& shape, bool bf16 = false);

  // The in-projections: qp [q_rows, E] = q wq^T + bq, and likewise kp, vp
  // [kv_rows, E] from k [kv_rows, kdim] and v [kv_rows, vdim] (none when a
  // count is 0). Inputs and outputs are float32, or bfloat16 with `bf16`.
  void In(int64_t q_rows, int64_t kv_rows, const void* q, const void* k, const void* v, void* qp,
          void* kp, void* vp) const;

  // The out-projection: out [rows, E] = x wo^T + bo; x float32, or bfloat16
  // with `bf16`.
  void Out(int64_t rows, const void* x, float* out) const;

 private:
  // A weight matrix [E, in] as the products read it, reordered when prepared.
  struct Matrix {
    const void* data = nullptr;
    const PackedMatrix* packed = nullptr;
  };

  const ProjectionShape& shape_;
  bool bf16_;
  std::vector<float> store_[std::size(kProjectionTensors)];  // converted copies
  std::vector<uint16_t> store16_[4];                         // bfloat16 copies
  Matrix wq_, wk_, wv_, wo_;
  const float *bq_, *bk_, *bv_, *bo_;
};

}  // namespace internal
}  // namespace attention

#endif  // CORE_PROJECTION_H_
