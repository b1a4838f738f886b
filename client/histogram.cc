#include "client/histogram.h"

#include <algorithm>
#include <cmath>

namespace attention {
namespace client {

// Values below 1 us share the first power (linear 0..1 us in 1/128 steps).
int LatencyHistogram::Index(double us) {
  if (!(us > 0)) return 0;
  if (us < 1) return static_cast<int>(us * kSubBuckets);
  int exp;
  const double frac = std::frexp(us, &exp);      // us = frac * 2^exp, frac in [0.5, 1)
  const int power = std::min(exp, kPowers - 1);  // 1 <= us < 2 has exp 1
  if (exp > power) return kPowers * kSubBuckets - 1;
  const int sub = static_cast<int>((frac * 2 - 1) * kSubBuckets);
  return power * kSubBuckets + std::min(sub, kSubBuckets - 1);
}

double LatencyHistogram::Lower(int index) {
  const int power = index / kSubBuckets, sub = index % kSubBuckets;
  if (power == 0) return static_cast<double>(sub) / kSubBuckets;
  return std::ldexp(1.0 + static_cast<double>(sub) / kSubBuckets, power - 1);
}

double LatencyHistogram::Upper(int index) {
  const int power = index / kSubBuckets, sub = index % kSubBuckets;
  if (power == 0) return static_cast<double>(sub + 1) / kSubBuckets;
  return std::ldexp(1.0 + static_cast<double>(sub + 1) / kSubBuckets, power - 1);
}

void LatencyHistogram::Record(double us) {
  ++buckets_[Index(us)];
  ++count_;
  sum_ += us;
  max_ = std::max(max_, us);
  min_ = std::min(min_, us);
}

void LatencyHistogram::Merge(const LatencyHistogram& o) {
  for (size_t i = 0; i < buckets_.size(); ++i) buckets_[i] += o.buckets_[i];
  count_ += o.count_;
  sum_ += o.sum_;
  max_ = std::max(max_, o.max_);
  min_ = std::min(min_, o.min_);
}

double LatencyHistogram::Percentile(double p) const {
  if (count_ == 0) return 0;
  // The rank of the value, 1-based, as "nearest rank" percentiles define it.
  const int64_t rank = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(p / 100.0 * count_)));
  int64_t seen = 0;
  for (size_t i = 0; i < buckets_.size(); ++i) {
    seen += buckets_[i];
    if (seen >= rank) {
      const double mid = (Lower(static_cast<int>(i)) + Upper(static_cast<int>(i))) / 2;
      return std::min(std::max(mid, min()), max_);
    }
  }
  return max_;
}

}  // namespace client
}  // namespace attention
