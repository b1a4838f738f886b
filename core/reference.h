// A naive double-precision implementation of ComputeAttention, written to be
// obviously right rather than fast: plain loops over the formulas of
// nn.MultiheadAttention and scaled_dot_product_attention. Tests compare the
// optimized core against it; the load tester uses it to verify responses.
//
//   absl::StatusOr<ReferenceResult> want = ReferenceAttention(args);
//   // want->output (double), want->output_shape, want->weights ...
//
// It validates `args` with the same rules as ComputeAttention (PlanAttention)
// and then interprets the shapes on its own. O(B*H*L*S*D) time, no limits on
// memory beyond the request's own: use it on small problems. Thread-safe.
#ifndef CORE_REFERENCE_H_
#define CORE_REFERENCE_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "core/attention.h"

namespace attention {

struct ReferenceResult {
  std::vector<int64_t> output_shape;
  std::vector<double> output;
  std::vector<int64_t> weights_shape;  // empty for WeightsMode::kNone
  std::vector<double> weights;
};

absl::StatusOr<ReferenceResult> ReferenceAttention(const AttentionArgs& args);

// max |got - want| / max(max |want|, tiny): the figure the tests bound (1e-4).
double RelativeMaxError(const float* got, const std::vector<double>& want);

}  // namespace attention

#endif  // CORE_REFERENCE_H_
