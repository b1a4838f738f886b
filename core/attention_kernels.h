// Internal: the attention kernels that run a plan's heads once the inputs
// are float32 (and projected): masks, scores and softmax per tile of query
// rows, the fused path's online softmax over key tiles, batched products for
// many small heads, and the packing of keys and values per head.
//
//   HeadsProblem pr;  // plan, Q/K/V/output views, masks, weights mode
//   Workspace ws(HeadsFloats(plan, args.weights));
//   absl::Status s = AttendHeads(pr, options, ws);
//
// Contract: AttendHeads writes every element of the output (and weights)
// views of `pr`, runs on plan.threads OpenMP threads with single-threaded
// oneDNN primitives inside, calls options.check between units of work, and
// returns the first error of any unit (the rest are skipped). It does not
// throw out of its parallel region; the oneDNN calls around it may throw
// (dnnl::error, std::bad_alloc): callers run it under GuardStatus. Not part
// of the public API.
#ifndef CORE_ATTENTION_KERNELS_H_
#define CORE_ATTENTION_KERNELS_H_

#include <omp.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "core/attention.h"
#include "core/attention_plan.h"
#include "core/onednn_ops.h"
#include "core/workspace.h"

namespace attention {
namespace internal {

// Element strides of a [B, H, rows, dim] view. The features of a row are
// contiguous (dim = 1) except in keys packed as K^T (row = 1, dim =
// PackedKeyStride(S)).
struct HeadLayout {
  int64_t batch = 0;
  int64_t head = 0;
  int64_t row = 0;
  int64_t dim = 1;
};

// A mask ready for the kernel: bool bytes or float32 values.
struct Mask {
  MaskLayout layout;
  const uint8_t* bools = nullptr;
  const float* floats = nullptr;
};

// The mask of `layout` as the kernel reads it; float masks not readable in
// place are converted into `storage`, which must outlive the result.
std::optional<Mask> PrepareMask(const std::optional<MaskLayout>& layout,
                                std::vector<float>& storage);

// The tensors of one attention core call, after projections. Q, K and V
// hold float32, or bfloat16 when plan->bf16; the output is float32, or
// bfloat16 (out_type, only when plan->bf16) for the out-projection to read.
struct HeadsProblem {
  const Plan* plan;
  const void* q;
  const void* k;
  const void* v;
  HeadLayout ql, kl, vl, ol;
  void* out;
  Elem out_type = Elem::kF32;
  WeightsMode weights;
  float* weights_out;  // [B, L, S] or [B, H, L, S], or nullptr
  std::optional<Mask> attn_mask, key_padding_mask;
  bool causal;
};

// Sets this thread's OpenMP team size for the call and restores it after.
class OmpThreadsScope {
 public:
  explicit OmpThreadsScope(int n) : saved_(omp_get_max_threads()) { omp_set_num_threads(n); }
  ~OmpThreadsScope() { omp_set_num_threads(saved_); }
  OmpThreadsScope(const OmpThreadsScope&) = delete;
  OmpThreadsScope& operator=(const OmpThreadsScope&) = delete;

 private:
  int saved_;
};

// Workspace floats AttendHeads takes (size the Workspace with at least this).
int64_t HeadsFloats(const Plan& plan, WeightsMode weights);

// Runs every (batch, head, row tile) of `pr` (see the contract above).
absl::Status AttendHeads(HeadsProblem pr, const ComputeOptions& options, Workspace& ws);

}  // namespace internal
}  // namespace attention

#endif  // CORE_ATTENTION_KERNELS_H_
