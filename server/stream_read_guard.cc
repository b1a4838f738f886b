#include "server/stream_read_guard.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/time/clock.h"

namespace attention {
namespace server {

StreamReadGuard::StreamReadGuard(Options options)
    : options_(std::move(options)), press_bytes_(options_.allowance_bytes / 4 * 3) {
  if (options_.allowance_bytes > 0 && options_.untracked) {
    watchdog_ = std::thread([this] { Watch(); });
  }
}

StreamReadGuard::~StreamReadGuard() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (watchdog_.joinable()) watchdog_.join();
}

bool StreamReadGuard::Reading(Reader* reader) {
  absl::MutexLock lock(&mu_);
  // Deferred while the room is used up, and behind reads deferred before.
  const bool defer = pressed_ || deferred_ > 0;
  readers_[reader] =
      Entry{next_order_++, defer ? State::kDeferred : State::kReading, absl::InfinitePast()};
  if (defer) ++deferred_;
  return !defer;
}

void StreamReadGuard::ReadOver(Reader* reader, int64_t bytes) {
  absl::MutexLock lock(&mu_);
  // While the watchdog has chosen it and is about to call EndWhileReading, the
  // reader must stay alive: it waits until EndWhileReading has begun.
  auto not_claimed = [this, reader]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = readers_.find(reader);
    return it == readers_.end() || it->second.state != State::kClaimed;
  };
  mu_.Await(absl::Condition(&not_claimed));
  readers_.erase(reader);
  largest_ = std::max(largest_, bytes);
}

void StreamReadGuard::Started(Reader* reader, bool started) {
  absl::MutexLock lock(&mu_);
  auto it = readers_.find(reader);
  if (it == readers_.end()) return;
  if (started) {
    it->second.state = State::kReading;
  } else {
    readers_.erase(it);
  }
}

void StreamReadGuard::Ending(Reader* reader) {
  absl::MutexLock lock(&mu_);
  auto it = readers_.find(reader);
  if (it != readers_.end()) it->second.state = State::kEnding;
}

void StreamReadGuard::Forget(Reader* reader) {
  absl::MutexLock lock(&mu_);
  // The watchdog may be about to start or end it: wait until it has begun.
  auto not_chosen = [this, reader]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = readers_.find(reader);
    return it == readers_.end() ||
           (it->second.state != State::kClaimed && it->second.state != State::kStarting);
  };
  mu_.Await(absl::Condition(&not_chosen));
  auto it = readers_.find(reader);
  if (it == readers_.end()) return;
  if (it->second.state == State::kDeferred) --deferred_;
  readers_.erase(it);
}

void StreamReadGuard::Check() {
  if (!options_.untracked) return;
  absl::MutexLock check(&check_mu_);
  {
    // No stream reading: nothing to defer or end (and sampling costs about
    // 10 us, 200 times a second). The next read asks with the last sample's
    // answer; the check after it samples again.
    absl::MutexLock lock(&mu_);
    if (readers_.empty()) return;
  }
  const int64_t allowance = options_.allowance_bytes;
  const int64_t untracked = options_.untracked();
  const absl::Time now = absl::Now();
  const bool over = untracked > allowance;
  // Streams just ended free their bytes once the transport has closed them,
  // and those left go on receiving: give them `settle` to finish (their
  // messages then move into the budget), unless half the allowance more is
  // already in transit.
  const bool end =
      over && (untracked > allowance + allowance / 2 || now - last_end_ >= options_.settle);
  std::vector<Reader*> starts, victims;
  {
    absl::MutexLock lock(&mu_);
    if (now - largest_since_ >= absl::Seconds(1)) {
      largest_before_ = largest_;
      largest_ = 0;
      largest_since_ = now;
    }
    pressed_ = untracked >= press_bytes_;
    if (deferred_ > 0 && !over) {
      // The room left, less the messages of the reads started lately whose
      // bytes may not show yet, in messages of the largest size seen lately;
      // one a `settle` when there is none.
      const int64_t unit = LargestLocked();
      int64_t room = press_bytes_ - untracked;
      for (const auto& [reader, entry] : readers_) {
        if (entry.state == State::kReading && now - entry.started < options_.settle) room -= unit;
      }
      int64_t n = std::max<int64_t>(0, room / unit);
      if (n == 0 && now - last_start_ >= options_.settle) n = 1;
      if (n > 0) starts = TakeDeferredLocked(n, now);
      if (!starts.empty()) last_start_ = now;
    }
    if (end) victims = TakeVictimsLocked();
  }
  if (!victims.empty()) last_end_ = now;
  // A chosen reader stays alive until it has called Started / Ending (its
  // ReadOver and Forget wait for that), and both may run the stream's
  // reactions on this thread: no lock of the guard is held here.
  for (Reader* reader : starts) reader->StartDeferredRead();
  for (Reader* reader : victims) reader->EndWhileReading();
}

std::vector<StreamReadGuard::Reader*> StreamReadGuard::TakeDeferredLocked(int64_t n,
                                                                          absl::Time now) {
  std::vector<std::pair<uint64_t, Reader*>> deferred;
  for (const auto& [reader, entry] : readers_) {
    if (entry.state == State::kDeferred) deferred.emplace_back(entry.order, reader);
  }
  std::sort(deferred.begin(), deferred.end());  // in the order they came
  if (static_cast<int64_t>(deferred.size()) > n) deferred.resize(static_cast<size_t>(n));
  std::vector<Reader*> taken;
  for (const auto& [order, reader] : deferred) {
    Entry& entry = readers_[reader];
    entry.state = State::kStarting;
    entry.started = now;
    --deferred_;
    taken.push_back(reader);
  }
  return taken;
}

std::vector<StreamReadGuard::Reader*> StreamReadGuard::TakeVictimsLocked() {
  std::vector<std::pair<uint64_t, Reader*>> reading;
  for (const auto& [reader, entry] : readers_) {
    if (entry.state == State::kReading) reading.emplace_back(entry.order, reader);
  }
  // The most recently begun reads first, half of them (at least one); never
  // the oldest, which then goes on as an upload holding a slot does (one
  // message is at most three quarters of the allowance: it cannot overshoot
  // alone).
  if (reading.size() < 2) return {};
  std::sort(reading.rbegin(), reading.rend());
  reading.resize(reading.size() / 2);
  std::vector<Reader*> victims;
  for (const auto& [order, reader] : reading) {
    readers_[reader].state = State::kClaimed;
    victims.push_back(reader);
  }
  ended_ += static_cast<int64_t>(victims.size());
  return victims;
}

int64_t StreamReadGuard::LargestLocked() const {
  const int64_t lately = std::max(largest_, largest_before_);
  return std::max(lately > 0 ? lately : options_.max_message_bytes, int64_t{64} << 10);
}

int StreamReadGuard::pending() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(readers_.size());
}

int StreamReadGuard::deferred() const {
  absl::MutexLock lock(&mu_);
  return deferred_;
}

int64_t StreamReadGuard::ended() const {
  absl::MutexLock lock(&mu_);
  return ended_;
}

void StreamReadGuard::Watch() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_; };
      if (mu_.AwaitWithTimeout(absl::Condition(&stopping), options_.period)) return;
    }
    Check();
  }
}

}  // namespace server
}  // namespace attention
