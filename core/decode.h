// Incremental decoding: a sequence's keys and values kept between calls
// (SequenceCache), and the attention of a few new queries over them
// (DecodeStep), with exactly the semantics of one causal forward over the
// whole sequence, whatever the split into messages (docs/api.md,
// "StreamDecode").
//
// Usage (what the server's decode stream does for each message):
//
//   AttentionArgs args;                  // as for ComputeAttention, ranks 2-3,
//   args.query = {..., {T, E}, ...};     // batch 1; self_attention for `input`
//   args.self_attention = true;
//   args.projection = &model.weights();  // or plain: query [T, H*D], key, value
//   args.causal = true;
//   std::unique_ptr<SequenceCache> cache;           // null: a new sequence
//   absl::StatusOr<DecodePlan> plan = PlanDecode(args, cache.get(), options);
//   // reserve plan->append_bytes + plan->memory_bytes, then:
//   if (!cache) cache = std::make_unique<SequenceCache>(plan->shape);
//   absl::Status s = DecodeStep(args, cache.get(), options, &outputs);
//
// Contracts:
// - For a sequence holding P keys, the message's T' keys and values (the
//   key/value tensors, or the input for self-attention; absent: T' = 0) are
//   appended after the in-projection, then its T queries attend over the
//   P + T' keys. With `causal`, query i attends key positions j <= P + i; a
//   query with no key to attend gives zeros. Results: output with the
//   query's rank ([T, E] or [1, T, E]); weights [T, P+T'] (averaged) or
//   [H, T, P+T'] (per head), with a leading 1 for rank-3 queries.
// - The sequence's shape (heads, head dims, scale, storage) is fixed by its
//   first message: PlanDecode refuses a later message that does not fit it
//   (InvalidArgument naming the field). attn_mask and key_padding_mask are
//   refused.
// - Keys and values are stored per key/value head in blocks of
//   kBlockTokens tokens: an append never moves what is held. Storage is
//   float32, or bfloat16 with Precision::kBFloat16 (on any CPU: the step
//   converts as it reads). Projections and the attention arithmetic are
//   float32.
// - DecodeStep validates as PlanDecode does before changing anything; when it
//   fails after appending (out of memory, options.check), the append is undone:
//   a failed step leaves the sequence as it was.
// - The step of a few queries (at most kStepMaxQueries, no weights) runs its
//   own kernel: the held keys are split over heads and key ranges (as
//   flash-decoding does) across up to options.max_threads threads and read
//   once each; longer messages and calls asking for weights gather the keys
//   and run ComputeAttention.
// - Thread-safety: a SequenceCache is used by one call at a time; distinct
//   caches may be used from many threads at once.
#ifndef CORE_DECODE_H_
#define CORE_DECODE_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/attention.h"

namespace attention {

// What a sequence's first message fixes.
struct SequenceShape {
  int64_t num_heads = 0;     // H: query heads
  int64_t num_kv_heads = 0;  // Hkv: key/value heads (divides H)
  int64_t head_dim = 0;      // D: of queries and keys
  int64_t value_dim = 0;     // Dv: of values
  int64_t embed_dim = 0;     // E with a projection (the output's width); 0 plain
  float scale = 0;           // applied to q . k
  bool bfloat16 = false;     // keys and values held in bfloat16
  const ProjectionWeights* projection = nullptr;  // not owned; null: plain

  // Bytes one held token takes: 2 x Hkv x (D or Dv) x (4 or 2).
  int64_t TokenBytes() const;
  bool operator==(const SequenceShape& other) const;
};

// One sequence's keys and values, in blocks of kBlockTokens tokens.
class SequenceCache {
 public:
  static constexpr int64_t kBlockTokens = 64;

  explicit SequenceCache(const SequenceShape& shape);
  ~SequenceCache();
  SequenceCache(const SequenceCache&) = delete;
  SequenceCache& operator=(const SequenceCache&) = delete;

  const SequenceShape& shape() const { return shape_; }
  int64_t length() const { return length_; }  // keys held
  // Bytes its blocks take (what the memory budget must hold for it).
  int64_t bytes() const { return static_cast<int64_t>(blocks_.size()) * BlockBytes(); }
  // The bytes an append of `tokens` more allocates (whole blocks).
  int64_t AppendBytes(int64_t tokens) const;
  int64_t BlockBytes() const;

  // Appends `tokens` keys [tokens, Hkv*D] and values [tokens, Hkv*Dv],
  // float32 rows with the given row strides (in floats). Throws
  // std::bad_alloc (nothing appended then).
  void Append(int64_t tokens, const float* keys, int64_t key_stride, const float* values,
              int64_t value_stride);
  // Drops the keys from `length` on (the undo of an append).
  void Truncate(int64_t length);

  // Key/value head g's keys of block b, transposed: [D, kBlockTokens]; its
  // values: [kBlockTokens, Dv]; float or uint16_t (bfloat16) elements. A
  // block's slots past length() hold zeros, or an undone append's values
  // (the kernels never count them).
  const void* Keys(int64_t block, int64_t g) const;
  const void* Values(int64_t block, int64_t g) const;
  int64_t blocks() const { return static_cast<int64_t>(blocks_.size()); }

 private:
  struct FreeBlock {
    void operator()(void* p) const;
  };
  SequenceShape shape_;
  int64_t length_ = 0;
  std::vector<std::unique_ptr<char, FreeBlock>> blocks_;
};

// The step of at most this many queries runs the decode kernel.
inline constexpr int64_t kStepMaxQueries = 16;

// What a message will do, as validation found it.
struct DecodePlan {
  SequenceShape shape;       // the sequence's (made from this message when new)
  int64_t queries = 0;       // T
  int64_t new_keys = 0;      // T'
  int64_t length_after = 0;  // P + T'
  int64_t append_bytes = 0;  // new blocks the append allocates
  int64_t memory_bytes = 0;  // the step's intermediates and outputs (estimate)
  std::vector<int64_t> output_shape;
  std::vector<int64_t> weights_shape;  // empty without weights
};

// Validates `args` for the sequence `held` (null: a new one) without
// changing anything. InvalidArgument naming the field; ResourceExhausted
// when the step would need more than options.max_memory_bytes.
absl::StatusOr<DecodePlan> PlanDecode(const AttentionArgs& args, const SequenceCache* held,
                                      const ComputeOptions& options);

// Validates (as PlanDecode), appends and computes into `outputs`. `cache`
// must have been made with the plan's shape (PlanDecode(args, nullptr, ...)
// for a new sequence). On error the sequence is as it was.
absl::Status DecodeStep(const AttentionArgs& args, SequenceCache* cache,
                        const ComputeOptions& options, OutputBuffers* outputs);

// One sequence's message in a batch of steps.
struct DecodeMember {
  const AttentionArgs* args = nullptr;  // as for DecodeStep
  SequenceCache* cache = nullptr;       // distinct for each member
  OutputBuffers* outputs = nullptr;
};

// The steps of many sequences at once (dynamic batching): the members that
// use the same model have their in- and out-projections computed as one
// product over all their rows (the weights read once for all), then each
// one's attention over its own keys. Each member gets what DecodeStep would
// give it alone, to float32 rounding (a matrix kernel may round a row of a
// larger product differently: bit for bit on AVX-512, within a few ulps on
// AVX2), and
// its own status, in the members' order: one member's refusal or failure
// never fails another (a failure of the shared products recomputes each
// alone), and a failed member's sequence is as it was. options.check is
// asked once, before anything changes.
std::vector<absl::Status> DecodeSteps(const std::vector<DecodeMember>& members,
                                      const ComputeOptions& options);

}  // namespace attention

#endif  // CORE_DECODE_H_
