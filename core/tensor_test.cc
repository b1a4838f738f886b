#include "core/tensor.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace attention {
namespace {

using ::testing::HasSubstr;

TEST(Half, EveryHalfRoundTrips) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = HalfToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(HalfToFloat(FloatToHalf(f))));
      continue;
    }
    EXPECT_EQ(FloatToHalf(f), h) << h;
  }
}

TEST(Half, KnownValuesAndRounding) {
  EXPECT_EQ(FloatToHalf(1.0f), 0x3c00);
  EXPECT_EQ(FloatToHalf(-2.0f), 0xc000);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);            // rounds to infinity
  EXPECT_EQ(FloatToHalf(5.9604645e-8f), 0x0001);       // smallest subnormal
  EXPECT_EQ(FloatToHalf(1.0f + 1.0f / 2048), 0x3c00);  // tie to even
  EXPECT_EQ(FloatToHalf(1.0f + 3.0f / 2048), 0x3c02);
  EXPECT_FLOAT_EQ(HalfToFloat(0x3555), 0.33325195f);
}

TEST(BFloat16, RoundsToNearestEven) {
  EXPECT_EQ(FloatToBFloat16(1.0f), 0x3f80);
  EXPECT_FLOAT_EQ(BFloat16ToFloat(FloatToBFloat16(3.140625f)), 3.140625f);
  EXPECT_EQ(FloatToBFloat16(1.0f + 1.0f / 256), 0x3f80);  // tie to even
  EXPECT_TRUE(std::isnan(BFloat16ToFloat(FloatToBFloat16(std::nanf("")))));
  for (uint32_t b = 0; b < 65536; b += 7) {
    const float f = BFloat16ToFloat(static_cast<uint16_t>(b));
    if (!std::isnan(f)) {
      EXPECT_EQ(FloatToBFloat16(f), b);
    }
  }
}

TEST(Convert, ViewsOfEveryDType) {
  const float values[] = {0.5f, -3.0f, 1024.0f};
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    std::vector<char> bytes(3 * DTypeSize(dtype));
    ConvertFromFloat32(values, 3, dtype, bytes.data());
    float out[3];
    ConvertToFloat32({dtype, {3}, bytes.data(), bytes.size()}, out);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(out[i], values[i]) << DTypeName(dtype) << " " << i;
  }
}

TEST(CheckedElements, RejectsBadShapesAndSizes) {
  float data[6];
  EXPECT_EQ(*CheckedElements({DType::kFloat32, {2, 3}, data, 24}, "x"), 6);
  EXPECT_THAT(
      std::string(CheckedElements({DType::kFloat32, {2, 3}, data, 20}, "x").status().message()),
      HasSubstr("x: data has 20 bytes but shape [2,3] of FLOAT32 needs 24"));
  EXPECT_THAT(std::string(CheckedProduct({4, -1}, "m").status().message()),
              HasSubstr("m: dimension 1 of shape [4,-1] is -1"));
  const int64_t big = std::numeric_limits<int64_t>::max() / 2;
  EXPECT_FALSE(CheckedProduct({big, big, big}, "o").ok());
  EXPECT_FALSE(CheckedProduct({int64_t{1} << 21, int64_t{1} << 20}, "o").ok());
  EXPECT_FALSE(CheckedElements({DType::kFloat32, {1}, nullptr, 4}, "n").ok());
}

}  // namespace
}  // namespace attention
