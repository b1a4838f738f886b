// Internal: the decode step's attention of a few queries over a sequence's
// held keys (core/decode.h), read straight from the cache's blocks.
//
// The work is split into units of (key/value head, range of blocks), as
// flash-decoding does, so that a sequence with few key/value heads still
// keeps every thread busy: each unit reads its keys and values once for all
// the query heads that share them (grouped-query heads) and all the
// message's queries, keeping an online softmax per query; the units' partial
// results are then combined. The inner loops are compiled for AVX-512, AVX2
// and the baseline, chosen at run time from the CPU. Not part of the public
// API.
#ifndef CORE_DECODE_KERNELS_H_
#define CORE_DECODE_KERNELS_H_

#include <cstdint>

namespace attention {
class SequenceCache;
namespace internal {

// Rows of a float32 tensor: row r of head h at data + h * head + r * row.
struct Rows {
  const float* data = nullptr;
  int64_t head = 0;
  int64_t row = 0;
};

struct OutRows {
  float* data = nullptr;
  int64_t head = 0;
  int64_t row = 0;
};

struct DecodeKernelArgs {
  // The heads' shape: H, Hkv, D, Dv and the scores' scale.
  struct Heads {
    int64_t heads = 0, kv_heads = 0, head_dim = 0, value_dim = 0;
    float scale = 1;
  };
  explicit DecodeKernelArgs(const Heads& h)
      : heads(h.heads),
        kv_heads(h.kv_heads),
        head_dim(h.head_dim),
        value_dim(h.value_dim),
        scale(h.scale) {}

  int64_t heads, kv_heads, head_dim, value_dim;
  float scale;
  // The keys and values: a sequence's blocks, or (cache null) rows of
  // float32 tensors, `length` of them.
  const SequenceCache* cache = nullptr;
  Rows keys, values;
  int64_t length = 0;
  Rows queries;             // T rows of each of the H query heads, unscaled
  int64_t count = 0;        // T
  int64_t held_before = 0;  // P: keys before the first query's own
  bool causal = false;      // query i attends keys j <= P + i
  OutRows out;              // T rows of Dv for each head
  int max_threads = 0;      // 0: omp_get_max_threads()
};

// The attention of args.count queries over all the keys. Throws
// std::bad_alloc.
void DecodeAttention(const DecodeKernelArgs& args);

}  // namespace internal
}  // namespace attention

#endif  // CORE_DECODE_KERNELS_H_
