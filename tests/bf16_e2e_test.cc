// End to end, bfloat16 precision: a PRECISION_BFLOAT16 request answers with
// the precision the server computed in, within PyTorch bfloat16's own error
// (tests/fixtures/bf16); a server whose oneDNN is held to AVX2
// (ONEDNN_MAX_CPU_ISA, as on the machines without bfloat16 instructions)
// computes such requests in float32 and says so, in ListModels too.
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "client/client.h"
#include "client/npy.h"
#include "core/attention.h"
#include "core/model.h"
#include "core/reference.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/e2e_util.h"
#include "tests/server_process.h"

namespace attention {
namespace testing {
namespace {

using client::AttentionClient;

struct Bfloat16Fixture {
  std::unique_ptr<Fixture> fixture;
  double bound;  // 1.5 x PyTorch bfloat16's error, plus a little
};

std::vector<Bfloat16Fixture> Bfloat16Fixtures() {
  std::vector<Bfloat16Fixture> all;
  for (const std::string& path : FixturePaths("tests/fixtures/bf16")) {
    absl::StatusOr<std::unique_ptr<Fixture>> f = LoadFixture(path);
    EXPECT_TRUE(f.ok()) << f.status();
    if (!f.ok()) continue;
    double torch_error = 0;
    EXPECT_TRUE(absl::SimpleAtod((*f)->file.metadata.at("torch_bf16_error"), &torch_error));
    all.push_back({std::move(*f), 1.5 * torch_error + 1e-4});
  }
  EXPECT_GE(all.size(), 5u);
  return all;
}

// The fixture's call asking for `precision`.
absl::StatusOr<v1::AttentionResponse> Call(AttentionClient& c, const Fixture& f,
                                           v1::Precision precision) {
  if (f.args.self_attention) {
    v1::SelfAttentionRequest r = ToSelfAttentionRequest(f);
    r.mutable_options()->set_precision(precision);
    return c.SelfAttention(r, {30});
  }
  v1::AttentionRequest r = ToAttentionRequest(f);
  r.mutable_options()->set_precision(precision);
  return c.Attention(r, {30});
}

TEST(Bfloat16E2E, RequestsComputeInBfloat16WithinPyTorchBfloat16Error) {
  const bool native = EffectivePrecision(Precision::kBFloat16) == Precision::kBFloat16;
  ServerProcess server(ModelFlags());
  ASSERT_TRUE(server.ok()) << server.Output();
  AttentionClient c(AttentionClient::Connect(server.target()));
  absl::StatusOr<v1::ListModelsResponse> models = c.ListModels();
  ASSERT_TRUE(models.ok()) << models.status();
  EXPECT_EQ(models->native_bfloat16(), native);
  for (const Bfloat16Fixture& b : Bfloat16Fixtures()) {
    const Fixture& f = *b.fixture;
    SCOPED_TRACE(f.name);
    absl::StatusOr<v1::AttentionResponse> r = Call(c, f, v1::PRECISION_BFLOAT16);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->precision(), native ? v1::PRECISION_BFLOAT16 : v1::PRECISION_FLOAT32);
    EXPECT_EQ(r->output().dtype(), v1::FLOAT32);
    const double error = ErrorAgainst(r->output(), *f.expected_output);
    EXPECT_LE(error, b.bound);
    if (native) {
      EXPECT_GT(error, 1e-4);  // bfloat16 operands, not float32
    }
    // The default stays float32, and says so.
    absl::StatusOr<v1::AttentionResponse> f32 = Call(c, f, v1::PRECISION_FLOAT32);
    ASSERT_TRUE(f32.ok()) << f32.status();
    EXPECT_EQ(f32->precision(), v1::PRECISION_FLOAT32);
    EXPECT_LE(ErrorAgainst(f32->output(), *f.expected_output), 1e-4);
  }
  // A preloaded model (its bfloat16 weights made by the first such call),
  // against the float64 reference with the model's weights.
  absl::StatusOr<std::unique_ptr<const Model>> demo =
      LoadModel("demo", SourcePath("models/demo.safetensors"));
  ASSERT_TRUE(demo.ok()) << demo.status();
  std::mt19937 rng(7);
  const FloatTensor x = RandomTensor({2, 33, 64}, rng);
  AttentionArgs args;
  args.self_attention = true;
  args.query = x.view();
  args.num_heads = 4;
  args.projection = &(*demo)->weights();
  absl::StatusOr<ReferenceResult> want = ReferenceAttention(args);
  ASSERT_TRUE(want.ok()) << want.status();
  v1::SelfAttentionRequest req;
  *req.mutable_input() = ToProto(x.view());
  req.mutable_options()->set_model("demo");
  req.mutable_options()->set_precision(v1::PRECISION_BFLOAT16);
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<v1::AttentionResponse> r = c.SelfAttention(req, {30});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->precision(), native ? v1::PRECISION_BFLOAT16 : v1::PRECISION_FLOAT32);
    std::vector<float> got(x.data.size());
    ASSERT_EQ(r->output().data().size(), got.size() * sizeof(float));
    std::memcpy(got.data(), r->output().data().data(), r->output().data().size());
    EXPECT_LE(RelativeMaxError(got.data(), want->output), 1e-2);
  }
  EXPECT_EQ(server.Stop(SIGTERM, 15), 0) << server.Output();
}

TEST(Bfloat16E2E, WithoutBfloat16InstructionsComputesInFloat32AndSaysSo) {
  ::setenv("ONEDNN_MAX_CPU_ISA", "AVX2", 1);  // the server inherits it
  ServerProcess server(ModelFlags());
  ::unsetenv("ONEDNN_MAX_CPU_ISA");
  ASSERT_TRUE(server.ok()) << server.Output();
  AttentionClient c(AttentionClient::Connect(server.target()));
  absl::StatusOr<v1::ListModelsResponse> models = c.ListModels();
  ASSERT_TRUE(models.ok()) << models.status();
  EXPECT_FALSE(models->native_bfloat16());
  for (const Bfloat16Fixture& b : Bfloat16Fixtures()) {
    const Fixture& f = *b.fixture;
    SCOPED_TRACE(f.name);
    absl::StatusOr<v1::AttentionResponse> r = Call(c, f, v1::PRECISION_BFLOAT16);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->precision(), v1::PRECISION_FLOAT32);
    EXPECT_LE(ErrorAgainst(r->output(), *f.expected_output), 1e-4);  // float32's accuracy
  }
  EXPECT_EQ(server.Stop(SIGTERM, 15), 0) << server.Output();
}

TEST(Bfloat16E2E, CliSendsThePrecisionAndPrintsTheOneUsed) {
  ServerProcess server(ModelFlags());
  ASSERT_TRUE(server.ok()) << server.Output();
  const std::string input = ::testing::TempDir() + "bf16_e2e_x.npy";
  std::mt19937 rng(3);
  const FloatTensor x = RandomTensor({1, 8, 64}, rng);
  ASSERT_TRUE(client::WriteNpy(input, {DType::kFloat32, x.shape,
                                       std::string(reinterpret_cast<const char*>(x.data.data()),
                                                   x.data.size() * sizeof(float))})
                  .ok());
  const bool native = EffectivePrecision(Precision::kBFloat16) == Precision::kBFloat16;
  std::string out;
  EXPECT_EQ(RunCommand({ClientBinary(), "--target", server.target(), "self-attention", "--input",
                        input, "--model", "demo", "--precision", "bfloat16"},
                       &out),
            0)
      << out;
  EXPECT_THAT(out, ::testing::HasSubstr(native ? "precision PRECISION_BFLOAT16"
                                               : "precision PRECISION_FLOAT32"));
  EXPECT_EQ(RunCommand({ClientBinary(), "--target", server.target(), "self-attention", "--input",
                        input, "--model", "demo", "--precision", "float16"},
                       &out),
            2)
      << out;
  EXPECT_THAT(out, ::testing::HasSubstr("--precision float16: expected float32 or bfloat16"));
  EXPECT_EQ(RunCommand({ClientBinary(), "--target", server.target(), "models"}, &out), 0) << out;
  EXPECT_THAT(out, ::testing::HasSubstr(native ? "bfloat16 precision: native"
                                               : "bfloat16 precision: computed in float32"));
  std::remove(input.c_str());
  EXPECT_EQ(server.Stop(SIGTERM, 15), 0) << server.Output();
}

}  // namespace
}  // namespace testing
}  // namespace attention
