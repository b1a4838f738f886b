#include "bench/timing.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

namespace attention {
namespace bench {

using Clock = std::chrono::steady_clock;

double g_gap_ms = 0;

Timing TimeIt(const std::function<bool()>& run, double min_time) {
  for (int i = 0; i < 2; ++i) {
    if (!run()) return {-1, -1, 0};
  }
  std::vector<double> ms;
  const auto start = Clock::now();
  while (ms.size() < 5 || std::chrono::duration<double>(Clock::now() - start).count() < min_time) {
    if (g_gap_ms > 0) {
      std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(g_gap_ms));
    }
    const auto t0 = Clock::now();
    if (!run()) return {-1, -1, 0};
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return {ms[ms.size() / 2], ms[std::min(ms.size() - 1, ms.size() * 9 / 10)],
          static_cast<int>(ms.size())};
}

// Peak resident memory of this process image (VmHWM; unlike getrusage's
// ru_maxrss it does not carry over the parent's peak across exec).
double PeakRssMb() {
  FILE* f = std::fopen("/proc/self/status", "r");
  if (f == nullptr) return -1;
  char line[256];
  double kb = -1;
  while (std::fgets(line, sizeof(line), f)) {
    if (std::sscanf(line, "VmHWM: %lf kB", &kb) == 1) break;
  }
  std::fclose(f);
  return kb / 1024.0;
}

Turns InTurns(const std::function<bool()>& a, const std::function<bool()>& b, double min_time,
              double block) {
  std::vector<double> ratios, b_ms;
  const auto start = Clock::now();
  while (ratios.size() < 5 ||
         std::chrono::duration<double>(Clock::now() - start).count() < min_time) {
    const double ta = TimeIt(a, block).median_ms;
    const double tb = TimeIt(b, block).median_ms;
    if (ta <= 0 || tb <= 0) return {};
    ratios.push_back(tb / ta);
    b_ms.push_back(tb);
  }
  std::sort(ratios.begin(), ratios.end());
  std::sort(b_ms.begin(), b_ms.end());
  return {ratios[ratios.size() / 2], ratios.front(), ratios.back(), static_cast<int>(ratios.size()),
          b_ms[b_ms.size() / 2]};
}

}  // namespace bench
}  // namespace attention
