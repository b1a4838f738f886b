// attention-client load: the drivers, which send a level's requests and
// settle each in a Recorder.
//
// - Closed loop, unary (--concurrency N): N callers, each sending its next
//   request when the previous one is answered.
// - Closed loop, streams (--stream): N bidirectional streams, each keeping
//   --in-flight messages outstanding (load_streams.h).
// - Open loop (--rate R): requests are due at fixed (constant) or random
//   (poisson) times and sent asynchronously, not when earlier ones finish;
//   at most --max-outstanding unanswered (a full window delays sends, which
//   shows as behind schedule).
//
//   RunSettings s;
//   s.level = 4;                                  // 4 callers
//   LoadResult r = RunLevel(workload, channels, s, /*verify=*/10, "concurrency 4");
#ifndef CLIENT_LOAD_DRIVERS_H_
#define CLIENT_LOAD_DRIVERS_H_

#include <chrono>
#include <cstdint>
#include <string>

#include "client/load_calls.h"
#include "client/load_report.h"
#include "client/load_workload.h"

namespace attention {
namespace client {

// How one level runs (from the flags of `attention-client load`).
struct RunSettings {
  bool open_loop = false;
  double level = 1;                  // concurrency (a positive integer) or rate (req/s)
  std::string arrival = "constant";  // open loop: "constant" or "poisson"
  double duration = 10;              // seconds, when requests == 0
  int64_t requests = 0;              // requests in the level; 0 = by duration
  bool stream = false;               // closed loop over streams
  int in_flight = 4;                 // messages outstanding per stream
  int64_t max_outstanding = 1000;    // open loop
  double timeout = 30;               // seconds per call (per stream message)
  bool progress = true;              // a progress line on a terminal
};

// Microseconds from `start` (when a level began: the times a Recorder gets)
// to now.
double NowUs(std::chrono::steady_clock::time_point start);

// Whether a level that began at `start` is over before its request number
// `issued` (counted from 0): s.requests sent, or s.duration gone by.
bool TimeUp(const RunSettings& s, std::chrono::steady_clock::time_point start, int64_t issued);

// Runs one level of `w` over `ch` and returns its figures (every request
// sent settled; duration_s the level's wall time). Checks `verify` percent
// of the OK responses. `label` names the level on the progress line (shown
// on a terminal for levels longer than 3 s or counted in requests). Blocks
// until every request is settled.
LoadResult RunLevel(const Workload& w, Channels& ch, const RunSettings& s, double verify,
                    const std::string& label);

}  // namespace client
}  // namespace attention

#endif  // CLIENT_LOAD_DRIVERS_H_
