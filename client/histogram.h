// A log-linear latency histogram with bounded memory: values (microseconds)
// fall in buckets of 1/128 of their power of two, so any percentile is
// reported within 0.4% of an exact one (<= 1% as the load tester promises),
// whatever the run's length. Not thread-safe: one per thread, or a lock.
//
//   LatencyHistogram h;
//   h.Record(1234.5);                 // us
//   double p99 = h.Percentile(99);    // us
#ifndef CLIENT_HISTOGRAM_H_
#define CLIENT_HISTOGRAM_H_

#include <array>
#include <cstdint>

namespace attention {
namespace client {

class LatencyHistogram {
 public:
  static constexpr int kSubBuckets = 128;  // per power of two
  static constexpr int kPowers = 48;       // 1 us .. 2^48 us (9 years)

  void Record(double us);
  void Merge(const LatencyHistogram& other);

  int64_t count() const { return count_; }
  double max() const { return max_; }
  double min() const { return count_ ? min_ : 0; }
  double mean() const { return count_ ? sum_ / count_ : 0; }
  // The value below which `p` percent of the recorded values fall (the
  // midpoint of the bucket holding that rank); 0 when empty.
  double Percentile(double p) const;

 private:
  static int Index(double us);
  static double Lower(int index);
  static double Upper(int index);

  std::array<int64_t, kPowers * kSubBuckets> buckets_{};
  int64_t count_ = 0;
  double sum_ = 0;
  double max_ = 0;
  double min_ = 1e300;
};

}  // namespace client
}  // namespace attention

#endif  // CLIENT_HISTOGRAM_H_
