#include "core/bf16_kernels.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "core/onednn_ops.h"
#include "core/tensor.h"
#include "gtest/gtest.h"

namespace attention {
namespace internal {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

class Bfloat16Kernels : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!NativeBfloat16()) GTEST_SKIP() << "no bfloat16 instructions on this CPU";
  }
};

float Bf16(uint16_t b) { return BFloat16ToFloat(b); }

TEST_F(Bfloat16Kernels, RoundsAsTheWireEncodingDoesExceptDenormals) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> mantissa(-1, 1);
  std::uniform_int_distribution<int> exponent(-120, 120);
  for (int64_t n : {0, 1, 15, 16, 17, 33, 1000}) {
    std::vector<float> in(n);
    for (float& x : in) x = std::ldexp(mantissa(rng), exponent(rng));
    if (n > 3) {
      in[0] = kInf;
      in[1] = -kInf;
      in[2] = 0x1.01p+0f;  // halfway between bfloat16s, the lower even: down
      in[3] = 0x1.03p+0f;  // halfway, the upper even: up
    }
    std::vector<uint16_t> ours(n + 1, 0xabcd), wire(n);
    RoundToBfloat16(in.data(), n, ours.data());
    FloatsToBFloat16(in.data(), n, wire.data());
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(ours[i], wire[i]) << "element " << i << " " << in[i];
    EXPECT_EQ(ours[n], 0xabcd) << "wrote past the end";
  }
  const float special[] = {std::numeric_limits<float>::quiet_NaN(), 1e-39f, -1e-39f};
  uint16_t out[3];
  RoundToBfloat16(special, 3, out);
  EXPECT_TRUE(std::isnan(Bf16(out[0])));
  EXPECT_EQ(Bf16(out[1]), 0.0f);  // denormals flush to zero (the instruction's rule)
  EXPECT_EQ(Bf16(out[2]), 0.0f);
}

// softmax(row) in double from the float32 differences x - max(row) (whose
// rounding, up to 6e-8 x |x - max|, is float32's, not the kernel's).
std::vector<double> Softmax(const std::vector<float>& row, double* sum) {
  float m = -kInf;
  for (float x : row) m = std::max(m, x);
  std::vector<double> p(row.size());
  *sum = 0;
  for (size_t j = 0; j < row.size(); ++j) *sum += p[j] = std::exp(static_cast<double>(row[j] - m));
  for (double& x : p) x /= *sum;
  return p;
}

TEST_F(Bfloat16Kernels, SoftmaxMatchesDoublePrecision) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> score(-100, 20);  // exp's whole float range and below
  std::bernoulli_distribution masked(0.1);
  for (int64_t n : {1, 2, 15, 16, 17, 31, 64, 70, 513}) {
    for (bool keep : {true, false}) {
      const int64_t rows = 5, ld = n + 3, ld16 = n + 5;  // strides wider than the rows
      std::vector<float> x(rows * ld, 1234.0f);
      std::vector<std::vector<float>> original(rows);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t j = 0; j < n; ++j) {
          const float s = masked(rng) ? -kInf : score(rng);
          x[r * ld + j] = s;
          original[r].push_back(s);
        }
        original[r][0] = x[r * ld] = 0;  // one key left unmasked
      }
      std::vector<uint16_t> p16(rows * ld16, 0xabcd);
      std::vector<float> sums(rows);
      SoftmaxRowsToBfloat16(rows, n, x.data(), ld, keep, p16.data(), ld16, sums.data());
      for (int64_t r = 0; r < rows; ++r) {
        double sum;
        const std::vector<double> want = Softmax(original[r], &sum);
        EXPECT_NEAR(sums[r], sum, 1e-6 * sum) << "row " << r << " of " << n;
        for (int64_t j = 0; j < n; ++j) {
          SCOPED_TRACE(::testing::Message() << "n " << n << " row " << r << " key " << j);
          // Half a bfloat16 ulp (and exp flushes below 2e-38 to zero).
          EXPECT_NEAR(Bf16(p16[r * ld16 + j]), want[j], want[j] / 200 + 2e-38);
          if (keep) {
            EXPECT_NEAR(x[r * ld + j], want[j], 1e-6 * want[j] + 2e-38);
          }
        }
        for (int64_t j = n; j < ld16; ++j) EXPECT_EQ(p16[r * ld16 + j], 0xabcd) << "padding";
        for (int64_t j = n; j < ld; ++j) EXPECT_EQ(x[r * ld + j], 1234.0f) << "padding";
      }
    }
  }
}

TEST_F(Bfloat16Kernels, SoftmaxOfAFullyMaskedRowIsZerosAndNaNStaysNaN) {
  const int64_t n = 21;
  std::vector<float> x(3 * n, 0.5f);
  for (int64_t j = 0; j < n; ++j) x[n + j] = -kInf;  // row 1: every key masked
  x[2 * n + 20] = std::numeric_limits<float>::quiet_NaN();
  std::vector<uint16_t> p16(3 * n);
  float sums[3];
  SoftmaxRowsToBfloat16(3, n, x.data(), n, true, p16.data(), n, sums);
  EXPECT_EQ(sums[1], 0.0f);
  for (int64_t j = 0; j < n; ++j) {
    EXPECT_NEAR(x[j], 1.0 / n, 1e-7);
    EXPECT_EQ(x[n + j], 0.0f);
    EXPECT_EQ(p16[n + j], 0);
    EXPECT_TRUE(std::isnan(x[2 * n + j])) << j;
    EXPECT_TRUE(std::isnan(Bf16(p16[2 * n + j]))) << j;
  }
}

}  // namespace
}  // namespace internal
}  // namespace attention
