// The bound on stream messages on their way in. A unary upload is read only
// with a slot of the receive gate (server/receive_gate.h), so the uploads
// being received never exceed their part (three quarters) of the transport's
// share of --max-memory-mb. A stream cannot be gated that way: gRPC 1.51 keeps
// a stream's next message coming only while a read is pending, a pending read
// cannot be withdrawn, and an idle stream (a decode session between turns,
// say) must keep one, so a slot per pending read would let idle streams shut
// everyone out. Measured without this guard: 48 streams each sending a 50 MiB
// message at once over 4 connections took a 614 MiB-budget server to 1 GiB
// resident (gRPC's resource quota cut 93 of the 96 messages, too late), and
// the container with a 1 GiB limit was killed.
//
// So the guard watches what the server holds that nothing accounts for
// (`untracked`: the live heap less the budget's reservations and the fixed
// part, sampled every `period`; server.cc says how) against the transport's
// share (`allowance`), and
//   - below three quarters of it (the uploads' part), starts every read at
//     once (nothing to see: the normal case);
//   - from there, defers the reads streams start (backpressure: their
//     clients' next messages wait in the clients, as a gated upload's do) and
//     starts them in the order they came, as many at a time as the room left
//     takes messages of the largest size seen lately (the receive limit when
//     none was read lately); one every `settle`
//     while the room is used up, so that streams slow down and never stall;
//   - over the allowance (reads already pending took more than the room),
//     ends streams whose read is pending, the most recently begun first (a
//     stream idle for long is the least likely to be sending), half of them
//     at a time but never the oldest (so one message at a time still gets
//     through), then gives those left `settle` to finish their messages
//     (which then move into the budget) before ending more, unless the
//     overshoot passes half the allowance. An ended stream's client gets
//     RESOURCE_EXHAUSTED and its unread bytes are dropped by the transport.
//
// The stream's side (StreamFlow):
//   ReadNext:   if (guard.Reading(this)) StartRead(); else wait for StartDeferredRead
//   OnReadDone: guard.ReadOver(this, bytes) first (before the flow's lock)
//   StartDeferredRead / EndWhileReading: under the flow's lock, guard.Started /
//               guard.Ending before anything that could let the stream finish
//   finishing:  guard.Forget(this) after the flow's lock, before Finish
//
// Thread-safe. Readers are started and ended on the watchdog's thread, with
// no lock of the guard held.
#ifndef SERVER_STREAM_READ_GUARD_H_
#define SERVER_STREAM_READ_GUARD_H_

#include <cstdint>
#include <functional>
#include <map>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace attention {
namespace server {

class StreamReadGuard {
 public:
  // A stream as the guard sees it (StreamFlow).
  class Reader {
   public:
    virtual ~Reader() = default;
    // Starts the read Reading deferred (or not, when the stream is over
    // meanwhile). Must call Started(this, started) under the stream's lock.
    virtual void StartDeferredRead() = 0;
    // Ends the stream (RESOURCE_EXHAUSTED) though its read is pending. Must
    // call Ending(this) once the stream's completion of the read can no
    // longer overtake it (under the stream's lock).
    virtual void EndWhileReading() = 0;
  };

  struct Options {
    // The transport's share: what `untracked` may reach before streams are
    // ended; 0: no guard (every read starts at once, no watchdog).
    int64_t allowance_bytes = 0;
    // The server's memory no reservation accounts for (bytes; may be < 0).
    std::function<int64_t()> untracked;
    // The largest message a read may bring (the receive limit): the size
    // assumed of deferred reads' messages until messages have been read.
    int64_t max_message_bytes = 0;
    absl::Duration period = absl::Milliseconds(5);
    absl::Duration settle = absl::Milliseconds(100);
  };

  explicit StreamReadGuard(Options options);
  ~StreamReadGuard();
  StreamReadGuard(const StreamReadGuard&) = delete;
  StreamReadGuard& operator=(const StreamReadGuard&) = delete;

  // `reader` starts a read: true when it may start it now; false when it is
  // deferred (StartDeferredRead comes later, unless it is forgotten first).
  bool Reading(Reader* reader) ABSL_LOCKS_EXCLUDED(mu_);
  // Its read completed with a message of `bytes` (0: none); returns once the
  // guard is not about to end it.
  void ReadOver(Reader* reader, int64_t bytes) ABSL_LOCKS_EXCLUDED(mu_);
  // StartDeferredRead's and EndWhileReading's steps.
  void Started(Reader* reader, bool started) ABSL_LOCKS_EXCLUDED(mu_);
  void Ending(Reader* reader) ABSL_LOCKS_EXCLUDED(mu_);
  // The stream finishes: returns once the guard is not about to start or end
  // it, and no longer knows it.
  void Forget(Reader* reader) ABSL_LOCKS_EXCLUDED(mu_);

  // One check now (the watchdog's step; tests call it with no watchdog).
  void Check() ABSL_LOCKS_EXCLUDED(mu_, check_mu_);

  int pending() const ABSL_LOCKS_EXCLUDED(mu_);    // reads pending or deferred
  int deferred() const ABSL_LOCKS_EXCLUDED(mu_);   // reads deferred
  int64_t ended() const ABSL_LOCKS_EXCLUDED(mu_);  // streams ended so far

 private:
  enum class State { kDeferred, kStarting, kReading, kClaimed, kEnding };
  struct Entry {
    uint64_t order;  // when its read was asked for (larger: later)
    State state;
    absl::Time started;  // when the guard started it after a deferral
  };
  // Up to `n` deferred reads to start now (marked kStarting), oldest first.
  std::vector<Reader*> TakeDeferredLocked(int64_t n, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Pending reads to end now (marked kClaimed).
  std::vector<Reader*> TakeVictimsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The size to assume of a deferred read's message: the largest read in the
  // last second or two (at least 64 KiB), or, when none was read,
  // max_message_bytes.
  int64_t LargestLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Watch() ABSL_LOCKS_EXCLUDED(mu_);

  const Options options_;
  const int64_t press_bytes_;  // three quarters of the allowance
  mutable absl::Mutex mu_;
  std::map<Reader*, Entry> readers_ ABSL_GUARDED_BY(mu_);
  uint64_t next_order_ ABSL_GUARDED_BY(mu_) = 0;
  int deferred_ ABSL_GUARDED_BY(mu_) = 0;  // entries kDeferred
  bool pressed_ ABSL_GUARDED_BY(mu_) = false;
  int64_t ended_ ABSL_GUARDED_BY(mu_) = 0;
  // The largest message read in this second and the one before.
  int64_t largest_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t largest_before_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time largest_since_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  absl::Mutex check_mu_;  // one Check at a time
  absl::Time last_end_ ABSL_GUARDED_BY(check_mu_) = absl::InfinitePast();
  absl::Time last_start_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();  // of a deferred read
  std::thread watchdog_;                                               // with an allowance
};

}  // namespace server
}  // namespace attention

#endif  // SERVER_STREAM_READ_GUARD_H_
