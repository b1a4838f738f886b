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

struct DecodeKernelArgs {
  const SequenceCache* cache = nullptr;
  const float* queries = nullptr;  // [T, H*D] float32, unscaled
  int64_t count = 0;               // T
  int64_t held_before = 0;         // P: keys held before this message's
  bool causal = false;             // query i attends keys j <= P + i
  float* out = nullptr;            // [T, H*Dv]
  int max_threads = 0;             // 0: omp_get_max_threads()
};

// The attention of args.count queries over all the cache's keys. Throws
// std::bad_alloc.
void DecodeAttention(const DecodeKernelArgs& args);

}  // namespace internal
}  // namespace attention

#endif  // CORE_DECODE_KERNELS_H_
