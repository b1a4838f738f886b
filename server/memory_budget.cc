#include "server/memory_budget.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/allocator.h"

namespace attention {
namespace server {
namespace {

// Released bytes after which an empty budget trims the heap: small calls
// never pay for a trim, a burst of large ones is returned once it is over.
constexpr int64_t kTrimAfterBytes = int64_t{64} << 20;
// Growth of resident memory after which an idle server trims (IdleTrimmer).
constexpr int64_t kIdleTrimGrowthBytes = int64_t{32} << 20;

std::string MiB(double bytes) {
  const double mib = bytes / (1 << 20);
  return mib < 10 ? absl::StrCat(std::round(mib * 10) / 10) : absl::StrCat(std::llround(mib));
}

}  // namespace

int64_t ResidentBytes() {
  std::ifstream in("/proc/self/statm");
  int64_t size = 0, resident = 0;
  if (!(in >> size >> resident)) return 0;
  return resident * sysconf(_SC_PAGESIZE);
}

MemoryBudget::MemoryBudget(int64_t limit_bytes) : limit_(limit_bytes) {}

absl::Status MemoryBudget::Reserve(int64_t bytes) {
  int64_t used = used_.load(std::memory_order_relaxed);
  do {
    if (bytes > limit_ - used) {
      return absl::ResourceExhaustedError(
          absl::StrCat("memory budget: request needs ", MiB(bytes), " MiB, ", MiB(used), " of ",
                       MiB(limit_), " MiB in use; retry later or raise --max-memory-mb"));
    }
  } while (!used_.compare_exchange_weak(used, used + bytes, std::memory_order_relaxed));
  return absl::OkStatus();
}

void MemoryBudget::Release(int64_t bytes) {
  if (bytes <= 0) return;
  const int64_t released = released_since_trim_.fetch_add(bytes) + bytes;
  if (used_.fetch_sub(bytes) - bytes == 0) TrimAfter(released);
}

void MemoryBudget::Freed(int64_t bytes) {
  if (bytes <= 0) return;
  const int64_t released = released_since_trim_.fetch_add(bytes) + bytes;
  if (used() == 0) TrimAfter(released);
}

void MemoryBudget::TrimAfter(int64_t released) {
  if (released >= kTrimAfterBytes && released_since_trim_.exchange(0) >= kTrimAfterBytes) {
    ReturnFreeMemory();
    trims_.fetch_add(1, std::memory_order_relaxed);
  }
}

Reservation::Reservation(Reservation&& other) noexcept
    : budget_(std::exchange(other.budget_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

Reservation& Reservation::operator=(Reservation&& other) noexcept {
  if (this != &other) {
    Reset();
    budget_ = std::exchange(other.budget_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

absl::Status Reservation::Add(int64_t bytes) {
  if (budget_ == nullptr || bytes <= 0) return absl::OkStatus();
  if (absl::Status s = budget_->Reserve(bytes); !s.ok()) return s;
  bytes_ += bytes;
  return absl::OkStatus();
}

void Reservation::Shrink(int64_t bytes) {
  bytes = std::min(bytes, bytes_);
  if (budget_ == nullptr || bytes <= 0) return;
  bytes_ -= bytes;
  budget_->Release(bytes);
}

int64_t DefaultMemoryBudgetBytes(const MemoryLimit& limit) {
  return limit.bytes / 100 * kDefaultBudgetPercent;
}

MemoryShares SplitMemoryBudget(int64_t total_bytes) {
  MemoryShares shares;
  shares.transport_bytes = std::max<int64_t>(1, total_bytes / 4);
  shares.served_bytes = std::max<int64_t>(1, total_bytes - shares.transport_bytes);
  return shares;
}

IdleTrimmer::IdleTrimmer(const MemoryBudget* budget, absl::Duration period)
    : thread_([this, budget, period] { Run(budget, period); }) {}

IdleTrimmer::~IdleTrimmer() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

void IdleTrimmer::Run(const MemoryBudget* budget, absl::Duration period) {
  int64_t after_last_trim = ResidentBytes();
  absl::MutexLock lock(&mu_);
  while (!mu_.AwaitWithTimeout(absl::Condition(&stop_), period)) {
    if (budget->used() != 0) continue;
    const int64_t resident = ResidentBytes();
    if (resident < after_last_trim) after_last_trim = resident;
    if (resident - after_last_trim < kIdleTrimGrowthBytes) continue;
    ReturnFreeMemory();
    trims_.fetch_add(1, std::memory_order_relaxed);
    after_last_trim = ResidentBytes();
  }
}

}  // namespace server
}  // namespace attention
