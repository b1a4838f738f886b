#include "server/receive_gate.h"

#include <algorithm>
#include <utility>
#include <vector>

namespace attention {
namespace server {

// A ticket's gate_ is set once, by Enter, before its call's reactions can
// run; under the gate's lock, `active_` says it waits (id_: its place in
// the queue) or holds a slot (id_ 0). Reset and Cancel may race (a call's
// OnCancel runs beside its other reactions): the lock orders them.

void ReceiveGate::Ticket::Reset() {
  if (gate_ != nullptr) gate_->Leave(this);
}

bool ReceiveGate::Ticket::Cancel() { return gate_ != nullptr && gate_->Withdraw(this); }

ReceiveGate::ReceiveGate(int slots, absl::Duration max_hold) : slots_(slots), max_hold_(max_hold) {
  if (slots_ > 0 && max_hold_ < absl::InfiniteDuration()) {
    watchdog_ = std::thread([this] { Watch(); });
  }
}

ReceiveGate::~ReceiveGate() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (watchdog_.joinable()) watchdog_.join();
}

void ReceiveGate::Enter(Ticket* ticket, std::function<void()> start, std::function<void()> expire) {
  if (slots_ <= 0) {
    start();
    return;
  }
  {
    absl::MutexLock lock(&mu_);
    ticket->gate_ = this;
    ticket->active_ = true;
    if (holding_ >= slots_ || !waiting_.empty()) {
      ticket->id_ = next_id_++;
      waiting_.emplace(ticket->id_,
                       Waiter{ticket->id_, ticket, std::move(start), std::move(expire)});
      return;
    }
    ++holding_;
    HoldLocked(ticket, std::move(expire));
  }
  start();
}

void ReceiveGate::HoldLocked(Ticket* ticket, std::function<void()> expire) {
  ticket->id_ = 0;
  holders_[ticket] = Holder{absl::Now(), std::move(expire)};
}

void ReceiveGate::Watch() {
  const absl::Duration period = std::min(absl::Seconds(1), max_hold_ / 4);
  absl::MutexLock lock(&mu_);
  while (!mu_.AwaitWithTimeout(absl::Condition(&stop_), period)) {
    if (waiting_.empty()) continue;
    const absl::Time now = absl::Now();
    std::vector<std::function<void()>> due;
    for (auto& [ticket, holder] : holders_) {
      if (holder.expire && now - holder.since >= max_hold_) {
        due.push_back(std::move(holder.expire));
        holder.expire = nullptr;
        ++expired_;
      }
    }
    // Outside the lock: cancelling a call may run its reactions (and their
    // Reset) on this thread.
    mu_.Unlock();
    for (auto& expire : due) expire();
    mu_.Lock();
  }
}

void ReceiveGate::Leave(Ticket* ticket) {
  std::function<void()> start;
  {
    absl::MutexLock lock(&mu_);
    if (!ticket->active_) return;
    ticket->active_ = false;
    if (ticket->id_ != 0) {  // still waiting: leaves the queue
      waiting_.erase(std::exchange(ticket->id_, 0));
      return;
    }
    holders_.erase(ticket);
    if (waiting_.empty()) {
      --holding_;
      return;
    }
    // The slot passes to the first waiter.
    Waiter next = std::move(waiting_.begin()->second);
    waiting_.erase(waiting_.begin());
    HoldLocked(next.ticket, std::move(next.expire));
    start = std::move(next.start);
  }
  start();
}

bool ReceiveGate::Withdraw(Ticket* ticket) {
  absl::MutexLock lock(&mu_);
  if (!ticket->active_ || ticket->id_ == 0) return false;  // holds a slot, or left
  ticket->active_ = false;
  waiting_.erase(std::exchange(ticket->id_, 0));
  return true;
}

int ReceiveGate::holding() const {
  absl::MutexLock lock(&mu_);
  return holding_;
}

int64_t ReceiveGate::expired() const {
  absl::MutexLock lock(&mu_);
  return expired_;
}

int ReceiveGate::waiting() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(waiting_.size());
}

}  // namespace server
}  // namespace attention
