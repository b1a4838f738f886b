// Timing helpers of attention-bench: a warm median of repeated calls, two
// calls timed in turns (the ratio that holds on a noisy machine), and the
// process's peak resident memory.
//
//   Timing t = TimeIt([&] { return RunOnce(); }, /*min_time=*/1.0);
//   Turns r = InTurns(baseline, candidate, 3.0);  // r.median: candidate / baseline
#ifndef BENCH_TIMING_H_
#define BENCH_TIMING_H_

#include <functional>

namespace attention {
namespace bench {

struct Timing {
  double median_ms, p90_ms;
  int runs;
};

// Idle time before each timed call (--gap-ms): what a call costs on a
// process that had nothing to do for a while. Set once, before timing.
extern double g_gap_ms;

// Two warm-up calls, then calls of `run` for at least `min_time` seconds and
// 5 calls: their median and p90. {-1, -1, 0} when a call returns false.
Timing TimeIt(const std::function<bool()>& run, double min_time);

// Blocks of calls of `a` and `b` in turns (each a TimeIt over `block`
// seconds: warm, as in a loop of one kind) for at least min_time: the median
// over the turns of b's time / a's, the smallest and largest, and b's median
// time. A machine that speeds up or slows down moves both sides of a turn.
// All zero when a call fails.
struct Turns {
  double median = 0, low = 0, high = 0;
  int turns = 0;
  double b_ms = 0;
};
Turns InTurns(const std::function<bool()>& a, const std::function<bool()>& b, double min_time,
              double block = 0.25);

// Peak resident memory of this process image, MiB (VmHWM; unlike getrusage's
// ru_maxrss it does not carry over the parent's peak across exec); -1 when
// unknown.
double PeakRssMb();

}  // namespace bench
}  // namespace attention

#endif  // BENCH_TIMING_H_
