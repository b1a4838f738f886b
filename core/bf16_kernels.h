// Internal: the element-wise work of the bfloat16 path in AVX-512 with the
// bfloat16 instructions (VCVTNEPS2BF16): rounding float32 to bfloat16, and
// the softmax of score rows written as bfloat16 probabilities in the same
// pass over the scores.
//
// Contract: call only when NativeBfloat16() (onednn_ops.h) is true, which
// the bfloat16 path already requires of its products; on another CPU these
// functions fault (illegal instruction). They are compiled for that ISA
// whatever the build's flags, so the binary still runs on AVX2-only CPUs.
//
// Rounding is to nearest even; the instruction flushes float32 denormals
// (below 1.2e-38) to zero, where FloatsToBFloat16 (tensor.h, the wire
// encoding) keeps bfloat16 denormals: irrelevant at bfloat16's precision.
// Not part of the public API.
#ifndef CORE_BF16_KERNELS_H_
#define CORE_BF16_KERNELS_H_

#include <cstdint>

namespace attention {
namespace internal {

// out[i] = bfloat16(in[i]) for n elements.
void RoundToBfloat16(const float* in, int64_t n, uint16_t* out);

// For each of `rows` rows of `cols` scores (row r at x + r * ld): the
// softmax of the row, rounded to bfloat16 into p16 + r * ld16, and with
// `keep_float32` also written over the scores. sums[r] (when sums is not
// null) is the softmax's denominator, the sum of exp(x - max(row)). A row
// whose scores are all -inf (every key masked) becomes zeros, sum 0. NaN
// scores make their row NaN, as in PyTorch.
void SoftmaxRowsToBfloat16(int64_t rows, int64_t cols, float* x, int64_t ld, bool keep_float32,
                           uint16_t* p16, int64_t ld16, float* sums);

}  // namespace internal
}  // namespace attention

#endif  // CORE_BF16_KERNELS_H_
