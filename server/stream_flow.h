// The bookkeeping of one bidirectional stream of independent requests, apart
// from gRPC so that every order of its events can be tested. gRPC reports
// reads, writes and the client's cancellation from its threads, the executor
// reports computations from its own, in any order (a read may even complete
// with a message after the cancellation). Whatever the order, the flow
//   - has at most one read and one write pending (gRPC's rule),
//   - holds at most `max_in_flight` messages between read and written, so a
//     client that stops reading stops the server reading too,
//   - answers every message it read, in the order read, while the client
//     listens (once a write fails or the client cancelled, nobody hears more:
//     nothing more is computed),
//   - finishes exactly once, as soon as no read, write or computation is
//     pending (a computation refers to the stream until it reports back).
//
// A reactor derives from it and supplies the actions:
//
//   class Reactor : public grpc::ServerBidiReactor<B, B>, private StreamFlow {
//     void OnReadDone(bool ok) override { ReadDone(ok ? ParseIntoASlot() : nullptr); }
//     void IssueRead() override { StartRead(&incoming_); }
//     ...
//   };
//
// Thread-safe: events may come from any thread. The Issue* actions run with
// the flow's lock held (they must only start work, never wait for it), except
// IssueFinish, which runs without it and may delete the object.
#ifndef SERVER_STREAM_FLOW_H_
#define SERVER_STREAM_FLOW_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/status.h"
#include "server/stream_read_guard.h"

namespace attention {
namespace server {

// What an open stream holds of its own (gRPC's call and HTTP/2 stream, the
// reactor): 17 KB measured (tests/hardening_test.cc). Counted as freed when
// it closes, so that the memory of many closed streams goes back to the
// system (the budget trims after large releases).
inline constexpr int64_t kStreamStateBytes = 16 << 10;

class StreamFlow : private StreamReadGuard::Reader {
 public:
  // One message between read and written. A reactor derives its own (with
  // the parsed request) and fills `response` when the message is answered.
  struct Slot {
    virtual ~Slot() = default;
    grpc::ByteBuffer response;  // an encoded response once answered
    bool answered = false;      // guarded by the flow's lock once the flow has the slot
  };

  // `guard` (may be null; must outlive the flow) sees each read: it may
  // defer it, and end the stream while it is pending
  // (server/stream_read_guard.h).
  explicit StreamFlow(int max_in_flight, StreamReadGuard* guard = nullptr);
  virtual ~StreamFlow() = default;
  StreamFlow(const StreamFlow&) = delete;
  StreamFlow& operator=(const StreamFlow&) = delete;

  // Events.
  // The stream opened: starts the first read.
  void Begin();
  // The pending read completed (`bytes`: its message's size on the wire, for
  // the guard). `slot` is the message read (ok); null when
  // the read failed (the client's writes are done, or the call is over). A
  // slot already answered (say, with a parse error) is written as it is;
  // otherwise it is computed (IssueCompute).
  void ReadDone(const std::shared_ptr<Slot>& slot, int64_t bytes = 0);
  // The pending write completed; `ok` false when the client is gone.
  void WriteDone(bool ok);
  // The computation of `slot` ended with `response`.
  void Computed(const std::shared_ptr<Slot>& slot, const grpc::ByteBuffer& response);
  // The client cancelled (or the deadline passed).
  void Cancelled();
  // The server drains: no more messages are read; once every message read
  // is answered and written, the stream finishes (even with a read pending:
  // a message that arrives then is not computed), IssueFinish seeing
  // draining() true.
  void Drain();

  // True once nobody will hear more (the client cancelled or a write
  // failed): computations poll it and stop early.
  const std::atomic<bool>* cut() const { return &cut_; }
  bool draining() const { return draining_; }
  // True once the read guard ended the stream (IssueFinish then finishes it
  // with RESOURCE_EXHAUSTED: EndedByGuard()).
  bool ended_by_guard() const { return ended_by_guard_; }

 protected:
  // Actions.
  // Starts a read whose completion is reported with ReadDone.
  virtual void IssueRead() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) = 0;
  // Starts writing slot.response; completion is reported with WriteDone.
  virtual void IssueWrite(const Slot& slot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) = 0;
  // Queues the computation of `slot`, which reports back with Computed.
  // Returns false, with slot->response set to the error, when it cannot be
  // queued; the slot is then answered.
  virtual bool IssueCompute(const std::shared_ptr<Slot>& slot)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) = 0;
  // Ends the stream (once); `cancelled` when the client did not hear the
  // end. Runs without the lock; may delete this object.
  virtual void IssueFinish(bool cancelled) ABSL_LOCKS_EXCLUDED(mu_) = 0;

 private:
  // StreamReadGuard::Reader: the guard starts a read it deferred; it ends
  // the stream though a read is pending (it is cut, and finishes without
  // waiting for the read).
  void StartDeferredRead() override;
  void EndWhileReading() override;
  void ReadNext() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WriteNext() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Called last by every event, with the lock held: releases it, then
  // finishes when the stream is done (IssueFinish, which may delete this
  // object, so nothing touches it after). It cannot take the lock back.
  void FinishIfDone() ABSL_UNLOCK_FUNCTION(mu_);

  const int max_in_flight_;
  StreamReadGuard* const guard_;
  absl::Mutex mu_;
  // Read, not yet written, in order.
  std::deque<std::shared_ptr<Slot>> slots_ ABSL_GUARDED_BY(mu_);
  int computing_ ABSL_GUARDED_BY(mu_) = 0;
  bool reading_ ABSL_GUARDED_BY(mu_) = false;
  bool read_deferred_ ABSL_GUARDED_BY(mu_) = false;  // reading_, not started: the guard's
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  // Once a write failed or the client cancelled nobody hears more: nothing
  // more is read, computed or written.
  std::atomic<bool> cut_{false};
  std::atomic<bool> draining_{false};
  std::atomic<bool> ended_by_guard_{false};
};

// The status of a stream the read guard ended.
grpc::Status EndedByGuard();

}  // namespace server
}  // namespace attention

#endif  // SERVER_STREAM_FLOW_H_
