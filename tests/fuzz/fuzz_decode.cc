// libFuzzer target for StreamDecode's sequences (server/decode_stream.h): the
// input drives a series of DecodeRequest messages on one stream (sequence
// names, positions right or wrong, self-attention or query/key/value with or
// without keys, tiny shapes that fit or not, dtypes, byte lengths, models
// known or not, heads, scale, causal, weights, precision, end), served as the
// stream serves them (DecodeSequences::Serve, under a small memory budget and
// small limits).
//
// Beyond what the sanitizers catch, it checks the contract: refusals are
// INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION or RESOURCE_EXHAUSTED
// with a short message, and change nothing (the sequence's length as
// before); an accepted message's response parses, has T rows of output and
// the sequence's new length; the budget holds what the sequences hold and is
// all given back when the stream's sequences go.
//
// Build and run: scripts/fuzz.sh (CMake option ATTENTION_FUZZ, clang).
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "google/protobuf/stubs/logging.h"
#include "server/decode_stream.h"
#include "server/memory_budget.h"
#include "server/metrics.h"
#include "server/model_registry.h"
#include "server/service_metrics.h"

namespace attention {
namespace fuzz {
namespace {

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "fuzz_decode: %s\n", what.c_str());
  std::abort();
}

struct Parts {
  std::unique_ptr<server::ModelRegistry> models;
  server::Registry registry;
  std::unique_ptr<server::ServiceMetrics> metrics;

  Parts() {
    google::protobuf::SetLogHandler(nullptr);
    const std::string dir = ATTENTION_SOURCE_DIR;
    absl::StatusOr<std::unique_ptr<server::ModelRegistry>> loaded = server::ModelRegistry::Load(
        {"demo=" + dir + "/models/demo.safetensors",
         "mha_e32_h4=" + dir + "/tests/fixtures/models/mha_e32_h4.safetensors"});
    if (!loaded.ok()) Fail(loaded.status().ToString());
    models = std::move(*loaded);
    server::ServiceMetrics::Options m;
    for (const server::ModelRegistry::Entry& e : models->All()) m.models.push_back(e.name);
    metrics = std::make_unique<server::ServiceMetrics>(&registry, m, nullptr);
  }
};

v1::Tensor FuzzTensor(FuzzedDataProvider& in, int64_t rows, int64_t width) {
  v1::Tensor t;
  const int dtype = in.ConsumeIntegralInRange(0, 4);  // 4: an unknown one
  t.set_dtype(static_cast<v1::DataType>(dtype == 3 && in.ConsumeBool() ? 0 : dtype));
  if (in.ConsumeBool()) t.add_shape(1);
  t.add_shape(rows);
  t.add_shape(width);
  const size_t size = dtype == 0 ? 4 : dtype == 3 ? 1 : 2;
  size_t bytes = static_cast<size_t>(rows * width) * size;
  if (in.ConsumeIntegralInRange(0, 15) == 0) bytes = in.ConsumeIntegralInRange<size_t>(0, 64);
  std::string data(bytes, '\0');
  for (size_t i = 0; i < bytes; i += 2) data[i] = static_cast<char>(in.ConsumeIntegral<uint8_t>());
  t.set_data(std::move(data));
  return t;
}

v1::DecodeRequest FuzzMessage(FuzzedDataProvider& in, const std::map<std::string, int64_t>& held) {
  static const char* kNames[] = {"a", "b", "c"};
  static const char* kModels[] = {"", "demo", "mha_e32_h4", "nope"};
  static const int64_t kWidths[] = {8, 16, 32, 64, 12};
  v1::DecodeRequest r;
  r.set_id("m");
  r.set_sequence(kNames[in.ConsumeIntegralInRange(0, 2)]);
  auto it = held.find(r.sequence());
  const int64_t length = it == held.end() ? 0 : it->second;
  r.set_position(in.ConsumeIntegralInRange(0, 7) == 0 ? in.ConsumeIntegralInRange<int64_t>(-1, 40)
                                                      : length);
  v1::AttentionOptions& o = *r.mutable_options();
  o.set_model(kModels[in.ConsumeIntegralInRange(0, 3)]);
  o.set_num_heads(in.ConsumeIntegralInRange(0, 5));
  o.set_num_kv_heads(in.ConsumeIntegralInRange(0, 3));
  if (in.ConsumeIntegralInRange(0, 7) == 0) o.set_scale(in.ConsumeFloatingPoint<float>());
  o.set_causal(in.ConsumeBool());
  o.set_weights(static_cast<v1::WeightsMode>(in.ConsumeIntegralInRange(0, 3)));
  o.set_precision(static_cast<v1::Precision>(in.ConsumeIntegralInRange(0, 2)));
  if (in.ConsumeIntegralInRange(0, 15) == 0) {
    *o.mutable_attn_mask() = FuzzTensor(in, 1, 1);
  }
  r.set_end(in.ConsumeIntegralInRange(0, 5) == 0);
  const int shape = in.ConsumeIntegralInRange(0, 3);  // 0: input, 1: q/k/v, 2: q only, 3: none
  const int64_t rows = in.ConsumeIntegralInRange(0, 20), keys = in.ConsumeIntegralInRange(0, 20);
  const int64_t width = kWidths[in.ConsumeIntegralInRange(0, 4)];
  if (shape == 0) *r.mutable_input() = FuzzTensor(in, rows, width);
  if (shape == 1 || shape == 2) *r.mutable_query() = FuzzTensor(in, rows, width);
  if (shape == 1) {
    *r.mutable_key() = FuzzTensor(in, keys, kWidths[in.ConsumeIntegralInRange(0, 4)]);
    *r.mutable_value() =
        FuzzTensor(in, in.ConsumeBool() ? keys : rows, kWidths[in.ConsumeIntegralInRange(0, 4)]);
  }
  return r;
}

bool Allowed(absl::StatusCode code) {
  return code == absl::StatusCode::kInvalidArgument || code == absl::StatusCode::kNotFound ||
         code == absl::StatusCode::kFailedPrecondition ||
         code == absl::StatusCode::kResourceExhausted;
}

}  // namespace
}  // namespace fuzz
}  // namespace attention

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace attention;        // NOLINT(google-build-using-namespace)
  using namespace attention::fuzz;  // NOLINT(google-build-using-namespace)
  static Parts* parts = new Parts();
  server::MemoryBudget budget(1 << 20);  // 1 MiB: appends and steps find it full
  FuzzedDataProvider in(data, size);
  std::map<std::string, int64_t> held;  // what the stream's sequences hold, as answered
  {
    server::DecodeLimits limits;
    limits.max_sequence_tokens = 48;
    limits.max_sequences_per_stream = 2;
    limits.max_message_bytes = 64 << 10;
    server::DecodeSequences sequences(limits, &budget, parts->metrics.get());
    ComputeOptions options;
    options.max_threads = 1;
    options.max_memory_bytes = 4 << 20;
    for (int m = 0; m < 8 && in.remaining_bytes() > 0; ++m) {
      const v1::DecodeRequest r = FuzzMessage(in, held);
      server::Reservation step(&budget);
      grpc::ByteBuffer response;
      const absl::Status s = sequences.Serve(r, *parts->models, options, &step, &response);
      const int64_t before = held.count(r.sequence()) ? held[r.sequence()] : 0;
      if (!s.ok()) {
        if (!Allowed(s.code())) Fail("a refusal with another code: " + s.ToString());
        if (s.message().size() > 2048) Fail("a refusal's message over 2 KiB");
        if (sequences.Length(r.sequence()) != before)
          Fail("a refused message changed its sequence");
        continue;
      }
      std::vector<grpc::Slice> slices;
      if (!response.Dump(&slices).ok()) Fail("an unreadable response");
      std::string bytes;
      for (const grpc::Slice& x : slices)
        bytes.append(reinterpret_cast<const char*>(x.begin()), x.size());
      v1::AttentionResponse resp;
      if (!resp.ParseFromString(bytes)) Fail("a response that does not parse");
      const int64_t after = sequences.Length(r.sequence());
      if (resp.sequence_length() != after) Fail("sequence_length is not what the sequence holds");
      if (r.end() && after != 0) Fail("an ended sequence still held");
      const bool tensors = r.has_input() || r.has_query();
      if (tensors && resp.output().shape_size() < 2) Fail("an accepted step without output");
      if (after > 0) {
        held[r.sequence()] = after;
      } else {
        held.erase(r.sequence());
      }
      if (sequences.held_bytes() > budget.used()) Fail("held bytes outside the budget");
    }
  }
  if (budget.used() != 0) Fail("the budget was not given back");
  return 0;
}
