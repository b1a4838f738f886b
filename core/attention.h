// Multi-head attention and multi-head self-attention on the CPU, with exactly
// the semantics of torch.nn.MultiheadAttention(batch_first=True) and
// scaled_dot_product_attention in inference (docs/api.md, "Semantics").
//
// Usage:
//
//   attention::AttentionArgs args;
//   args.query = {DType::kFloat32, {B, L, E}, q.data(), q.size() * 4};
//   args.key   = TensorView{DType::kFloat32, {B, S, E}, k.data(), k.size() * 4};
//   args.value = TensorView{DType::kFloat32, {B, S, E}, v.data(), v.size() * 4};
//   args.num_heads = 8;
//   args.causal = true;
//   args.weights = attention::WeightsMode::kAveraged;
//   attention::VectorOutputs out;                  // or your own OutputBuffers
//   absl::Status s = attention::ComputeAttention(args, {}, &out);
//   // out.output: [B, L, E]; out.weights: [B, L, S]
//
// Self-attention: set `self_attention = true` and leave key/value empty; the
// query (named "input" in errors) is also the key and the value. With
// projection weights (a Model or inline tensors; see projection.h) the full
// nn.MultiheadAttention forward runs: in-projection (three products: Q, K and
// V), heads, attention, out-projection.
//
// Contracts:
// - Inputs are caller-owned views; contiguous float32 inputs are read in place,
//   never copied. They must stay alive until ComputeAttention returns.
// - Everything is validated before any allocation: shapes, dtypes, byte
//   lengths, element counts (overflow-checked), and an estimate of the memory
//   the request needs (buffers, scores) against ComputeOptions::max_memory_bytes.
//   Errors: InvalidArgument naming the field ("key: shape [2,7,64] does not
//   match query batch 3"), ResourceExhausted over the memory limit, the status
//   of ComputeOptions::check when it aborts, Internal for a oneDNN failure.
//   Nothing throws.
// - A query row whose keys are all masked gives zeros (output and weights).
// - Memory: scores take O(B*H*L*S) only when per-head weights are asked for
//   (they are the result). Otherwise each thread holds 128 query rows' scores
//   at a time: whole rows of S keys below ComputeOptions::fused_min_keys,
//   512-key tiles with an online softmax from there on; short sequences with
//   many heads are batched into one product per group of batch entries.
//   A call's intermediates (projections, packed heads, score tiles) come from
//   a block each calling thread keeps between calls, up to 64 MiB (larger
//   needs are allocated for the call and freed after it).
// - Precision::kBFloat16 (where EffectivePrecision grants it): inputs are
//   rounded to bfloat16 copies (BFLOAT16 inputs are read in place), projected
//   Q, K, V are bfloat16, probabilities are rounded to bfloat16 for P V and
//   the concatenated heads for the out-projection; everything else is as in
//   float32. The memory estimate counts these copies.
// - Thread-safety: ComputeAttention may be called from many threads at once.
//   Each call uses OpenMP with at most ComputeOptions::max_threads threads
//   (so callers decide how the machine's cores are shared: see Executor).
#ifndef CORE_ATTENTION_H_
#define CORE_ATTENTION_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/projection.h"
#include "core/tensor.h"

namespace attention {

enum class WeightsMode {
  kNone,      // no attention weights
  kAveraged,  // [B, L, S]: mean over heads (average_attn_weights=True)
  kPerHead,   // [B, H, L, S]
};

// The arithmetic of a call's matrix products.
enum class Precision {
  kFloat32,  // float32 throughout (PyTorch float32 parity)
  // Products (projections, Q K^T, P V) on bfloat16 operands with float32
  // accumulation; masks, softmax and the online-softmax bookkeeping in
  // float32; results float32. Accuracy as PyTorch's bfloat16 module (better:
  // scores and probabilities stay float32 until P is rounded for P V).
  // Computed in float32 on a CPU without bfloat16 instructions.
  kBFloat16,
};

// The precision a call that asks for `requested` computes in on this CPU:
// kBFloat16 only where bfloat16 products run natively (learned once).
Precision EffectivePrecision(Precision requested);

// One attention call. Shapes, as in PyTorch (batch first):
//   rank 3: query [B, L, Eq], key [B, S, Ek], value [B, S, Ev]
//   rank 2: unbatched [L, Eq], [S, Ek], [S, Ev] -> unbatched outputs
//   rank 4 (no projection): [B, H, L, D], [B, Hkv, S, D], [B, Hkv, S, Dv]
// Without projection the heads split the last dimension: Eq = H*D,
// Ek = Hkv*D, Ev = Hkv*Dv, output [B, L, H*Dv]. Query head h uses key/value
// head h / (H / Hkv).
struct AttentionArgs {
  TensorView query;                 // "input" for self-attention
  std::optional<TensorView> key;    // absent for self-attention
  std::optional<TensorView> value;  // absent for self-attention
  bool self_attention = false;

  int64_t num_heads = 0;       // required for ranks 2-3; 0 = from shape for rank 4
  int64_t num_kv_heads = 0;    // 0 = num_heads
  std::optional<float> scale;  // default 1/sqrt(head_dim)
  bool causal = false;         // query i attends keys j <= i (top-left)
  // BOOL (true = may not attend) or float (added to scores). [L, S],
  // [B*H, L, S] or rank 4 broadcastable to [B, H, L, S].
  std::optional<TensorView> attn_mask;
  // [B, S] ([S] unbatched); BOOL (true = ignore key) or float (added).
  std::optional<TensorView> key_padding_mask;
  WeightsMode weights = WeightsMode::kNone;
  // nn.MultiheadAttention's weights, or nullptr for plain multi-head
  // scaled-dot-product attention. Not owned.
  const ProjectionWeights* projection = nullptr;
  Precision precision = Precision::kFloat32;  // requested; see EffectivePrecision
};

// Per-call settings of the caller (the server's limits, its threads).
struct ComputeOptions {
  // OpenMP threads this call may use; 0 = omp_get_max_threads().
  int max_threads = 0;
  // Upper bound on the memory one call may allocate (estimated before any
  // allocation, output and weights included).
  int64_t max_memory_bytes = int64_t{1} << 30;
  // Upper bound on a call's estimated work (AttentionPlanInfo::work), checked
  // before anything is allocated; 0: none. ResourceExhausted over it.
  double max_work = 0;
  // Without weights, calls with at least this many keys take the fused path
  // (one tile of keys at a time, online softmax: memory independent of S);
  // shorter ones compute whole score rows, 128 at a time (faster: fewer,
  // larger products). Both are exact; tests set 1 to exercise the fused one.
  int64_t fused_min_keys = 16384;
  // From this many keys, when several row tiles (or grouped query heads)
  // read the same key/value head, K^T and V are first copied per head into
  // contiguous blocks (B * Hkv * S * (D + Dv) floats more; skipped when they
  // would take the request over max_memory_bytes): contiguous reads are
  // faster than strided ones once that many keys are read several times;
  // shorter sequences gain nothing or lose. Exact either way; tests set 1.
  int64_t pack_min_keys = 2048;
  // Called between units of work (possibly from several threads at once);
  // a non-OK status aborts the call with that status (deadline, cancel).
  std::function<absl::Status()> check;
};

// Where results go. ComputeAttention calls Output (and Weights, when asked
// for) once each, after validation and before computing, and writes every
// element of the returned buffers. Buffers are caller-owned, hold
// product(shape) floats, and must stay valid until ComputeAttention returns;
// a nullptr return aborts the call with Internal.
class OutputBuffers {
 public:
  virtual ~OutputBuffers() = default;
  virtual float* Output(const std::vector<int64_t>& shape) = 0;
  virtual float* Weights(const std::vector<int64_t>& shape) = 0;
};

// OutputBuffers that own their floats. Reused for calls of the same shapes
// they are not cleared again (every element is overwritten).
class VectorOutputs final : public OutputBuffers {
 public:
  float* Output(const std::vector<int64_t>& shape) override;
  float* Weights(const std::vector<int64_t>& shape) override;

  FloatTensor output;
  FloatTensor weights;  // empty unless weights were asked for
};

// The shapes of a call's results and what it will allocate, as validation
// found them.
inline constexpr double kWorkPerScore = 128;

// A ResourceExhausted refusal of the work limit (ComputeOptions::max_work)
// carries this payload, so that callers can tell it from a memory refusal.
inline constexpr char kWorkLimitPayload[] = "attention.work_limit";
inline bool IsWorkLimitRefusal(const absl::Status& status) {
  return status.GetPayload(kWorkLimitPayload).has_value();
}

struct AttentionPlanInfo {
  std::vector<int64_t> output_shape;
  std::vector<int64_t> weights_shape;  // empty for WeightsMode::kNone
  int64_t memory_bytes = 0;            // estimate, outputs included
  double flops = 0;                    // multiply-adds x 2
  // The call's estimated cost in flop-equivalents: `flops` plus
  // kWorkPerScore for each attention score computed (a score's scaling,
  // masks, exponential and sums cost about that many product flops: 1.3 ns a
  // score against 107 GFLOP/s, measured with attention-bench at L = S = 8192,
  // one head of 4 and of 64 dims), so that small head dims are not free.
  double work = 0;
  Precision precision = Precision::kFloat32;  // what the call computes in
};

// Validates `args` without computing (the checks ComputeAttention makes).
absl::StatusOr<AttentionPlanInfo> PlanAttention(const AttentionArgs& args,
                                                const ComputeOptions& options);

// Validates and computes. See the contracts at the top of this file.
absl::Status ComputeAttention(const AttentionArgs& args, const ComputeOptions& options,
                              OutputBuffers* outputs);

}  // namespace attention

#endif  // CORE_ATTENTION_H_
