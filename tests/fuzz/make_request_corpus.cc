// Writes the seed corpora of the request fuzzers (tests/fuzz/fuzz_request.cc):
// every PyTorch fixture (tests/fixtures) as the serialized request the
// end-to-end tests send for it, a SelfAttentionRequest or an AttentionRequest,
// its float tensors (inline projection weights too) in one wire dtype
// (float32, float16, bfloat16 in turn; the next one when it does not fit),
// every fourth with bfloat16 precision, kept when it fits in kSeedBytes.
//
//   cmake --build build --target make_request_corpus
//   build/tests/make_request_corpus tests/fuzz/corpus
//
// writes DIR/fuzz_self_attention_request/NAME and DIR/fuzz_attention_request/NAME
// (the same bytes on every run) and prints how many it wrote.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <utility>

#include "core/test_util.h"
#include "tests/e2e_util.h"
#include "tests/fuzz/fuzz_limits.h"

namespace attention {
namespace testing {
namespace {

// Seeds stay at half the fuzzers' message limit, so that the corpus stays
// small and mutations have room to grow them.
constexpr int64_t kSeedBytes = fuzz::kMaxMessageBytes / 4;
constexpr DType kWire[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};
constexpr const char* kWireName[] = {"f32", "f16", "bf16"};

// The inline projection weights in `wire` too.
void ConvertProjection(const Fixture& f, DType wire, v1::AttentionOptions* o) {
  if (!o->has_projection()) return;
  v1::Projection* p = o->mutable_projection();
  const ProjectionWeights& w = f.projection;
  for (auto [view, tensor] : {std::pair{&w.in_proj_weight, p->mutable_in_proj_weight()},
                              {&w.q_proj_weight, p->mutable_q_proj_weight()},
                              {&w.k_proj_weight, p->mutable_k_proj_weight()},
                              {&w.v_proj_weight, p->mutable_v_proj_weight()},
                              {&w.in_proj_bias, p->mutable_in_proj_bias()},
                              {&w.out_proj_weight, p->mutable_out_proj_weight()},
                              {&w.out_proj_bias, p->mutable_out_proj_bias()}}) {
    if (view->has_value()) {
      *tensor = ToProto(**view, wire);
    } else {
      tensor->Clear();
    }
  }
}

// The fixture's request in `wire`, serialized; `self` tells which kind.
std::string Serialize(const Fixture& f, DType wire, bool bf16_precision, bool* self) {
  const v1::Precision precision = bf16_precision ? v1::PRECISION_BFLOAT16 : v1::PRECISION_FLOAT32;
  *self = f.args.self_attention;
  if (*self) {
    v1::SelfAttentionRequest r = ToSelfAttentionRequest(f, wire);
    r.mutable_options()->set_precision(precision);
    ConvertProjection(f, wire, r.mutable_options());
    return r.SerializeAsString();
  }
  v1::AttentionRequest r = ToAttentionRequest(f, wire);
  r.mutable_options()->set_precision(precision);
  ConvertProjection(f, wire, r.mutable_options());
  return r.SerializeAsString();
}

int Main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_request_corpus DIR\n");
    return 2;
  }
  const std::filesystem::path out = argv[1];
  int i = 0, written = 0;
  for (const char* dir : {"tests/fixtures", "tests/fixtures/bf16"}) {
    for (const std::string& path : FixturePaths(dir)) {
      absl::StatusOr<std::unique_ptr<Fixture>> f = LoadFixture(path);
      if (!f.ok()) {
        std::fprintf(stderr, "%s: %s\n", path.c_str(), f.status().ToString().c_str());
        return 1;
      }
      const bool bf16_precision = i % 4 == 3;
      for (int t = 0; t < 3; ++t) {
        const int k = (i + t) % 3;
        bool self = false;
        const std::string bytes = Serialize(**f, kWire[k], bf16_precision, &self);
        if (static_cast<int64_t>(bytes.size()) > kSeedBytes) continue;
        const std::filesystem::path to =
            out / (self ? "fuzz_self_attention_request" : "fuzz_attention_request");
        std::filesystem::create_directories(to);
        std::ofstream(to / ((*f)->name + "_" + kWireName[k] + (bf16_precision ? "_pbf16" : "")),
                      std::ios::binary)
            << bytes;
        ++written;
        break;
      }
      ++i;
    }
  }
  std::printf("make_request_corpus: %d of %d fixtures fit in %lld bytes\n", written, i,
              static_cast<long long>(kSeedBytes));
  return 0;
}

}  // namespace
}  // namespace testing
}  // namespace attention

int main(int argc, char** argv) { return attention::testing::Main(argc, argv); }
