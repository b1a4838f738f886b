#include "client/histogram.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace attention {
namespace client {
namespace {

double Exact(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  const size_t rank = std::max<size_t>(1, static_cast<size_t>(std::ceil(p / 100 * v.size())));
  return v[rank - 1];
}

TEST(LatencyHistogram, PercentilesWithinOnePercentOfExact) {
  std::mt19937 rng(42);
  std::lognormal_distribution<double> latency(std::log(2000.0), 1.2);  // us, long tail
  std::vector<double> values;
  LatencyHistogram h;
  for (int i = 0; i < 200000; ++i) {
    const double v = latency(rng);
    values.push_back(v);
    h.Record(v);
  }
  for (double p : {1.0, 50.0, 90.0, 99.0, 99.9, 99.99}) {
    const double exact = Exact(values, p);
    EXPECT_NEAR(h.Percentile(p), exact, exact * 0.01) << "p" << p;
  }
  EXPECT_EQ(h.Percentile(100), *std::max_element(values.begin(), values.end()));
  EXPECT_EQ(h.count(), 200000);
}

TEST(LatencyHistogram, TinyHugeAndMerged) {
  LatencyHistogram a, b;
  a.Record(0.3);
  a.Record(5e9);
  b.Record(1.0);
  b.Record(700.0);
  a.Merge(b);
  EXPECT_EQ(a.count(), 4);
  EXPECT_NEAR(a.Percentile(25), 0.3, 0.01);
  EXPECT_NEAR(a.Percentile(50), 1.0, 0.01);
  EXPECT_NEAR(a.Percentile(75), 700.0, 7.0);
  EXPECT_EQ(a.max(), 5e9);
  EXPECT_EQ(LatencyHistogram().Percentile(50), 0);
}

}  // namespace
}  // namespace client
}  // namespace attention
