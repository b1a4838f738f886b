// The core and the naive reference against PyTorch's outputs (fixtures made
// by tests/make_fixtures.py with python3-torch, committed).
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "core/attention.h"
#include "core/model.h"
#include "core/reference.h"
#include "core/test_util.h"
#include "gtest/gtest.h"

namespace attention {
namespace {

using testing::FixturePaths;
using testing::LoadFixture;
using testing::SourcePath;

constexpr double kTolerance = 1e-4;  // x max |expected|, the contract's bound

// Loads the model a fixture names into `holder` and points its args at it.
void AttachModel(testing::Fixture& f, std::unique_ptr<const Model>& holder) {
  if (f.model.empty()) return;
  const std::string path = f.model == "demo"
                               ? SourcePath("models/demo.safetensors")
                               : SourcePath("tests/fixtures/models/" + f.model + ".safetensors");
  absl::StatusOr<std::unique_ptr<const Model>> m = LoadModel(f.model, path);
  ASSERT_TRUE(m.ok()) << m.status();
  holder = std::move(*m);
  f.args.projection = &holder->weights();
}

class PyTorchFixtureTest : public ::testing::TestWithParam<std::string> {};

TEST_P(PyTorchFixtureTest, CoreMatchesPyTorch) {
  absl::StatusOr<std::unique_ptr<testing::Fixture>> f = LoadFixture(GetParam());
  ASSERT_TRUE(f.ok()) << f.status();
  std::unique_ptr<const Model> model;
  AttachModel(**f, model);
  VectorOutputs out;
  ASSERT_TRUE(ComputeAttention((*f)->args, {}, &out).ok());
  const std::vector<float> want = testing::ToFloats(*(*f)->expected_output);
  ASSERT_EQ(out.output.shape, (*f)->expected_output->shape);
  EXPECT_LE(RelativeMaxError(out.output.data.data(), {want.begin(), want.end()}), kTolerance);
  if ((*f)->expected_weights != nullptr) {
    const std::vector<float> want_w = testing::ToFloats(*(*f)->expected_weights);
    ASSERT_EQ(out.weights.shape, (*f)->expected_weights->shape);
    EXPECT_LE(RelativeMaxError(out.weights.data.data(), {want_w.begin(), want_w.end()}),
              kTolerance);
  } else {
    EXPECT_TRUE(out.weights.shape.empty());
    EXPECT_TRUE(out.weights.data.empty());
  }
}

TEST_P(PyTorchFixtureTest, ReferenceMatchesPyTorch) {
  absl::StatusOr<std::unique_ptr<testing::Fixture>> f = LoadFixture(GetParam());
  ASSERT_TRUE(f.ok()) << f.status();
  std::unique_ptr<const Model> model;
  AttachModel(**f, model);
  absl::StatusOr<ReferenceResult> ref = ReferenceAttention((*f)->args);
  ASSERT_TRUE(ref.ok()) << ref.status();
  const std::vector<float> want = testing::ToFloats(*(*f)->expected_output);
  ASSERT_EQ(ref->output_shape, (*f)->expected_output->shape);
  std::vector<float> got(ref->output.begin(), ref->output.end());
  EXPECT_LE(RelativeMaxError(got.data(), {want.begin(), want.end()}), kTolerance);
  if ((*f)->expected_weights != nullptr) {
    const std::vector<float> want_w = testing::ToFloats(*(*f)->expected_weights);
    ASSERT_EQ(ref->weights_shape, (*f)->expected_weights->shape);
    std::vector<float> got_w(ref->weights.begin(), ref->weights.end());
    EXPECT_LE(RelativeMaxError(got_w.data(), {want_w.begin(), want_w.end()}), kTolerance);
  } else {
    EXPECT_TRUE(ref->weights_shape.empty());
    EXPECT_TRUE(ref->weights.empty());
  }
}

std::string CaseName(const ::testing::TestParamInfo<std::string>& info) {
  std::string stem = info.param.substr(info.param.find_last_of('/') + 1);
  stem = stem.substr(0, stem.find('.'));
  for (char& c : stem) {
    if (!isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return stem;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, PyTorchFixtureTest, ::testing::ValuesIn(FixturePaths()),
                         CaseName);

TEST(PyTorchFixtures, ThereAreMany) { EXPECT_GE(FixturePaths().size(), 30u); }

// Bfloat16 precision against the float64 reference, held to PyTorch's own
// bfloat16 error on the same inputs (tests/fixtures/bf16, metadata
// torch_bf16_error): at most 1.5 times it, plus a little for rounding noise.
class Bfloat16FixtureTest : public ::testing::TestWithParam<std::string> {};

TEST_P(Bfloat16FixtureTest, ErrsNoMoreThanPyTorchBfloat16) {
  if (EffectivePrecision(Precision::kBFloat16) != Precision::kBFloat16) {
    GTEST_SKIP() << "no bfloat16 instructions on this CPU";
  }
  absl::StatusOr<std::unique_ptr<testing::Fixture>> f = LoadFixture(GetParam());
  ASSERT_TRUE(f.ok()) << f.status();
  double torch_error = 0;
  ASSERT_TRUE(absl::SimpleAtod((*f)->file.metadata.at("torch_bf16_error"), &torch_error));
  const double bound = 1.5 * torch_error + 1e-4;
  const std::vector<float> want32 = testing::ToFloats(*(*f)->expected_output);
  const std::vector<double> want(want32.begin(), want32.end());
  AttentionArgs args = (*f)->args;
  args.precision = Precision::kBFloat16;
  ProjectionWeights prepared_weights = (*f)->projection;
  std::shared_ptr<const PreparedProjection> prepared;
  if (args.projection != nullptr) {
    absl::StatusOr<std::shared_ptr<const PreparedProjection>> p =
        PrepareProjection(prepared_weights);
    ASSERT_TRUE(p.ok()) << p.status();
    prepared = *p;
    prepared_weights.prepared = prepared.get();
  }
  // Inline weights (converted per call), then weights prepared as a model's.
  for (bool model : {false, true}) {
    SCOPED_TRACE(model ? "prepared weights" : "inline weights");
    if (model && args.projection == nullptr) continue;
    if (model) args.projection = &prepared_weights;
    for (int threads : {1, 2}) {
      ComputeOptions options;
      options.max_threads = threads;
      VectorOutputs out;
      ASSERT_TRUE(ComputeAttention(args, options, &out).ok());
      ASSERT_EQ(out.output.shape, (*f)->expected_output->shape);
      const double error = RelativeMaxError(out.output.data.data(), want);
      EXPECT_LE(error, bound) << "PyTorch bfloat16: " << torch_error;
      std::printf("error %.3g (PyTorch bfloat16 %.3g)\n", error, torch_error);
      // Not float32 in disguise: bfloat16 operands leave a visible error.
      EXPECT_GT(error, 1e-4);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Bfloat16FixtureTest,
                         ::testing::ValuesIn(FixturePaths("tests/fixtures/bf16")), CaseName);

}  // namespace
}  // namespace attention
