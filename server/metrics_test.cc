#include "server/metrics.h"

#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace attention {
namespace server {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(MetricsTest, LabelValuesEscapeBackslashQuoteAndNewline) {
  Registry registry;
  registry.AddCounter("t_total", "Help.", {"model"}).Labels({"a\\b\"c\nd"}).Inc(2);
  EXPECT_THAT(registry.Exposition(), HasSubstr("t_total{model=\"a\\\\b\\\"c\\nd\"} 2\n"));
  EXPECT_EQ(EscapeLabelValue("plain"), "plain");
}

TEST(MetricsTest, HelpEscapesBackslashAndNewlineButNotQuotes) {
  Registry registry;
  registry.AddGauge("g", "one \\ two\nthree \"q\"");
  EXPECT_THAT(registry.Exposition(),
              HasSubstr("# HELP g one \\\\ two\\nthree \"q\"\n# TYPE g gauge\n"));
}

TEST(MetricsTest, CountersAndGaugesWithTheirTypes) {
  Registry registry;
  Family<Counter>& calls = registry.AddCounter("calls_total", "Calls.", {"rpc", "code"});
  calls.Labels({"Attention", "OK"}).Inc();
  calls.Labels({"Attention", "OK"}).Inc();
  calls.Labels({"Attention", "INTERNAL"}).Inc(0.5);
  Gauge& queued = registry.AddGauge("queued", "Queued.").Labels({});
  queued.Inc(3);
  queued.Dec();
  const std::string text = registry.Exposition();
  EXPECT_THAT(text, HasSubstr("# TYPE calls_total counter\n"));
  EXPECT_THAT(text, HasSubstr("calls_total{rpc=\"Attention\",code=\"OK\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("calls_total{rpc=\"Attention\",code=\"INTERNAL\"} 0.5\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE queued gauge\nqueued 2\n"));
}

TEST(MetricsTest, HistogramBucketsAreCumulativeAndInfEqualsCount) {
  Registry registry;
  Histogram& h =
      registry.AddHistogram("lat_seconds", "Latency.", {"rpc"}, {0.001, 0.01, 0.1}).Labels({"A"});
  for (double v : {0.0005, 0.001, 0.005, 0.05, 0.05, 7.0}) h.Observe(v);
  const Histogram::Snapshot s = h.Read();
  EXPECT_EQ(s.cumulative, (std::vector<uint64_t>{2, 3, 5, 6}));  // le is inclusive
  EXPECT_DOUBLE_EQ(s.sum, 7.1065);
  const std::string text = registry.Exposition();
  EXPECT_THAT(text, HasSubstr("# TYPE lat_seconds histogram\n"));
  EXPECT_THAT(text, HasSubstr("lat_seconds_bucket{rpc=\"A\",le=\"0.001\"} 2\n"
                              "lat_seconds_bucket{rpc=\"A\",le=\"0.01\"} 3\n"
                              "lat_seconds_bucket{rpc=\"A\",le=\"0.1\"} 5\n"
                              "lat_seconds_bucket{rpc=\"A\",le=\"+Inf\"} 6\n"
                              "lat_seconds_sum{rpc=\"A\"} 7.1065\n"
                              "lat_seconds_count{rpc=\"A\"} 6\n"));
}

TEST(MetricsTest, HistogramWithoutLabelsAndConcurrentObservations) {
  Registry registry;
  Histogram& h = registry.AddHistogram("x_seconds", "X.", {}, LatencyBuckets()).Labels({});
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&h] {
      for (int i = 0; i < 1000; ++i) h.Observe(0.002);
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(h.Read().cumulative.back(), 4000u);
  const std::string text = registry.Exposition();
  EXPECT_THAT(text, HasSubstr("x_seconds_bucket{le=\"0.0001\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("x_seconds_bucket{le=\"0.0025\"} 4000\n"));
  EXPECT_THAT(text, HasSubstr("x_seconds_bucket{le=\"60\"} 4000\n"));
  EXPECT_THAT(text, HasSubstr("x_seconds_bucket{le=\"+Inf\"} 4000\n"));
  EXPECT_THAT(text, HasSubstr("x_seconds_count 4000\n"));
}

TEST(MetricsTest, LatencyBucketsSpan100MicrosecondsTo60Seconds) {
  const std::vector<double> b = LatencyBuckets();
  EXPECT_DOUBLE_EQ(b.front(), 0.0001);
  EXPECT_DOUBLE_EQ(b.back(), 60);
  for (size_t i = 1; i < b.size(); ++i) EXPECT_LT(b[i - 1], b[i]);
}

TEST(MetricsTest, ValuesAsTheFormatSpellsThem) {
  constexpr double kInf = std::numeric_limits<double>::infinity();
  EXPECT_EQ(FormatValue(3), "3");
  EXPECT_EQ(FormatValue(-2), "-2");
  EXPECT_EQ(FormatValue(0.1), "0.1");
  EXPECT_EQ(FormatValue(0.00025), "0.00025");
  EXPECT_EQ(FormatValue(1e300), "1e+300");
  EXPECT_EQ(FormatValue(1.0 / 3), "0.3333333333333333");  // shortest that reads back
  EXPECT_EQ(FormatValue(kInf), "+Inf");
  EXPECT_EQ(FormatValue(-kInf), "-Inf");
  EXPECT_EQ(FormatValue(std::numeric_limits<double>::quiet_NaN()), "NaN");
}

TEST(MetricsTest, ProcessMetricsReadProc) {
  Registry registry;
  AddProcessMetrics(&registry);
  const std::string text = registry.Exposition();
  for (const char* name : {"process_cpu_seconds_total ", "process_resident_memory_bytes ",
                           "process_virtual_memory_bytes ", "process_start_time_seconds ",
                           "process_open_fds ", "process_max_fds "}) {
    EXPECT_THAT(text, HasSubstr(std::string("\n") + name)) << name;
  }
  EXPECT_THAT(text, HasSubstr("# TYPE process_cpu_seconds_total counter\n"));
  EXPECT_THAT(text, Not(HasSubstr("process_resident_memory_bytes 0\n")));
  EXPECT_THAT(text, Not(HasSubstr("process_open_fds 0\n")));
  EXPECT_THAT(text, Not(HasSubstr("process_start_time_seconds 0\n")));
}

}  // namespace
}  // namespace server
}  // namespace attention
