#include "server/stream_flow.h"

#include <utility>

namespace attention {
namespace server {

StreamFlow::StreamFlow(int max_in_flight) : max_in_flight_(max_in_flight < 1 ? 1 : max_in_flight) {}

void StreamFlow::Begin() {
  std::unique_lock<std::mutex> lock(mu_);
  ReadNext();
}

void StreamFlow::ReadDone(std::shared_ptr<Slot> slot) {
  std::unique_lock<std::mutex> lock(mu_);
  reading_ = false;
  if (slot == nullptr) reads_done_ = true;
  // Nobody hears an answer once a write failed or the client cancelled: the
  // message is not computed (a read can complete after the cancellation).
  if (slot != nullptr && !cut_) {
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
  FinishIfDone(lock);
}

void StreamFlow::WriteDone(bool ok) {
  std::unique_lock<std::mutex> lock(mu_);
  writing_ = false;
  slots_.pop_front();
  if (!ok) cut_ = true;
  WriteNext();
  ReadNext();
  FinishIfDone(lock);
}

void StreamFlow::Computed(const std::shared_ptr<Slot>& slot, grpc::ByteBuffer response) {
  std::unique_lock<std::mutex> lock(mu_);
  slot->response = std::move(response);
  slot->answered = true;
  --computing_;
  WriteNext();
  FinishIfDone(lock);
}

void StreamFlow::Cancelled() {
  cut_ = true;
  std::unique_lock<std::mutex> lock(mu_);
  FinishIfDone(lock);
}

void StreamFlow::ReadNext() {
  if (reading_ || reads_done_ || cut_) return;
  if (static_cast<int>(slots_.size()) >= max_in_flight_) return;
  reading_ = true;
  IssueRead();
}

void StreamFlow::WriteNext() {
  if (writing_ || cut_ || slots_.empty() || !slots_.front()->answered) return;
  writing_ = true;
  IssueWrite(*slots_.front());
}

void StreamFlow::FinishIfDone(std::unique_lock<std::mutex>& lock) {
  if (finished_ || reading_ || writing_ || computing_ > 0) return;
  // A cut stream ends at once (the answers left are dropped: nobody hears
  // them); otherwise once the client's writes are done and every answer is out.
  const bool cut = cut_;
  if (!cut && (!reads_done_ || !slots_.empty())) return;
  finished_ = true;
  slots_.clear();
  lock.unlock();
  IssueFinish(cut);
}

}  // namespace server
}  // namespace attention
