#include "core/safetensors.h"

#include <cstring>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace attention {
namespace {

using ::testing::HasSubstr;

std::string WithHeader(const std::string& json, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + json + data;
}

TEST(Safetensors, RoundTrip) {
  const float w[6] = {1, 2, 3, 4, 5, 6};
  const uint8_t m[2] = {1, 0};
  std::string bytes = SerializeSafetensors(
      {{"w", {DType::kFloat32, {2, 3}, w, sizeof(w)}}, {"m", {DType::kBool, {2}, m, 2}}},
      {{"num_heads", "2"}});
  absl::StatusOr<SafetensorsFile> f = ParseSafetensors(bytes, "t");
  ASSERT_TRUE(f.ok()) << f.status();
  SafetensorsFile moved = std::move(*f);
  const TensorView* v = moved.Find("w");
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(v->shape, (std::vector<int64_t>{2, 3}));
  float got[6];
  std::memcpy(got, v->data, sizeof(got));
  EXPECT_EQ(got[5], 6.0f);
  EXPECT_EQ(moved.Find("m")->dtype, DType::kBool);
  EXPECT_EQ(moved.metadata["num_heads"], "2");
  EXPECT_EQ(moved.Find("nope"), nullptr);
}

TEST(Safetensors, RejectsMalformedFiles) {
  const std::string eight(8, 'x');
  struct Case {
    std::string contents;
    const char* message;
  } cases[] = {
      {"abc", "shorter than 8 bytes"},
      {std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8) + "{}", "header length"},
      {WithHeader("{not json", ""), "not a JSON object"},
      {WithHeader("[1,2]", ""), "not a JSON object"},
      {WithHeader(R"({"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})", eight),
       "dtype \"I64\""},
      {WithHeader(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", eight),
       "has 8 bytes but its shape needs 12"},
      {WithHeader(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})", eight),
       "outside the data section"},
      {WithHeader(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", eight),
       "dimension 0"},
      {WithHeader(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                  R"("b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}})",
                  eight),
       "overlap"},
      {WithHeader(R"({"a":{"dtype":"F32","shape":[1]}})", eight), "needs dtype, shape"},
      {WithHeader(R"({"__metadata__":{"num_heads":8}})", ""), "not a string"},
      {WithHeader(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
                  eight),
       "2^40"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<SafetensorsFile> f = ParseSafetensors(c.contents, "bad.safetensors");
    ASSERT_FALSE(f.ok()) << c.message;
    EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(f.status().message()), HasSubstr(c.message));
    EXPECT_THAT(std::string(f.status().message()), HasSubstr("bad.safetensors"));
  }
}

// Hostile headers: a dtype nested 60,000 deep (a recursive serializer of
// the value overflowed the stack), a name that would forge a log line, a
// 50 MiB dtype string: one short line each, nothing echoed raw.
TEST(Safetensors, HostileHeadersGetShortEscapedErrors) {
  const std::string deep = R"({"a":{"dtype":)" + std::string(60000, '[') + std::string(60000, ']') +
                           R"(,"shape":[1],"data_offsets":[0,4]}})";
  absl::StatusOr<SafetensorsFile> f = ParseSafetensors(WithHeader(deep, "xxxx"), "m");
  EXPECT_EQ(f.status().message(),
            "m: not a valid safetensors file: header nests deeper than 16 levels");

  f = ParseSafetensors(WithHeader(R"({"a\nattention-server: forged":{"dtype":"I8","shape":[1],)"
                                  R"("data_offsets":[0,1]}})",
                                  "x"),
                       "m");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(std::string(f.status().message()).find('\n'), std::string::npos);
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("tensor 'a\\nattention-server"));

  f = ParseSafetensors(WithHeader(R"({"a":{"dtype":")" + std::string(50 << 20, 'D') +
                                      R"(","shape":[1],"data_offsets":[0,4]}})",
                                  "xxxx"),
                       "m");
  ASSERT_FALSE(f.ok());
  EXPECT_LT(f.status().message().size(), 256u);
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("(52428800 bytes)"));

  f = ParseSafetensors(
      WithHeader(R"({"a":{"dtype":{"x":[1]},"shape":[1],"data_offsets":[0,4]}})", "xxxx"), "m");
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("dtype of JSON type object"));
}

TEST(Safetensors, MissingFileIsNotFound) {
  EXPECT_EQ(ReadSafetensors("/nonexistent/model.safetensors").status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace attention
