#include "server/receive_gate.h"

#include <algorithm>
#include <utility>

namespace attention {
namespace server {

// A ticket holds a slot when gate_ is set and id_ is 0; it waits when both
// are set (id_: its place in the queue).

void ReceiveGate::Ticket::Reset() {
  if (gate_ != nullptr) gate_->Leave(this);
}

bool ReceiveGate::Ticket::Cancel() { return gate_ != nullptr && gate_->Withdraw(this); }

void ReceiveGate::Enter(Ticket* ticket, std::function<void()> start) {
  if (slots_ <= 0) {
    start();
    return;
  }
  {
    absl::MutexLock lock(&mu_);
    ticket->gate_ = this;
    if (holding_ >= slots_ || !waiting_.empty()) {
      ticket->id_ = next_id_++;
      waiting_.push_back({ticket->id_, ticket, std::move(start)});
      return;
    }
    ++holding_;
    ticket->id_ = 0;
  }
  start();
}

void ReceiveGate::Leave(Ticket* ticket) {
  std::function<void()> start;
  {
    absl::MutexLock lock(&mu_);
    if (ticket->gate_ == nullptr) return;
    ticket->gate_ = nullptr;
    if (ticket->id_ != 0) {  // still waiting: leaves the queue
      const uint64_t id = std::exchange(ticket->id_, 0);
      waiting_.erase(std::remove_if(waiting_.begin(), waiting_.end(),
                                    [id](const Waiter& w) { return w.id == id; }),
                     waiting_.end());
      return;
    }
    if (waiting_.empty()) {
      --holding_;
      return;
    }
    // The slot passes to the first waiter.
    Waiter next = std::move(waiting_.front());
    waiting_.pop_front();
    next.ticket->id_ = 0;
    start = std::move(next.start);
  }
  start();
}

bool ReceiveGate::Withdraw(Ticket* ticket) {
  absl::MutexLock lock(&mu_);
  if (ticket->gate_ == nullptr || ticket->id_ == 0) return false;  // holds a slot, or left
  const uint64_t id = std::exchange(ticket->id_, 0);
  ticket->gate_ = nullptr;
  waiting_.erase(std::remove_if(waiting_.begin(), waiting_.end(),
                                [id](const Waiter& w) { return w.id == id; }),
                 waiting_.end());
  return true;
}

int ReceiveGate::holding() const {
  absl::MutexLock lock(&mu_);
  return holding_;
}

int ReceiveGate::waiting() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(waiting_.size());
}

}  // namespace server
}  // namespace attention
