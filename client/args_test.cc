// The shared flag parsers: one spelling of --weights and --wire-dtype for
// every tool, and unknown options rejected.
#include "client/args.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace attention {
namespace client {
namespace {

using ::testing::HasSubstr;

TEST(ArgsTest, WeightsModeParsesEachSpellingAndRejectsTypos) {
  EXPECT_EQ(ParseWeightsMode("none").value(), WeightsMode::kNone);
  EXPECT_EQ(ParseWeightsMode("average").value(), WeightsMode::kAveraged);
  EXPECT_EQ(ParseWeightsMode("averaged").value(), WeightsMode::kAveraged);
  EXPECT_EQ(ParseWeightsMode("per-head").value(), WeightsMode::kPerHead);
  for (const char* bad : {"avarage", "per_head", "", "None"}) {
    absl::StatusOr<WeightsMode> w = ParseWeightsMode(bad);
    ASSERT_FALSE(w.ok()) << bad;
    EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(
        std::string(w.status().message()),
        HasSubstr(std::string("--weights ") + bad + ": expected none, average or per-head"));
  }
}

TEST(ArgsTest, WireDTypeParsesTheThreeFloatTypes) {
  EXPECT_EQ(ParseWireDType("float32").value(), DType::kFloat32);
  EXPECT_EQ(ParseWireDType("float16").value(), DType::kFloat16);
  EXPECT_EQ(ParseWireDType("bfloat16").value(), DType::kBFloat16);
  absl::StatusOr<DType> bad = ParseWireDType("bool");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(std::string(bad.status().message()),
            "--wire-dtype bool: expected float32, float16 or bfloat16");
}

TEST(ArgsTest, PrecisionParsesFloat32AndBfloat16) {
  EXPECT_EQ(ParsePrecision("float32").value(), Precision::kFloat32);
  EXPECT_EQ(ParsePrecision("bfloat16").value(), Precision::kBFloat16);
  EXPECT_STREQ(PrecisionName(Precision::kBFloat16), "bfloat16");
  EXPECT_STREQ(PrecisionName(Precision::kFloat32), "float32");
  absl::StatusOr<Precision> bad = ParsePrecision("float16");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(std::string(bad.status().message()),
            "--precision float16: expected float32 or bfloat16");
}

TEST(ArgsTest, CheckKnownNamesTheFirstUnknownOption) {
  char prog[] = "tool", a1[] = "--heads", a2[] = "8", a3[] = "--anything", a4[] = "3";
  char* argv[] = {prog, a1, a2, a3, a4};
  absl::StatusOr<CliArgs> args = ParseArgs(5, argv, {});
  ASSERT_TRUE(args.ok());
  EXPECT_TRUE(args->CheckKnown({"heads", "anything"}).ok());
  absl::Status st = args->CheckKnown({"heads"});
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(st.message(), "unknown option --anything");
}

}  // namespace
}  // namespace client
}  // namespace attention
