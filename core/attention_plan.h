// Internal: how one attention call will run, decided before anything is
// allocated. MakePlan validates the arguments (shapes, dtypes, heads, masks),
// derives the result shapes, chooses the schedule (which kernel, how many
// threads, batching of small heads, packing of keys and values) and
// estimates the call's memory against ComputeOptions::max_memory_bytes.
//
//   absl::StatusOr<internal::Plan> plan = internal::MakePlan(args, options);
//   // plan->info: PlanAttention's answer; the rest drives the kernels
//
// Errors are those of PlanAttention (attention.h). Pure functions of their
// arguments (and of omp_get_max_threads() when options.max_threads is 0):
// thread-safe. Not part of the public API.
#ifndef CORE_ATTENTION_PLAN_H_
#define CORE_ATTENTION_PLAN_H_

#include <cstdint>
#include <optional>

#include "absl/status/statusor.h"
#include "core/arith.h"
#include "core/attention.h"

namespace attention {
namespace internal {

// Query rows per unit of work. A unit's score tile is kRowTile x S floats, so
// memory for scores is O(threads x kRowTile x S) at most (O(threads x
// kRowTile x kKeyTile) on the fused path), never O(B x H x L x S)
// (unless the caller asks for per-head weights, which are that size).
inline constexpr int64_t kRowTile = 128;
// Keys per tile of the fused path (no weights asked for).
inline constexpr int64_t kKeyTile = 512;

// Row stride of packed K^T: S rounded up to 16 floats (64 bytes), plus 16,
// so that rows are not a power of two apart (they would share cache sets).
constexpr int64_t PackedKeyStride(int64_t S) { return RoundUp(S, 16) + 16; }

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
  // Precision::kBFloat16 granted (EffectivePrecision): the products read
  // bfloat16 Q, K, V and probabilities.
  bool bf16 = false;
  bool fused = false;    // AttendRowsFused rather than AttendRows
  bool pack_kv = false;  // K^T and V copied per head before the heads run
  int64_t group = 0;     // > 0: AttendBatched over this many batch entries a unit
  // Query rows a unit of work: kRowTile, or fewer on the batched path when
  // batch entries and row tiles of kRowTile would leave threads idle.
  int64_t row_tile = kRowTile;
  // Averaged weights on the row path: units of work split each row tile's
  // heads this many ways, each share summing into its own partial average
  // (added up after the heads ran), when row tiles are fewer than threads.
  int64_t head_splits = 1;
  ProjectionShape proj;
  std::optional<MaskLayout> attn_mask;
  std::optional<MaskLayout> key_padding_mask;
  int threads = 1;
};

// Floats of per-thread scratch for scores: the fused path's score tile and
// two output tiles; the batched path's scores of `group` batch entries x all
// heads; or the row path's kRowTile whole score rows (none for per-head
// weights, whose rows are computed in place in the output).
int64_t ScoreScratchPerThread(const Plan& plan, WeightsMode weights);

// Elements of the probability tile the P V product reads (Plan::bf16
// rounds it into bfloat16 scratch after the score scratch).
int64_t ProbabilityElements(const Plan& plan);

// Floats of per-thread scratch: ScoreScratchPerThread, rounded to 64 bytes,
// plus, with Plan::bf16, ProbabilityElements bfloat16 values.
int64_t ScratchPerThread(const Plan& plan, WeightsMode weights);

// Floats of the partial averages beyond the first (Plan::head_splits).
int64_t PartialAverageFloats(const Plan& plan);

// Floats of the packed copies of K^T and V (Plan::pack_kv).
int64_t PackedKeyFloats(const Plan& plan);
int64_t PackedValueFloats(const Plan& plan);

// Validates `args` and plans the call under `options` (see the overview).
absl::StatusOr<Plan> MakePlan(const AttentionArgs& args, const ComputeOptions& options);

}  // namespace internal
}  // namespace attention

#endif  // CORE_ATTENTION_PLAN_H_
