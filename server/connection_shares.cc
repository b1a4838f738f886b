#include "server/connection_shares.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace attention {
namespace server {

ConnectionShares::Ticket::Ticket(Ticket&& other) noexcept
    : shares_(std::exchange(other.shares_, nullptr)), peer_(std::move(other.peer_)) {}

ConnectionShares::Ticket& ConnectionShares::Ticket::operator=(Ticket&& other) noexcept {
  if (this != &other) {
    Reset();
    shares_ = std::exchange(other.shares_, nullptr);
    peer_ = std::move(other.peer_);
  }
  return *this;
}

void ConnectionShares::Ticket::Reset() {
  if (shares_ != nullptr) std::exchange(shares_, nullptr)->Leave(peer_);
}

absl::Status ConnectionShares::Enter(const std::string& peer, bool busy, Ticket* ticket) {
  {
    absl::MutexLock lock(&mu_);
    int& held = held_[peer];
    if (busy && held >= share_) {
      return absl::ResourceExhaustedError(
          absl::StrCat("connection share: this connection already has ", held,
                       " requests in the server while the compute queue is busy (three quarters of "
                       "--max-queue); requests of other connections come first: retry later"));
    }
    ++held;
  }
  ticket->Reset();
  ticket->shares_ = this;
  ticket->peer_ = peer;
  return absl::OkStatus();
}

int ConnectionShares::held(const std::string& peer) const {
  absl::MutexLock lock(&mu_);
  const auto it = held_.find(peer);
  return it == held_.end() ? 0 : it->second;
}

void ConnectionShares::Leave(const std::string& peer) {
  absl::MutexLock lock(&mu_);
  const auto it = held_.find(peer);
  if (it != held_.end() && --it->second <= 0) held_.erase(it);
}

}  // namespace server
}  // namespace attention
