#include "core/model.h"

#include "core/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace attention {
namespace {

using ::testing::HasSubstr;

TEST(Model, LoadsTheExportedModels) {
  auto demo = LoadModel("demo", testing::SourcePath("models/demo.safetensors"));
  ASSERT_TRUE(demo.ok()) << demo.status();
  EXPECT_EQ((*demo)->info().embed_dim, 64);
  EXPECT_EQ((*demo)->info().num_heads, 4);
  EXPECT_TRUE((*demo)->info().bias);
  auto kv = LoadModel("kv", testing::SourcePath("tests/fixtures/models/mha_e32_h2_kv.safetensors"));
  ASSERT_TRUE(kv.ok()) << kv.status();
  EXPECT_EQ((*kv)->info().kdim, 24);
  EXPECT_EQ((*kv)->info().vdim, 16);
  EXPECT_FALSE((*kv)->info().bias);
  EXPECT_FALSE((*kv)->weights().in_proj_weight.has_value());
}

absl::Status FromTensors(const std::map<std::string, TensorView>& tensors,
                         const std::map<std::string, std::string>& metadata) {
  absl::StatusOr<SafetensorsFile> f =
      ParseSafetensors(SerializeSafetensors(tensors, metadata), "m.safetensors");
  if (!f.ok()) return f.status();
  return ModelFromFile("m", *f, "m.safetensors").status();
}

TEST(Model, RejectsWhatIsNotAnAttentionModule) {
  std::vector<float> in(3 * 8 * 8), out(8 * 8), odd(7);
  const TensorView in_w{DType::kFloat32, {24, 8}, in.data(), in.size() * 4};
  const TensorView out_w{DType::kFloat32, {8, 8}, out.data(), out.size() * 4};
  const TensorView bad{DType::kFloat32, {7}, odd.data(), odd.size() * 4};
  EXPECT_TRUE(
      FromTensors({{"in_proj_weight", in_w}, {"out_proj.weight", out_w}}, {{"num_heads", "2"}})
          .ok());
  EXPECT_THAT(
      std::string(
          FromTensors({{"in_proj_weight", in_w}, {"out_proj.weight", out_w}}, {}).message()),
      HasSubstr("no num_heads"));
  EXPECT_THAT(std::string(FromTensors({{"in_proj_weight", in_w}, {"out_proj.weight", out_w}},
                                      {{"num_heads", "3"}})
                              .message()),
              HasSubstr("num_heads '3' must be a positive divisor of embed_dim 8"));
  EXPECT_THAT(
      std::string(
          FromTensors({{"in_proj_weight", in_w}, {"out_proj.weight", out_w}, {"extra", bad}},
                      {{"num_heads", "2"}})
              .message()),
      HasSubstr("unexpected tensor 'extra'"));
  EXPECT_THAT(
      std::string(
          FromTensors({{"in_proj_weight", in_w}, {"out_proj.weight", out_w}, {"in_proj_bias", bad}},
                      {{"num_heads", "2"}})
              .message()),
      HasSubstr("in_proj_bias: shape [7] should be [24]"));
  EXPECT_THAT(std::string(FromTensors({{"in_proj_weight", in_w}}, {{"num_heads", "2"}}).message()),
              HasSubstr("out_proj_weight: missing"));
}

}  // namespace
}  // namespace attention
