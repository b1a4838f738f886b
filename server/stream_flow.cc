#include "server/stream_flow.h"

#include <utility>

namespace attention {
namespace server {

StreamFlow::StreamFlow(int max_in_flight) : max_in_flight_(max_in_flight < 1 ? 1 : max_in_flight) {}

void StreamFlow::Begin() {
  absl::MutexLock lock(&mu_);
  ReadNext();
}

void StreamFlow::ReadDone(const std::shared_ptr<Slot>& slot) {
  mu_.Lock();  // FinishIfDone releases it
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

void StreamFlow::ReadNext() {
  if (reading_ || reads_done_ || cut_ || draining_) return;
  if (static_cast<int>(slots_.size()) >= max_in_flight_) return;
  reading_ = true;
  IssueRead();
}

void StreamFlow::WriteNext() {
  if (writing_ || cut_ || slots_.empty() || !slots_.front()->answered) return;
  writing_ = true;
  IssueWrite(*slots_.front());
}

void StreamFlow::FinishIfDone() {
  // A draining stream does not wait for the client's next message.
  if (finished_ || (reading_ && !draining_) || writing_ || computing_ > 0) {
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
  IssueFinish(cut);  // may delete this object: the lock is not taken back
}

}  // namespace server
}  // namespace attention
