#include "client/load_drivers.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/load_recorder.h"
#include "client/load_streams.h"

namespace attention {
namespace client {

using Clock = std::chrono::steady_clock;

double NowUs(Clock::time_point start) {
  return std::chrono::duration<double, std::micro>(Clock::now() - start).count();
}

bool TimeUp(const RunSettings& s, Clock::time_point start, int64_t issued) {
  if (s.requests > 0) return issued >= s.requests;
  return std::chrono::duration<double>(Clock::now() - start).count() >= s.duration;
}

namespace {

// Prints a progress line every second until destroyed.
class Progress {
 public:
  Progress(Recorder& rec, const RunSettings& s, const std::string& label)
      : rec_(rec), enabled_(s.progress && isatty(2) && (s.duration > 3 || s.requests > 0)) {
    if (!enabled_) return;
    thread_ = std::thread([this, label] {
      const auto start = Clock::now();
      absl::MutexLock lock(&mu_);
      while (!mu_.AwaitWithTimeout(absl::Condition(&stop_), absl::Seconds(1))) {
        const LoadResult r = rec_.Snapshot();
        const double t = std::chrono::duration<double>(Clock::now() - start).count();
        int64_t errors = 0;
        for (const auto& [code, n] : r.errors) errors += n;
        std::fprintf(stderr,
                     "\r%s  %5.1fs  sent %lld  ok %lld  errors %lld  %.1f req/s  p99 %.2f ms   ",
                     label.c_str(), t, static_cast<long long>(r.sent), static_cast<long long>(r.ok),
                     static_cast<long long>(errors), (r.ok + errors) / std::max(t, 1e-9),
                     r.latency.Percentile(99) / 1e3);
        std::fflush(stderr);
      }
      std::fprintf(stderr, "\r%*s\r", 100, "");
    });
  }
  ~Progress() {
    if (!enabled_) return;
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;  // wakes the thread's AwaitWithTimeout
    }
    thread_.join();
  }

 private:
  Recorder& rec_;
  bool enabled_;
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

// N callers on one thread: each call's completion records it and starts
// that caller's next one, on the thread that handles the completion queue.
// No thread per caller and no hop between threads per call: the tool's own
// cost per call stays well below a small call's cost on the server.
void ClosedLoopUnary(const Workload& w, Channels& ch, const RunSettings& s, Recorder& rec) {
  const auto start = Clock::now();
  int64_t issued = 0;  // this thread starts every call
  auto next = [&](UnaryCalls& calls, LoadCall* call) {
    const int64_t i = issued++;
    if (TimeUp(s, start, i)) return;  // this caller is done
    call->index = static_cast<size_t>(i) % w.size();
    rec.Sent();
    call->sent_us = NowUs(start);
    calls.Start(call);
  };
  UnaryCalls calls(w, ch, s.timeout, [&](UnaryCalls& running, LoadCall* call) {
    rec.DoneSerialized(call->status, ResponseOf(w, call), call->index,
                       {-1, call->sent_us, NowUs(start)});
    rec.Retried(call->retries);
    next(running, call);
  });
  std::vector<LoadCall> callers(static_cast<size_t>(s.level));
  for (LoadCall& call : callers) next(calls, &call);
  calls.RunUntilIdle();
}

// Sends on this thread as the schedule says; completions are handled on
// UnaryCalls's own thread.
void OpenLoop(const Workload& w, Channels& ch, const RunSettings& s, Recorder& rec) {
  const auto start = Clock::now();
  std::mt19937_64 rng(11);
  std::exponential_distribution<double> gap(s.level);
  std::mutex mu;
  std::condition_variable cv;
  int64_t outstanding = 0;
  UnaryCalls calls(w, ch, s.timeout, [&](UnaryCalls&, LoadCall* call) {
    rec.DoneSerialized(call->status, ResponseOf(w, call), call->index,
                       {call->scheduled_us, call->sent_us, NowUs(start)});
    rec.Retried(call->retries);
    delete call;
    std::lock_guard<std::mutex> lock(mu);
    --outstanding;
    cv.notify_all();
  });
  calls.RunInBackground();
  double due_s = 0;
  for (int64_t i = 0;; ++i) {
    if (s.requests > 0 ? i >= s.requests : due_s >= s.duration) break;
    const auto due =
        start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(due_s));
    std::this_thread::sleep_until(due);
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return outstanding < s.max_outstanding; });
      ++outstanding;
    }
    auto* call = new LoadCall;
    call->index = static_cast<size_t>(i) % w.size();
    call->scheduled_us = due_s * 1e6;
    call->sent_us = NowUs(start);
    rec.Sent({call->scheduled_us, call->sent_us});
    calls.Start(call);
    due_s += s.arrival == "poisson" ? gap(rng) : 1.0 / s.level;
  }
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return outstanding == 0; });
}

}  // namespace

LoadResult RunLevel(const Workload& w, Channels& ch, const RunSettings& s, double verify,
                    const std::string& label) {
  Recorder rec(w, verify);
  Progress progress(rec, s, label);
  const auto start = Clock::now();
  if (s.open_loop) {
    OpenLoop(w, ch, s, rec);
  } else if (s.stream) {
    RunStreams(w, ch, s, rec);
  } else {
    ClosedLoopUnary(w, ch, s, rec);
  }
  LoadResult r = rec.Snapshot();
  r.duration_s = std::chrono::duration<double>(Clock::now() - start).count();
  return r;
}

}  // namespace client
}  // namespace attention
