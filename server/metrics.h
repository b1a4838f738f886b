// A small Prometheus metrics registry and its text exposition format
// (version 0.0.4): counters, gauges and histograms in labelled families, and
// values read at each scrape (the process_* metrics).
//
//   Registry registry;
//   Family<Counter>& calls = registry.AddCounter(
//       "attention_requests_total", "Calls answered.", {"rpc", "code"});
//   calls.Labels({"Attention", "OK"}).Inc();
//   Family<Histogram>& latency = registry.AddHistogram(
//       "attention_request_duration_seconds", "Call latency.", {"rpc"}, LatencyBuckets());
//   latency.Labels({"Attention"}).Observe(0.0042);
//   registry.AddCallback("attention_queue_limit_requests", "Queue capacity.", "gauge",
//                        [] { return 64.0; });
//   std::string text = registry.Exposition();   // what GET /metrics serves
//
// Names follow Prometheus' conventions (base units, counters end in _total);
// the registry does not check them. Label values and HELP text are escaped
// as the format requires (backslash, double quote in label values, newline).
// Thread-safe: families and their children may be used from any thread;
// references returned stay valid as long as the registry.
#ifndef SERVER_METRICS_H_
#define SERVER_METRICS_H_

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace attention {
namespace server {

// One number, updated atomically.
class SampleValue {
 public:
  void Inc(double by = 1);
  double value() const { return value_.load(); }
  void Write(const std::string& name, const std::string& labels, std::string* out) const;

 protected:
  std::atomic<double> value_{0};
};

// A value that only goes up (Inc by a non-negative amount).
class Counter final : public SampleValue {};

// A value that goes up and down.
class Gauge final : public SampleValue {
 public:
  void Set(double value) { value_.store(value); }
  void Dec(double by = 1) { Inc(-by); }
};

// Observations counted into buckets by upper bound ("le"); exposed with
// cumulative buckets, a +Inf bucket equal to _count, and _sum.
class Histogram {
 public:
  // `bounds` ascending, without +Inf (added on exposition).
  explicit Histogram(std::vector<double> bounds);
  void Observe(double value) ABSL_LOCKS_EXCLUDED(mu_);
  struct Snapshot {
    std::vector<uint64_t> cumulative;  // per bound, then +Inf (= the count)
    double sum = 0;
  };
  // The counts and sum at one moment (consistent with each other).
  Snapshot Read() const ABSL_LOCKS_EXCLUDED(mu_);
  void Write(const std::string& name, const std::string& labels, std::string* out) const
      ABSL_LOCKS_EXCLUDED(mu_);

 private:
  const std::vector<double> bounds_;
  mutable absl::Mutex mu_;
  // Per bucket, not cumulative; last = above every bound.
  std::vector<uint64_t> counts_ ABSL_GUARDED_BY(mu_);
  double sum_ ABSL_GUARDED_BY(mu_) = 0;
};

// Seconds from 0.1 ms to 60 s, about 2.5x apart: the service's calls range
// from sub-millisecond small requests to long ones near the drain period.
std::vector<double> LatencyBuckets();

// Escapes a label value: backslash, double quote and newline.
std::string EscapeLabelValue(const std::string& value);
// Escapes HELP text: backslash and newline.
std::string EscapeHelp(const std::string& help);
// A sample value as the format spells it: integers without a fraction,
// "+Inf", "-Inf", "NaN".
std::string FormatValue(double value);

class FamilyBase {
 public:
  FamilyBase(std::string name, std::string help, const char* type,
             std::vector<std::string> label_names);
  virtual ~FamilyBase() = default;
  // Appends # HELP, # TYPE and every sample.
  void Write(std::string* out) const;

 protected:
  virtual void WriteSamples(std::string* out) const = 0;
  // `{a="x",b="y"}` for these values of the label names ("" without labels).
  std::string LabelString(const std::vector<std::string>& values) const;

  const std::string name_;
  const std::string help_;
  const char* const type_;
  const std::vector<std::string> label_names_;
};

// The metrics of one name, one child per combination of label values.
template <typename Metric>
class Family final : public FamilyBase {
 public:
  Family(std::string name, std::string help, const char* type, std::vector<std::string> labels,
         std::function<std::unique_ptr<Metric>()> make)
      : FamilyBase(std::move(name), std::move(help), type, std::move(labels)),
        make_(std::move(make)) {}

  // The child for these label values (as many as label names), made on first
  // use. Keep the values few: each combination is a time series.
  Metric& Labels(const std::vector<std::string>& values) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    auto it = children_.find(values);
    if (it == children_.end()) {
      it = children_.emplace(values, Child{LabelString(values), make_()}).first;
    }
    return *it->second.metric;
  }
  // Drops the child of these label values (its series leaves the exposition).
  void Remove(const std::vector<std::string>& values) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    children_.erase(values);
  }

 private:
  struct Child {
    std::string labels;
    std::unique_ptr<Metric> metric;
  };
  void WriteSamples(std::string* out) const override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    for (const auto& [values, child] : children_) child.metric->Write(name_, child.labels, out);
  }

  const std::function<std::unique_ptr<Metric>()> make_;
  mutable absl::Mutex mu_;
  std::map<std::vector<std::string>, Child> children_ ABSL_GUARDED_BY(mu_);
};

class Registry {
 public:
  Family<Counter>& AddCounter(const std::string& name, const std::string& help,
                              std::vector<std::string> labels = {});
  Family<Gauge>& AddGauge(const std::string& name, const std::string& help,
                          std::vector<std::string> labels = {});
  Family<Histogram>& AddHistogram(const std::string& name, const std::string& help,
                                  std::vector<std::string> labels, std::vector<double> bounds);
  // A metric without labels whose value `read` returns at each exposition
  // (values kept elsewhere, such as /proc). `type` is "counter" or "gauge".
  void AddCallback(const std::string& name, const std::string& help, const char* type,
                   std::function<double()> read) ABSL_LOCKS_EXCLUDED(mu_);

  // Every family in the order added, in the text exposition format.
  std::string Exposition() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  template <typename Metric>
  Family<Metric>& Add(const std::string& name, const std::string& help, const char* type,
                      std::vector<std::string> labels,
                      std::function<std::unique_ptr<Metric>()> make) ABSL_LOCKS_EXCLUDED(mu_);

  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<FamilyBase>> families_ ABSL_GUARDED_BY(mu_);
};

// Adds the standard process metrics (process_cpu_seconds_total,
// process_resident_memory_bytes, process_virtual_memory_bytes,
// process_open_fds, process_max_fds, process_start_time_seconds), read from
// /proc at each scrape.
void AddProcessMetrics(Registry* registry);

}  // namespace server
}  // namespace attention

#endif  // SERVER_METRICS_H_
