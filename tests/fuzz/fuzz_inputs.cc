// libFuzzer target for everything an attacker controls before compute: the
// safetensors and .npy parsers, and a request built from a parsed file
// (shapes, dtypes, masks, projection weights) through validation and, when
// valid, the computation itself under a small memory limit.
// Build and run: scripts/fuzz.sh [SECONDS]
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/numbers.h"
#include "client/npy.h"
#include "core/attention.h"
#include "core/safetensors.h"

namespace {

std::optional<attention::TensorView> Get(const attention::SafetensorsFile& f, const char* name) {
  const attention::TensorView* v = f.Find(name);
  return v ? std::optional<attention::TensorView>(*v) : std::nullopt;
}

int64_t Meta(const attention::SafetensorsFile& f, const char* key) {
  auto it = f.metadata.find(key);
  int64_t v = 0;
  if (it != f.metadata.end() && absl::SimpleAtoi(it->second, &v)) return v;
  return 0;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  (void)attention::client::ParseNpy(bytes, "fuzz.npy");
  absl::StatusOr<attention::SafetensorsFile> file = attention::ParseSafetensors(bytes, "fuzz");
  if (!file.ok()) return 0;
  attention::AttentionArgs a;
  const attention::TensorView* q = file->Find("query");
  if (q == nullptr) q = file->Find("input");
  if (q == nullptr) return 0;
  a.query = *q;
  a.self_attention = file->Find("key") == nullptr;
  if (!a.self_attention) {
    a.key = Get(*file, "key");
    a.value = Get(*file, "value");
  }
  a.num_heads = Meta(*file, "num_heads");
  a.num_kv_heads = Meta(*file, "num_kv_heads");
  a.causal = Meta(*file, "causal") != 0;
  a.weights = static_cast<attention::WeightsMode>(Meta(*file, "weights") & 1 ? 1 : 0);
  a.attn_mask = Get(*file, "attn_mask");
  a.key_padding_mask = Get(*file, "key_padding_mask");
  attention::ProjectionWeights p;
  for (const attention::ProjectionTensor& t : attention::kProjectionTensors) {
    p.*t.member = Get(*file, t.state_dict_name);
  }
  if (p.out_proj_weight) a.projection = &p;
  attention::ComputeOptions options;
  options.max_memory_bytes = 16 << 20;
  options.max_threads = 1;
  attention::VectorOutputs out;
  (void)attention::ComputeAttention(a, options, &out);
  return 0;
}
