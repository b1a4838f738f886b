#include "client/load_drivers.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <functional>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/load_recorder.h"

namespace attention {
namespace client {
namespace {

using Clock = std::chrono::steady_clock;

double NowUs(Clock::time_point start) {
  return std::chrono::duration<double, std::micro>(Clock::now() - start).count();
}

// Prints a progress line every second until destroyed.
class Progress {
 public:
  Progress(Recorder& rec, const RunSettings& s, const std::string& label)
      : rec_(rec), enabled_(s.progress && isatty(2) && (s.duration > 3 || s.requests > 0)) {
    if (!enabled_) return;
    thread_ = std::thread([this, label] {
      const auto start = Clock::now();
      std::unique_lock<std::mutex> lock(mu_);
      while (!cv_.wait_for(lock, std::chrono::seconds(1), [this] { return stop_; })) {
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
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  Recorder& rec_;
  bool enabled_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

bool TimeUp(const RunSettings& s, Clock::time_point start, int64_t issued) {
  if (s.requests > 0) return issued >= s.requests;
  return std::chrono::duration<double>(Clock::now() - start).count() >= s.duration;
}

// N callers as chains of asynchronous calls: each call's completion (on a
// gRPC thread) records it and starts that caller's next one. Neither a thread
// per caller nor a wake-up between calls: the tool's own cost per call stays
// well below a small call's cost on the server.
void ClosedLoopUnary(const Workload& w, Channels& ch, const RunSettings& s, Recorder& rec) {
  const auto start = Clock::now();
  std::atomic<int64_t> issued{0};
  std::mutex mu;
  std::condition_variable cv;
  int callers = static_cast<int>(s.level);
  std::function<void()> next = [&] {
    const int64_t i = issued++;
    if (TimeUp(s, start, i)) {
      std::lock_guard<std::mutex> lock(mu);
      if (--callers == 0) cv.notify_all();
      return;
    }
    auto* call = new Call;
    call->index = static_cast<size_t>(i) % w.size();
    rec.Sent();
    call->sent_us = NowUs(start);
    StartCall(w, ch, call, s.timeout, [&, call](const grpc::Status& st) {
      rec.Done(st, ResponseOf(w, *call), call->index, {-1, call->sent_us, NowUs(start)});
      rec.Retried(call->retries);
      delete call;
      next();
    });
  };
  for (int t = static_cast<int>(s.level); t > 0; --t) next();
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return callers == 0; });
}

// A stream message sent and not yet answered.
struct Pending {
  std::string id;
  size_t index;
  double sent_us;
};

// Settles the messages a finished stream left unanswered: lost after an
// order/id `violation` (or when the stream ended OK without answering them),
// else with the stream's `final_status`. A violation with nothing pending was
// a response too many.
void SettleUnanswered(const std::deque<Pending>& pending, const std::string& violation,
                      const grpc::Status& final_status, Clock::time_point start, Recorder& rec) {
  if (!violation.empty() && pending.empty()) rec.Unexpected(violation);
  for (const Pending& p : pending) {
    if (!violation.empty()) {
      rec.Lost(violation);
    } else if (final_status.ok()) {
      rec.Lost("stream ended without answering message '" + p.id + "'");
    } else {
      rec.Done(final_status, nullptr, p.index, {-1, p.sent_us, NowUs(start)});
    }
  }
}

// One stream with up to in_flight messages outstanding; checks order and ids.
template <typename Request, typename Open>
void StreamWorker(const std::vector<Request>& pool, int worker, const RunSettings& s,
                  Clock::time_point start, std::atomic<int64_t>& issued, Recorder& rec, Open open) {
  grpc::ClientContext context;
  auto stream = open(&context);
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Pending> pending;
  bool reader_done = false;
  bool stalled = false;             // the oldest message waited longer than --timeout
  std::string violation;            // first order/id problem: the stream is abandoned
  std::vector<Request> mine(pool);  // ids are set per message
  // Cancels the stream when its oldest message has waited longer than --timeout
  // (a stalled server would otherwise block Write or Read for ever).
  std::thread watchdog([&] {
    std::unique_lock<std::mutex> lock(mu);
    while (!reader_done) {
      cv.wait_for(lock, std::chrono::milliseconds(50));
      if (!stalled && !pending.empty() &&
          NowUs(start) - pending.front().sent_us > s.timeout * 1e6) {
        stalled = true;
        context.TryCancel();
      }
    }
  });
  std::thread writer([&] {
    for (int64_t n = 0;; ++n) {
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock,
                [&] { return reader_done || static_cast<int>(pending.size()) < s.in_flight; });
        if (reader_done) break;
      }
      const int64_t i = issued++;
      if (TimeUp(s, start, i)) break;
      const size_t index = static_cast<size_t>(i) % mine.size();
      Request& r = mine[index];
      r.set_id(absl::StrCat(worker, ".", n));
      {
        std::lock_guard<std::mutex> lock(mu);
        pending.push_back({r.id(), index, NowUs(start)});
      }
      rec.Sent();
      if (!stream->Write(r)) break;
    }
    stream->WritesDone();
  });
  v1::AttentionResponse response;
  while (stream->Read(&response)) {
    Pending p;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (pending.empty() || pending.front().id != response.id()) {
        violation =
            absl::StrCat("stream response id '", response.id(), "' out of order (expected '",
                         pending.empty() ? "" : pending.front().id, "')");
        context.TryCancel();
        break;
      }
      p = pending.front();
      pending.pop_front();
    }
    cv.notify_all();
    rec.Done(grpc::Status::OK, &response, p.index, {-1, p.sent_us, NowUs(start)});
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    reader_done = true;
  }
  cv.notify_all();
  writer.join();
  watchdog.join();
  while (stream->Read(&response)) {
  }
  grpc::Status final_status = stream->Finish();
  if (stalled) {
    final_status = grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                                "no stream response within --timeout; stream cancelled");
  }
  std::lock_guard<std::mutex> lock(mu);
  SettleUnanswered(pending, violation, final_status, start, rec);
}

void ClosedLoopStreams(const Workload& w, Channels& ch, const RunSettings& s, Recorder& rec) {
  const auto start = Clock::now();
  std::atomic<int64_t> issued{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < static_cast<int>(s.level); ++t) {
    const size_t c = ch.Pick();
    workers.emplace_back([&, t, c] {
      // A stream that fails (its messages counted with its status) is replaced
      // by a new one until the level ends, so the concurrency holds.
      while (!TimeUp(s, start, issued.load())) {
        if (w.rpc == RpcKind::kAttention) {
          StreamWorker(w.attention, t, s, start, issued, rec,
                       [&](grpc::ClientContext* ctx) { return ch.stubs[c]->StreamAttention(ctx); });
        } else {
          StreamWorker(w.self, t, s, start, issued, rec, [&](grpc::ClientContext* ctx) {
            return ch.stubs[c]->StreamSelfAttention(ctx);
          });
        }
      }
    });
  }
  for (std::thread& t : workers) t.join();
}

void OpenLoop(const Workload& w, Channels& ch, const RunSettings& s, Recorder& rec) {
  const auto start = Clock::now();
  std::mt19937_64 rng(11);
  std::exponential_distribution<double> gap(s.level);
  std::mutex mu;
  std::condition_variable cv;
  int64_t outstanding = 0;
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
    auto* call = new Call;
    call->index = static_cast<size_t>(i) % w.size();
    call->scheduled_us = due_s * 1e6;
    call->sent_us = NowUs(start);
    rec.Sent({call->scheduled_us, call->sent_us});
    StartCall(w, ch, call, s.timeout, [&, call](const grpc::Status& st) {
      rec.Done(st, ResponseOf(w, *call), call->index,
               {call->scheduled_us, call->sent_us, NowUs(start)});
      rec.Retried(call->retries);
      delete call;
      std::lock_guard<std::mutex> lock(mu);
      --outstanding;
      cv.notify_all();
    });
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
    ClosedLoopStreams(w, ch, s, rec);
  } else {
    ClosedLoopUnary(w, ch, s, rec);
  }
  LoadResult r = rec.Snapshot();
  r.duration_s = std::chrono::duration<double>(Clock::now() - start).count();
  return r;
}

}  // namespace client
}  // namespace attention
