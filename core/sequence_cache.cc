// SequenceShape and SequenceCache (core/decode.h): a sequence's keys and
// values in blocks of kBlockTokens tokens, keys transposed within a block.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

#include "core/arith.h"
#include "core/decode.h"

namespace attention {
namespace {

constexpr int64_t kBlock = SequenceCache::kBlockTokens;

int64_t ElementBytes(const SequenceShape& s) { return s.bfloat16 ? 2 : 4; }

}  // namespace

int64_t SequenceShape::TokenBytes() const {
  return num_kv_heads * (head_dim + value_dim) * (bfloat16 ? 2 : 4);
}

bool SequenceShape::operator==(const SequenceShape& o) const {
  return num_heads == o.num_heads && num_kv_heads == o.num_kv_heads && head_dim == o.head_dim &&
         value_dim == o.value_dim && embed_dim == o.embed_dim && scale == o.scale &&
         bfloat16 == o.bfloat16 && projection == o.projection;
}

SequenceCache::SequenceCache(const SequenceShape& shape) : shape_(shape) {}
SequenceCache::~SequenceCache() = default;

void SequenceCache::FreeBlock::operator()(void* p) const { std::free(p); }

int64_t SequenceCache::BlockBytes() const {
  return internal::RoundUp(kBlock * shape_.TokenBytes(), 64);
}

int64_t SequenceCache::AppendBytes(int64_t tokens) const {
  const int64_t needed = internal::CeilDiv(length_ + tokens, kBlock);
  return std::max<int64_t>(0, needed - blocks()) * BlockBytes();
}

const void* SequenceCache::Keys(int64_t block, int64_t g) const {
  const int64_t e = ElementBytes(shape_);
  return blocks_[block].get() + g * kBlock * (shape_.head_dim + shape_.value_dim) * e;
}

const void* SequenceCache::Values(int64_t block, int64_t g) const {
  return static_cast<const char*>(Keys(block, g)) + kBlock * shape_.head_dim * ElementBytes(shape_);
}

void SequenceCache::Append(int64_t tokens, const float* keys, int64_t key_stride,
                           const float* values, int64_t value_stride) {
  const int64_t needed = internal::CeilDiv(length_ + tokens, kBlock);
  const size_t had = blocks_.size();
  try {
    while (blocks() < needed) {
      void* p = std::aligned_alloc(64, static_cast<size_t>(BlockBytes()));
      if (p == nullptr) throw std::bad_alloc();
      std::memset(p, 0, static_cast<size_t>(BlockBytes()));  // the step reads whole blocks
      blocks_.emplace_back(static_cast<char*>(p));
    }
  } catch (...) {
    blocks_.resize(had);
    throw;
  }
  const int64_t D = shape_.head_dim, Dv = shape_.value_dim;
  for (int64_t i = 0; i < tokens; ++i) {
    const int64_t pos = length_ + i, b = pos / kBlock, j = pos % kBlock;
    for (int64_t g = 0; g < shape_.num_kv_heads; ++g) {
      const float* k = keys + i * key_stride + g * D;
      const float* v = values + i * value_stride + g * Dv;
      auto* kd = const_cast<char*>(static_cast<const char*>(Keys(b, g)));
      auto* vd = const_cast<char*>(static_cast<const char*>(Values(b, g)));
      // Keys transposed within the block ([D, kBlock]: the step's products run
      // along the keys), values as rows ([kBlock, Dv]).
      if (shape_.bfloat16) {
        auto* kb = reinterpret_cast<uint16_t*>(kd);
        for (int64_t d = 0; d < D; ++d) kb[d * kBlock + j] = FloatToBFloat16(k[d]);
        FloatsToBFloat16(v, Dv, reinterpret_cast<uint16_t*>(vd) + j * Dv);
      } else {
        auto* kf = reinterpret_cast<float*>(kd);
        for (int64_t d = 0; d < D; ++d) kf[d * kBlock + j] = k[d];
        std::memcpy(reinterpret_cast<float*>(vd) + j * Dv, v, Dv * sizeof(float));
      }
    }
  }
  length_ += tokens;
}

void SequenceCache::Truncate(int64_t length) {
  length_ = std::min(length_, length);
  blocks_.resize(static_cast<size_t>(internal::CeilDiv(length_, kBlock)));
}

}  // namespace attention
