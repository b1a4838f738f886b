#include "core/decode_kernels.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/arith.h"
#include "core/decode.h"

namespace attention {
namespace internal {
namespace {

constexpr int64_t kBlock = SequenceCache::kBlockTokens;

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
  float* scores;   // [nq, kBlock] (scratch)
  float* partial;  // [nq, Dv + 2] this unit's result: acc, then max and sum
};

// The unit's online softmax over its blocks, written to ctx.partial. Inlined
// into each ISA's variant below, where its loops vectorize.
template <typename E>
inline __attribute__((always_inline)) void RunUnit(const Unit& u, const UnitContext& ctx) {
  const DecodeKernelArgs& a = *ctx.args;
  const SequenceShape& sh = a.cache->shape();
  const int64_t D = sh.head_dim, Dv = sh.value_dim, H = sh.num_heads, T = a.count;
  const int64_t nq = ctx.nq, length = a.cache->length();
  for (int64_t gi = 0; gi < ctx.group; ++gi) {  // the group's queries, scaled
    const int64_t h = u.g * ctx.group + gi;
    for (int64_t t = 0; t < T; ++t) {
      const float* q = a.queries + t * H * D + h * D;
      float* qs = ctx.qs + (gi * T + t) * D;
      for (int64_t d = 0; d < D; ++d) qs[d] = q[d] * sh.scale;
    }
  }
  const int64_t stride = Dv + 2;
  for (int64_t i = 0; i < nq; ++i) {
    float* p = ctx.partial + i * stride;
    std::fill(p, p + Dv, 0.0f);
    p[Dv] = -std::numeric_limits<float>::infinity();
    p[Dv + 1] = 0;
  }
  for (int64_t b = u.first; b < u.last; ++b) {
    const int64_t start = b * kBlock, n = std::min(kBlock, length - start);
    const E* keys = static_cast<const E*>(a.cache->Keys(b, u.g));
    const E* values = static_cast<const E*>(a.cache->Values(b, u.g));
    for (int64_t j = 0; j < n; ++j) {  // each key read once for all queries
      const E* k = keys + j * D;
      for (int64_t i = 0; i < nq; ++i) {
        const float* q = ctx.qs + i * D;
        float dot = 0;
#pragma omp simd reduction(+ : dot)
        for (int64_t d = 0; d < D; ++d) dot += q[d] * Load(k[d]);
        ctx.scores[i * kBlock + j] = dot;
      }
    }
    for (int64_t i = 0; i < nq; ++i) {
      const int64_t t = i % T;
      const int64_t valid = a.causal ? std::clamp<int64_t>(a.held_before + t - start + 1, 0, n) : n;
      if (valid == 0) continue;
      const float* s = ctx.scores + i * kBlock;
      float* p = ctx.partial + i * stride;
      float top = s[0];
      for (int64_t j = 1; j < valid; ++j) top = std::max(top, s[j]);
      const float m = std::max(p[Dv], top);
      if (m == -std::numeric_limits<float>::infinity()) continue;
      const float keep = std::exp(p[Dv] - m);  // 0 at the first block
      float sum = p[Dv + 1] * keep;
      if (keep != 1.0f) {
        for (int64_t d = 0; d < Dv; ++d) p[d] *= keep;
      }
      for (int64_t j = 0; j < valid; ++j) {
        const float w = std::exp(s[j] - m);
        sum += w;
        const E* v = values + j * Dv;
#pragma omp simd
        for (int64_t d = 0; d < Dv; ++d) p[d] += w * Load(v[d]);
      }
      p[Dv] = m;
      p[Dv + 1] = sum;
    }
  }
}

#define ATTENTION_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma")))
#define ATTENTION_AVX2 __attribute__((target("avx2,fma")))
ATTENTION_AVX512 void UnitF32Avx512(const Unit& u, const UnitContext& c) { RunUnit<float>(u, c); }
ATTENTION_AVX512 void UnitBf16Avx512(const Unit& u, const UnitContext& c) {
  RunUnit<uint16_t>(u, c);
}
ATTENTION_AVX2 void UnitF32Avx2(const Unit& u, const UnitContext& c) { RunUnit<float>(u, c); }
ATTENTION_AVX2 void UnitBf16Avx2(const Unit& u, const UnitContext& c) { RunUnit<uint16_t>(u, c); }
void UnitF32(const Unit& u, const UnitContext& c) { RunUnit<float>(u, c); }
void UnitBf16(const Unit& u, const UnitContext& c) { RunUnit<uint16_t>(u, c); }
#undef ATTENTION_AVX512
#undef ATTENTION_AVX2

using UnitFn = void (*)(const Unit&, const UnitContext&);

// The variant for this CPU (learned once).
UnitFn ChooseUnit(bool bf16) {
  static const int isa = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl")) {
      return 2;
    }
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1 : 0;
  }();
  switch (isa) {
    case 2:
      return bf16 ? UnitBf16Avx512 : UnitF32Avx512;
    case 1:
      return bf16 ? UnitBf16Avx2 : UnitF32Avx2;
    default:
      return bf16 ? UnitBf16 : UnitF32;
  }
}

}  // namespace

void DecodeAttention(const DecodeKernelArgs& a) {
  const SequenceShape& sh = a.cache->shape();
  const int64_t H = sh.num_heads, Hkv = sh.num_kv_heads, D = sh.head_dim, Dv = sh.value_dim;
  const int64_t T = a.count, group = H / Hkv, nq = group * T;
  const int64_t blocks = a.cache->blocks();
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
  const UnitFn run = ChooseUnit(sh.bfloat16);
  const int team = static_cast<int>(std::min<int64_t>(threads, static_cast<int64_t>(units.size())));
#pragma omp parallel num_threads(team)
  {
    std::vector<float> qs(nq * D), scores(nq * kBlock);
#pragma omp for schedule(dynamic, 1)
    for (size_t i = 0; i < units.size(); ++i) {
      UnitContext ctx{&a, group, nq, qs.data(), scores.data(), partials.data() + i * nq * stride};
      run(units[i], ctx);
    }
  }
  // Combine each query's partial results over its head's chunks.
  for (int64_t g = 0; g < Hkv; ++g) {
    for (int64_t i = 0; i < nq; ++i) {
      const int64_t h = g * group + i / T, t = i % T;
      float* out = a.out + t * H * Dv + h * Dv;
      float top = -std::numeric_limits<float>::infinity();
      for (int64_t c = 0; c < chunks; ++c) {
        top = std::max(top, partials[((g * chunks + c) * nq + i) * stride + Dv]);
      }
      std::fill(out, out + Dv, 0.0f);
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
