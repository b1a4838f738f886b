// Internal: vector math shared by the AVX-512 kernels (bf16_kernels.cc,
// decode_kernels.cc). Compiled for AVX-512F whatever the build's flags:
// call only from functions compiled for AVX-512 (a superset), on CPUs that
// have it. Not part of the public API.
#ifndef CORE_AVX512_MATH_H_
#define CORE_AVX512_MATH_H_

#include <immintrin.h>

namespace attention {
namespace internal {

// exp(x) in every lane, within 2 float32 ulps: x = n ln2 + r with |r| <=
// ln2 / 2 (ln2 in two parts, Cody-Waite), exp(r) by Cephes' expf polynomial,
// times 2^n by VSCALEFPS. Below -87 (exp < 1.7e-38, and -inf) the result is
// 0; NaN stays NaN (VMAXPS/VMINPS return their second operand for NaN).
__attribute__((target("avx512f"))) inline __m512 Exp16(__m512 x) {
  const __m512 c = _mm512_min_ps(_mm512_set1_ps(88.5f), _mm512_max_ps(_mm512_set1_ps(-88.0f), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(c, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), c);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  const __m512 e = _mm512_scalef_ps(p, n);
  const __mmask16 tiny = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_LT_OQ);
  return _mm512_mask_mov_ps(e, tiny, _mm512_setzero_ps());
}

}  // namespace internal
}  // namespace attention

#endif  // CORE_AVX512_MATH_H_
