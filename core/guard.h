// The one place where exceptions become statuses. The core's kernels (oneDNN,
// allocations) may throw; what crosses the core's boundary is an
// absl::Status, so every entry point that runs them does so through
// GuardStatus.
//
//   absl::Status s = GuardStatus([&] { return Compute(plan, args, outputs); });
//
// Also safe inside an OpenMP parallel region, where nothing may be thrown out
// of the region: call it in the loop body and keep the status.
#ifndef CORE_GUARD_H_
#define CORE_GUARD_H_

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace attention {

// Runs `fn` and returns its status, or, when it throws: Internal "oneDNN:
// WHAT" for a dnnl::error, ResourceExhausted `out_of_memory` for
// std::bad_alloc, Internal WHAT for any other std::exception (anything else
// propagates). Thread-safe (no state of its own).
absl::Status GuardStatus(absl::FunctionRef<absl::Status()> fn,
                         absl::string_view out_of_memory = "out of memory");

}  // namespace attention

#endif  // CORE_GUARD_H_
