#include "core/decode_kernels.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/arith.h"
#include "core/avx512_math.h"
#include "core/decode.h"

namespace attention {
namespace internal {
namespace {

constexpr int64_t kBlock = SequenceCache::kBlockTokens;
constexpr int64_t kLanes = 16;  // floats of an AVX-512 register
static_assert(kBlock % kLanes == 0);

inline float Load(float x) { return x; }
inline float Load(uint16_t b) {  // bfloat16: the top half of a float32
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// One unit of work: key/value head g, blocks [first, last).
struct Unit {
  int64_t g = 0;
  int64_t first = 0;
  int64_t last = 0;
};

// What a unit needs besides itself; scratch is the calling thread's.
struct UnitContext {
  const DecodeKernelArgs* args;
  int64_t group;   // query heads per key/value head
  int64_t nq;      // group * T: the query vectors of one key/value head
  float* qs;       // [nq, D] scaled queries (scratch)
  float* scores;   // [kBlock] (scratch)
  float* kt;       // [D, kBlock]: a block of strided keys, transposed (scratch)
  float* partial;  // [nq, Dv + 2] this unit's result: acc, then max and sum
};

// exp(x) for x <= 0 to about 1 ulp (Cephes' expf: x = n ln2 + r, a degree-7
// polynomial of r), in plain arithmetic so that loops of it vectorize. Below
// -87 it returns exp(-87) (about 1.6e-38) instead of underflowing: nothing
// a sum of probabilities can tell.
inline float Exp(float x) {
  x = std::max(x, -87.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) * (1 << 23);
  float two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return p * two_n;
}

// The end of a block's update of `p`: value dims from `d0` on (those the
// vector loops left), then the running max `m` and sum.
template <typename E>
inline __attribute__((always_inline)) void FinishBlock(const E* values, int64_t vrow, int64_t Dv,
                                                       int64_t d0, int64_t valid, const float* s,
                                                       float keep, float m, float sum, float* p) {
  for (; d0 < Dv; ++d0) {  // a value width that is not a multiple of 16
    float acc = p[d0] * keep;
    for (int64_t j = 0; j < valid; ++j) acc += s[j] * Load(values[j * vrow + d0]);
    p[d0] = acc;
  }
  p[Dv] = m;
  p[Dv + 1] = p[Dv + 1] * keep + sum;
}

// One query's online softmax over one block of keys: its scores `s` (the
// block's 64, scratch), then the running max and sum and the accumulated
// values in `p` ([Dv] then max, sum). `keys` [D, kBlock] transposed,
// `values` rows `vrow` apart; the first `valid` keys count.
struct PortableBlock {
  template <typename E>
  static inline __attribute__((always_inline)) void Attend(const float* __restrict q, int64_t D,
                                                           const E* keys, const E* values,
                                                           int64_t vrow, int64_t Dv, int64_t valid,
                                                           float* __restrict s,
                                                           float* __restrict p) {
    // 16 keys at a time, their scores kept in one register across D.
    for (int64_t j0 = 0; j0 < valid; j0 += kLanes) {
      float acc[kLanes] = {};
      for (int64_t d = 0; d < D; ++d) {
        const float qd = q[d];
        const E* __restrict row = keys + d * kBlock + j0;
        for (int64_t l = 0; l < kLanes; ++l) acc[l] += qd * Load(row[l]);
      }
      for (int64_t l = 0; l < kLanes; ++l) s[j0 + l] = acc[l];
    }
    float top = s[0];
    for (int64_t j = 1; j < valid; ++j) top = std::max(top, s[j]);
    const float m = std::max(p[Dv], top);
    if (std::isnan(m)) {  // NaN scores make their row NaN, as in PyTorch
      std::fill(p, p + Dv + 2, std::numeric_limits<float>::quiet_NaN());
      return;
    }
    const float keep = std::exp(p[Dv] - m);  // 0 at the first block
    float sum = 0;
    for (int64_t j = 0; j < valid; ++j) {
      s[j] = Exp(s[j] - m);
      sum += s[j];
    }
    // 16 value dims at a time, accumulated in one register across the keys.
    int64_t d0 = 0;
    for (; d0 + kLanes <= Dv; d0 += kLanes) {
      float acc[kLanes];
      for (int64_t l = 0; l < kLanes; ++l) acc[l] = p[d0 + l] * keep;
      for (int64_t j = 0; j < valid; ++j) {
        const float w = s[j];
        const E* __restrict v = values + j * vrow + d0;
        for (int64_t l = 0; l < kLanes; ++l) acc[l] += w * Load(v[l]);
      }
      for (int64_t l = 0; l < kLanes; ++l) p[d0 + l] = acc[l];
    }
    FinishBlock(values, vrow, Dv, d0, valid, s, keep, m, sum, p);
  }
};

#define ATTENTION_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma")))

// The same in AVX-512 intrinsics (the compiler does not vectorize the
// portable loops well): 64 scores in four registers along D, exp on whole
// registers, values accumulated four registers (64 dims) at a time.
struct Avx512Block {
  static ATTENTION_AVX512 inline __m512 Load16(const float* p) { return _mm512_loadu_ps(p); }
  static ATTENTION_AVX512 inline __m512 Load16(const uint16_t* p) {
    const __m512i wide =
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
  template <typename E>
  static ATTENTION_AVX512 inline void Attend(const float* __restrict q, int64_t D, const E* keys,
                                             const E* values, int64_t vrow, int64_t Dv,
                                             int64_t valid, float* __restrict s,
                                             float* __restrict p) {
    static_assert(kBlock == 4 * kLanes);
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (int64_t d = 0; d < D; ++d) {
      const __m512 qd = _mm512_set1_ps(q[d]);
      const E* row = keys + d * kBlock;
      s0 = _mm512_fmadd_ps(qd, Load16(row), s0);
      s1 = _mm512_fmadd_ps(qd, Load16(row + 16), s1);
      s2 = _mm512_fmadd_ps(qd, Load16(row + 32), s2);
      s3 = _mm512_fmadd_ps(qd, Load16(row + 48), s3);
    }
    __m512 sc[4] = {s0, s1, s2, s3};
    const __m512 minus_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    __m512 top = minus_inf;
    __mmask16 nan = 0;
    for (int c = 0; c < 4; ++c) {  // keys past `valid` do not count
      const int64_t left = std::clamp<int64_t>(valid - 16 * c, 0, 16);
      const __mmask16 mask = static_cast<__mmask16>((uint32_t{1} << left) - 1);
      sc[c] = _mm512_mask_blend_ps(mask, minus_inf, sc[c]);
      nan |= _mm512_cmp_ps_mask(sc[c], sc[c], _CMP_UNORD_Q);
      top = _mm512_max_ps(top, sc[c]);
    }
    const float m = std::max(p[Dv], _mm512_reduce_max_ps(top));
    if (nan != 0 || std::isnan(m)) {
      PortableBlock::Attend(q, D, keys, values, vrow, Dv, valid, s, p);  // NaN: as PyTorch
      return;
    }
    const float keep = std::exp(p[Dv] - m);  // 0 at the first block
    __m512 total = _mm512_setzero_ps();
    for (int c = 0; c < 4; ++c) {
      const int64_t left = std::clamp<int64_t>(valid - 16 * c, 0, 16);
      const __mmask16 mask = static_cast<__mmask16>((uint32_t{1} << left) - 1);
      const __m512 e = _mm512_maskz_mov_ps(mask, Exp16(_mm512_sub_ps(sc[c], _mm512_set1_ps(m))));
      _mm512_storeu_ps(s + 16 * c, e);
      total = _mm512_add_ps(total, e);
    }
    const float sum = _mm512_reduce_add_ps(total);
    const __m512 k = _mm512_set1_ps(keep);
    int64_t d0 = 0;
    for (; d0 + 4 * kLanes <= Dv; d0 += 4 * kLanes) {  // 64 value dims at a time
      __m512 a0 = _mm512_mul_ps(_mm512_loadu_ps(p + d0), k);
      __m512 a1 = _mm512_mul_ps(_mm512_loadu_ps(p + d0 + 16), k);
      __m512 a2 = _mm512_mul_ps(_mm512_loadu_ps(p + d0 + 32), k);
      __m512 a3 = _mm512_mul_ps(_mm512_loadu_ps(p + d0 + 48), k);
      for (int64_t j = 0; j < valid; ++j) {
        const __m512 w = _mm512_set1_ps(s[j]);
        const E* v = values + j * vrow + d0;
        a0 = _mm512_fmadd_ps(w, Load16(v), a0);
        a1 = _mm512_fmadd_ps(w, Load16(v + 16), a1);
        a2 = _mm512_fmadd_ps(w, Load16(v + 32), a2);
        a3 = _mm512_fmadd_ps(w, Load16(v + 48), a3);
      }
      _mm512_storeu_ps(p + d0, a0);
      _mm512_storeu_ps(p + d0 + 16, a1);
      _mm512_storeu_ps(p + d0 + 32, a2);
      _mm512_storeu_ps(p + d0 + 48, a3);
    }
    for (; d0 + kLanes <= Dv; d0 += kLanes) {
      __m512 a0 = _mm512_mul_ps(_mm512_loadu_ps(p + d0), k);
      for (int64_t j = 0; j < valid; ++j) {
        a0 = _mm512_fmadd_ps(_mm512_set1_ps(s[j]), Load16(values + j * vrow + d0), a0);
      }
      _mm512_storeu_ps(p + d0, a0);
    }
    FinishBlock(values, vrow, Dv, d0, valid, s, keep, m, sum, p);
  }
};

// The unit's online softmax over its blocks, written to ctx.partial. Inlined
// into each ISA's variant below, where its fixed-length loops vectorize:
// a block's keys are stored transposed ([D, kBlock]), so a query's 64 scores
// are D multiply-adds of whole vectors, no horizontal sums.
template <typename E, bool kHeld, typename Block>
inline __attribute__((always_inline)) void RunUnit(const Unit& u, const UnitContext& ctx) {
  const DecodeKernelArgs& a = *ctx.args;
  const int64_t D = a.head_dim, Dv = a.value_dim, T = a.count;
  const int64_t nq = ctx.nq, length = a.length;
  for (int64_t gi = 0; gi < ctx.group; ++gi) {  // the group's queries, scaled
    const int64_t h = u.g * ctx.group + gi;
    for (int64_t t = 0; t < T; ++t) {
      const float* q = a.queries.data + h * a.queries.head + t * a.queries.row;
      float* qs = ctx.qs + (gi * T + t) * D;
      for (int64_t d = 0; d < D; ++d) qs[d] = q[d] * a.scale;
    }
  }
  const int64_t stride = Dv + 2;
  for (int64_t i = 0; i < nq; ++i) {
    float* p = ctx.partial + i * stride;
    std::fill(p, p + Dv, 0.0f);
    p[Dv] = -std::numeric_limits<float>::infinity();
    p[Dv + 1] = 0;
  }
  float* __restrict s = ctx.scores;
  for (int64_t b = u.first; b < u.last; ++b) {
    const int64_t start = b * kBlock, n = std::min(kBlock, length - start);
    const E* keys;    // [D, kBlock]
    const E* values;  // rows of Dv, `vrow` apart
    int64_t vrow = Dv;
    if constexpr (kHeld) {
      keys = static_cast<const E*>(a.cache->Keys(b, u.g));
      values = static_cast<const E*>(a.cache->Values(b, u.g));
    } else {  // the block's key rows transposed into scratch (in cache from here on)
      const float* k = a.keys.data + u.g * a.keys.head + start * a.keys.row;
      for (int64_t j = 0; j < kBlock; ++j) {
        for (int64_t d = 0; d < D; ++d) ctx.kt[d * kBlock + j] = j < n ? k[j * a.keys.row + d] : 0;
      }
      keys = ctx.kt;
      values = a.values.data + u.g * a.values.head + start * a.values.row;
      vrow = a.values.row;
    }
    for (int64_t i = 0; i < nq; ++i) {
      const int64_t t = i % T;
      const int64_t valid = a.causal ? std::clamp<int64_t>(a.held_before + t - start + 1, 0, n) : n;
      if (valid == 0) continue;
      Block::Attend(ctx.qs + i * D, D, keys, values, vrow, Dv, valid, s, ctx.partial + i * stride);
    }
  }
}

#define ATTENTION_AVX2 __attribute__((target("avx2,fma")))
template <typename E, bool kHeld>
ATTENTION_AVX512 void UnitAvx512(const Unit& u, const UnitContext& c) {
  RunUnit<E, kHeld, Avx512Block>(u, c);
}
template <typename E, bool kHeld>
ATTENTION_AVX2 void UnitAvx2(const Unit& u, const UnitContext& c) {
  RunUnit<E, kHeld, PortableBlock>(u, c);
}
template <typename E, bool kHeld>
void UnitBaseline(const Unit& u, const UnitContext& c) {
  RunUnit<E, kHeld, PortableBlock>(u, c);
}
#undef ATTENTION_AVX512
#undef ATTENTION_AVX2

using UnitFn = void (*)(const Unit&, const UnitContext&);

// The variant for this CPU (learned once) and these keys: a sequence's
// float32 or bfloat16 blocks, or rows of a tensor (kind 2).
UnitFn ChooseUnit(int kind) {
  static const int isa = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl")) {
      return 2;
    }
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1 : 0;
  }();
  static constexpr UnitFn kUnits[3][3] = {
      {UnitBaseline<float, true>, UnitBaseline<uint16_t, true>, UnitBaseline<float, false>},
      {UnitAvx2<float, true>, UnitAvx2<uint16_t, true>, UnitAvx2<float, false>},
      {UnitAvx512<float, true>, UnitAvx512<uint16_t, true>, UnitAvx512<float, false>}};
  return kUnits[isa][kind];
}

}  // namespace

void DecodeAttention(const DecodeKernelArgs& a) {
  const int64_t H = a.heads, Hkv = a.kv_heads, D = a.head_dim, Dv = a.value_dim;
  const int64_t T = a.count, group = H / Hkv, nq = group * T;
  const int64_t blocks = CeilDiv(a.length, kBlock);
  const int threads = a.max_threads > 0 ? a.max_threads : omp_get_max_threads();
  // Enough units for every thread to stay busy to the end (a few per
  // thread), none shorter than 4 blocks (256 keys) where there are keys.
  const int64_t wanted = CeilDiv(4 * threads, Hkv);
  const int64_t per_unit = std::max<int64_t>(std::min<int64_t>(4, blocks), CeilDiv(blocks, wanted));
  const int64_t chunks = std::max<int64_t>(1, CeilDiv(blocks, std::max<int64_t>(1, per_unit)));
  std::vector<Unit> units;
  units.reserve(Hkv * chunks);
  for (int64_t g = 0; g < Hkv; ++g) {
    for (int64_t c = 0; c < chunks; ++c) {
      units.push_back({g, c * per_unit, std::min(blocks, (c + 1) * per_unit)});
    }
  }
  const int64_t stride = Dv + 2;
  std::vector<float> partials(units.size() * nq * stride);
  const UnitFn run = ChooseUnit(a.cache == nullptr ? 2 : a.cache->shape().bfloat16 ? 1 : 0);
  const int team = static_cast<int>(std::min<int64_t>(threads, static_cast<int64_t>(units.size())));
#pragma omp parallel num_threads(team)
  {
    std::vector<float> qs(nq * D), scores(kBlock), kt(a.cache == nullptr ? D * kBlock : 0);
#pragma omp for schedule(dynamic, 1)
    for (size_t i = 0; i < units.size(); ++i) {
      UnitContext ctx{
          &a, group, nq, qs.data(), scores.data(), kt.data(), partials.data() + i * nq * stride};
      run(units[i], ctx);
    }
  }
  // Combine each query's partial results over its head's chunks.
  for (int64_t g = 0; g < Hkv; ++g) {
    for (int64_t i = 0; i < nq; ++i) {
      const int64_t h = g * group + i / T, t = i % T;
      float* out = a.out.data + h * a.out.head + t * a.out.row;
      float top = -std::numeric_limits<float>::infinity();
      bool nan = false;
      for (int64_t c = 0; c < chunks; ++c) {
        const float m = partials[((g * chunks + c) * nq + i) * stride + Dv];
        nan = nan || std::isnan(m);
        top = std::max(top, m);
      }
      std::fill(out, out + Dv, nan ? std::numeric_limits<float>::quiet_NaN() : 0.0f);
      if (nan) continue;
      if (top == -std::numeric_limits<float>::infinity()) continue;  // nothing to attend
      float sum = 0;
      for (int64_t c = 0; c < chunks; ++c) {
        const float* p = partials.data() + ((g * chunks + c) * nq + i) * stride;
        const float w = std::exp(p[Dv] - top);
        sum += w * p[Dv + 1];
        for (int64_t d = 0; d < Dv; ++d) out[d] += w * p[d];
      }
      for (int64_t d = 0; d < Dv; ++d) out[d] /= sum;
    }
  }
}

}  // namespace internal
}  // namespace attention
