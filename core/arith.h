// Integer arithmetic the core's sizes share: ceiling division and rounding up
// to a multiple. Operands are non-negative sizes far below int64's range
// (validated shapes: see kMaxElements in core/tensor.h); `d` is positive.
#ifndef CORE_ARITH_H_
#define CORE_ARITH_H_

#include <cstdint>

namespace attention {
namespace internal {

// ceil(n / d).
constexpr int64_t CeilDiv(int64_t n, int64_t d) { return (n + d - 1) / d; }

// The smallest multiple of `d` that is at least `n`.
constexpr int64_t RoundUp(int64_t n, int64_t d) { return CeilDiv(n, d) * d; }

}  // namespace internal
}  // namespace attention

#endif  // CORE_ARITH_H_
