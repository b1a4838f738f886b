#include "core/bf16_kernels.h"

#include <immintrin.h>

#include <cstdint>

#include "core/avx512_math.h"

// Every function here runs only where the bfloat16 path runs (see the
// header); the rest of the build stays at the baseline ISA.
#define ATTENTION_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

namespace attention {
namespace internal {
namespace {

constexpr int64_t kLanes = 16;

ATTENTION_BF16_TARGET inline __mmask16 Tail(int64_t n) {
  return static_cast<__mmask16>((1u << n) - 1u);
}

ATTENTION_BF16_TARGET inline void StoreBfloat16(uint16_t* out, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), (__m256i)_mm512_cvtneps_pbh(v));
}

ATTENTION_BF16_TARGET inline void StoreBfloat16(uint16_t* out, __m512 v, __mmask16 k) {
  _mm256_mask_storeu_epi16(out, k, (__m256i)_mm512_cvtneps_pbh(v));
}

// The softmax of one row (see SoftmaxRowsToBfloat16); returns its sum.
ATTENTION_BF16_TARGET float SoftmaxRow(int64_t n, float* x, bool keep_float32, uint16_t* p16) {
  const __m512 neg_inf = _mm512_set1_ps(-__builtin_inff());
  __m512 vmax = neg_inf;
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(x + j));
  if (j < n) vmax = _mm512_max_ps(vmax, _mm512_mask_loadu_ps(neg_inf, Tail(n - j), x + j));
  const float row_max = _mm512_reduce_max_ps(vmax);
  if (row_max == -__builtin_inff()) {  // every key masked: zeros
    for (j = 0; j < n; ++j) {
      if (keep_float32) x[j] = 0.0f;
      p16[j] = 0;
    }
    return 0.0f;
  }
  const __m512 m = _mm512_set1_ps(row_max);
  __m512 vsum = _mm512_setzero_ps();
  for (j = 0; j + kLanes <= n; j += kLanes) {
    const __m512 e = Exp16(_mm512_sub_ps(_mm512_loadu_ps(x + j), m));
    _mm512_storeu_ps(x + j, e);
    vsum = _mm512_add_ps(vsum, e);
  }
  if (j < n) {
    const __mmask16 k = Tail(n - j);
    const __m512 e =
        _mm512_maskz_mov_ps(k, Exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + j), m)));
    _mm512_mask_storeu_ps(x + j, k, e);
    vsum = _mm512_add_ps(vsum, e);
  }
  const float sum = _mm512_reduce_add_ps(vsum);
  const __m512 inv = _mm512_set1_ps(1.0f / sum);
  for (j = 0; j + kLanes <= n; j += kLanes) {
    const __m512 p = _mm512_mul_ps(_mm512_loadu_ps(x + j), inv);
    if (keep_float32) _mm512_storeu_ps(x + j, p);
    StoreBfloat16(p16 + j, p);
  }
  if (j < n) {
    const __mmask16 k = Tail(n - j);
    const __m512 p = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + j), inv);
    if (keep_float32) _mm512_mask_storeu_ps(x + j, k, p);
    StoreBfloat16(p16 + j, p, k);
  }
  return sum;
}

}  // namespace

ATTENTION_BF16_TARGET void RoundToBfloat16(const float* in, int64_t n, uint16_t* out) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) StoreBfloat16(out + i, _mm512_loadu_ps(in + i));
  if (i < n) {
    const __mmask16 k = Tail(n - i);
    StoreBfloat16(out + i, _mm512_maskz_loadu_ps(k, in + i), k);
  }
}

void SoftmaxRowsToBfloat16(int64_t rows, int64_t cols, float* x, int64_t ld, bool keep_float32,
                           uint16_t* p16, int64_t ld16, float* sums) {
  for (int64_t r = 0; r < rows; ++r) {
    const float sum = SoftmaxRow(cols, x + r * ld, keep_float32, p16 + r * ld16);
    if (sums != nullptr) sums[r] = sum;
  }
}

}  // namespace internal
}  // namespace attention
