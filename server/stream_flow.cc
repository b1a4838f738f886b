#include "server/stream_flow.h"

#include <utility>

namespace attention {
namespace server {

StreamFlow::StreamFlow(int max_in_flight, StreamReadGuard* guard)
    : max_in_flight_(max_in_flight < 1 ? 1 : max_in_flight), guard_(guard) {}

void StreamFlow::Begin() {
  absl::MutexLock lock(&mu_);
  ReadNext();
}

void StreamFlow::ReadDone(const std::shared_ptr<Slot>& slot, int64_t bytes) {
  if (guard_ != nullptr) guard_->ReadOver(this, bytes);  // before the lock: the guard may take it
  mu_.Lock();                                            // FinishIfDone releases it
  reading_ = false;
  if (slot == nullptr) reads_done_ = true;
  // Nobody hears an answer once a write failed or the client cancelled: the
  // message is not computed (a read can complete after the cancellation).
  if (slot != nullptr && !cut_ && !draining_ && !finished_) {
    slots_.push_back(slot);
    if (!slot->answered) {
      ++computing_;
      if (!IssueCompute(slot)) {
        --computing_;
        slot->answered = true;
      }
    }
    WriteNext();
    ReadNext();
  }
  FinishIfDone();
}

void StreamFlow::WriteDone(bool ok) {
  mu_.Lock();  // FinishIfDone releases it
  writing_ = false;
  slots_.pop_front();
  if (!ok) cut_ = true;
  WriteNext();
  ReadNext();
  FinishIfDone();
}

void StreamFlow::Computed(const std::shared_ptr<Slot>& slot, const grpc::ByteBuffer& response) {
  mu_.Lock();                 // FinishIfDone releases it
  slot->response = response;  // shares the slices
  slot->answered = true;
  --computing_;
  WriteNext();
  FinishIfDone();
}

void StreamFlow::Cancelled() {
  cut_ = true;
  mu_.Lock();  // FinishIfDone releases it
  FinishIfDone();
}

void StreamFlow::Drain() {
  draining_ = true;
  mu_.Lock();  // FinishIfDone releases it
  FinishIfDone();
}

void StreamFlow::StartDeferredRead() {
  absl::MutexLock lock(&mu_);
  read_deferred_ = false;
  // Not when the stream ends meanwhile (its finish then waits in Forget).
  const bool start = !finished_ && !cut_ && !draining_;
  if (!start) reading_ = false;
  guard_->Started(this, start);  // under the lock, as in EndWhileReading
  if (start) IssueRead();
}

void StreamFlow::EndWhileReading() {
  mu_.Lock();  // FinishIfDone releases it
  // A stream finishing already (its Forget waits for Ending) keeps its status.
  if (!finished_) {
    ended_by_guard_ = true;
    cut_ = true;
  }
  // Under the lock: the read's completion (waiting in ReadOver until now)
  // takes it after this, so the stream cannot finish and go meanwhile.
  guard_->Ending(this);
  FinishIfDone();
}

void StreamFlow::ReadNext() {
  if (reading_ || reads_done_ || cut_ || draining_) return;
  if (static_cast<int>(slots_.size()) >= max_in_flight_) return;
  reading_ = true;
  if (guard_ != nullptr && !guard_->Reading(this)) {
    read_deferred_ = true;  // StartDeferredRead issues it
    return;
  }
  IssueRead();
}

void StreamFlow::WriteNext() {
  if (writing_ || cut_ || slots_.empty() || !slots_.front()->answered) return;
  writing_ = true;
  IssueWrite(*slots_.front());
}

void StreamFlow::FinishIfDone() {
  // A draining stream, or one the read guard ended, does not wait for the
  // client's next message; nor does any for a read the guard has not started.
  const bool read_pending = reading_ && !read_deferred_;
  if (finished_ || (read_pending && !draining_ && !ended_by_guard_) || writing_ || computing_ > 0) {
    mu_.Unlock();
    return;
  }
  // A cut stream ends at once (the answers left are dropped: nobody hears
  // them); otherwise once the client's writes are done and every answer is out.
  const bool cut = cut_;
  if (!cut && ((!reads_done_ && !draining_) || !slots_.empty())) {
    mu_.Unlock();
    return;
  }
  finished_ = true;
  slots_.clear();
  mu_.Unlock();
  // The guard may be about to start or end this stream's read: it does so
  // (seeing finished_) before Forget returns.
  if (guard_ != nullptr) guard_->Forget(this);
  IssueFinish(cut);  // may delete this object: the lock is not taken back
}

grpc::Status EndedByGuard() {
  return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                      "memory budget: stream messages were arriving faster than the server "
                      "could take them into --max-memory-mb, and this stream was reading one; "
                      "it was ended (its unread message dropped): retry later, or send smaller "
                      "messages");
}

}  // namespace server
}  // namespace attention
