// Backpressure for uploads: how many unary requests the server receives at
// once. gRPC 1.51 reads a unary request before the service is called, and
// opens HTTP/2 flow control for the whole message as soon as it has read
// the message's length: 48 uploads of 50 MiB were received side by side, far
// past the transport's share of --max-memory-mb, and gRPC's resource quota
// (which reclaims after the fact) cut 95% of them mid-upload while the
// process was OOM-killed. The unary methods are therefore served as
// streams at the transport (AttentionServiceImpl's constructor), so that the
// service decides when a request's bytes are read: a read starts only with a
// slot of this gate. A slot stands for the worst case, the largest request
// the server receives, so `slots` = the transport's share / that size (at
// least 1), and the requests being received never hold more than that share.
// A call waiting for a slot holds an HTTP/2 stream and the client's first
// flow-control window (64 KiB) at most; the client sees a slower upload, not
// an error. Slots are granted in arrival order.
//
// A slot is held while the request's bytes arrive. So that one client cannot
// hold the slots by starting requests it never finishes sending, a read that
// has held its slot for `max_hold` while others wait is expired: its
// `expire` callback runs (once, on the gate's watchdog thread, with no lock
// held) and cancels the call, whose Reset then frees the slot.
//
//   ReceiveGate gate(4);
//   gate.Enter(&ticket, [reactor] { reactor->StartRead(&buffer); });
//   ... OnReadDone: admitted into the memory budget, then ticket.Reset() ...
//   ... OnCancel: if (ticket.Cancel()) Finish(CANCELLED)  // never started
//
// Thread-safe. `start` runs on the thread that entered (a slot was free) or
// on the thread whose Reset freed one, outside the gate's lock.
#ifndef SERVER_RECEIVE_GATE_H_
#define SERVER_RECEIVE_GATE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace attention {
namespace server {

class ReceiveGate {
 public:
  // One call's place: waiting for a slot, holding one, or neither. Gives a
  // held slot back when destroyed. Not thread-safe itself (one call's).
  class Ticket {
   public:
    Ticket() = default;
    ~Ticket() { Reset(); }
    Ticket(const Ticket&) = delete;
    Ticket& operator=(const Ticket&) = delete;

    // Gives the slot back (waking the next waiter), or leaves the queue.
    void Reset();
    // Leaves the queue if still waiting: true when `start` will never run.
    bool Cancel();

   private:
    friend class ReceiveGate;
    ReceiveGate* gate_ = nullptr;  // set once, by Enter
    // Under the gate's lock:
    bool active_ = false;  // waiting or holding
    uint64_t id_ = 0;      // waiting: its place; holding: 0
  };

  // `slots` >= 1 reads at once; 0: no gate (every read starts at once).
  // `max_hold`: see the overview (infinite: never expired).
  explicit ReceiveGate(int slots, absl::Duration max_hold = absl::InfiniteDuration());
  ~ReceiveGate();
  ReceiveGate(const ReceiveGate&) = delete;
  ReceiveGate& operator=(const ReceiveGate&) = delete;

  // Runs `start` once a slot is the ticket's (now, or later from a Reset);
  // `expire` (may be empty) if it then holds the slot too long. `ticket`
  // must be unused and outlive the wait. `expire` may run after the ticket
  // is gone: it must not refer to it.
  void Enter(Ticket* ticket, std::function<void()> start, std::function<void()> expire = nullptr)
      ABSL_LOCKS_EXCLUDED(mu_);

  int slots() const { return slots_; }
  int holding() const ABSL_LOCKS_EXCLUDED(mu_);
  int waiting() const ABSL_LOCKS_EXCLUDED(mu_);
  // Reads expired since the gate was made.
  int64_t expired() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Waiter {
    uint64_t id;
    Ticket* ticket;
    std::function<void()> start;
    std::function<void()> expire;
  };
  struct Holder {
    absl::Time since;
    std::function<void()> expire;  // emptied once run
  };
  // Ticket's halves.
  void Leave(Ticket* ticket) ABSL_LOCKS_EXCLUDED(mu_);
  bool Withdraw(Ticket* ticket) ABSL_LOCKS_EXCLUDED(mu_);
  // `ticket` takes a slot.
  void HoldLocked(Ticket* ticket, std::function<void()> expire) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Watch() ABSL_LOCKS_EXCLUDED(mu_);

  const int slots_;
  const absl::Duration max_hold_;
  mutable absl::Mutex mu_;
  int holding_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  // By id, in the order they came; a cancelled waiter leaves in O(log n)
  // (a scan of the queue for each of a rapid reset's cancellations would be
  // quadratic, under the lock every upload needs).
  std::map<uint64_t, Waiter> waiting_ ABSL_GUARDED_BY(mu_);
  std::map<const Ticket*, Holder> holders_ ABSL_GUARDED_BY(mu_);
  int64_t expired_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread watchdog_;  // with a finite max_hold
};

}  // namespace server
}  // namespace attention

#endif  // SERVER_RECEIVE_GATE_H_
