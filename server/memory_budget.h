// One budget, in bytes, for everything the server holds for requests
// (--max-memory-mb): messages received and not yet answered, compute
// buffers, responses not yet written. Each call takes a Reservation when its
// request arrives, grows it by the request's planned memory before it is
// queued, and drops it when its response has been written; a request that
// does not fit is refused at once (RESOURCE_EXHAUSTED), never queued.
//
//   MemoryBudget budget(512 << 20);
//   Reservation held(&budget);
//   absl::Status s = held.Add(request_bytes);        // on arrival
//   if (s.ok()) s = held.Add(plan.memory_bytes);     // before queueing
//   // ... ~Reservation (the response written) gives it all back
//
// When the budget falls back to zero after large releases (64 MiB, closed
// streams included: Freed), the allocator's free memory is returned to the
// system (ReturnFreeMemory, server/allocator.h), so that a burst does not leave the process holding
// its peak. Thread-safe.
#ifndef SERVER_MEMORY_BUDGET_H_
#define SERVER_MEMORY_BUDGET_H_

#include <atomic>
#include <cstdint>
#include <thread>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/memory_limit.h"

namespace attention {
namespace server {

class MemoryBudget {
 public:
  // `limit_bytes` > 0.
  explicit MemoryBudget(int64_t limit_bytes);
  MemoryBudget(const MemoryBudget&) = delete;
  MemoryBudget& operator=(const MemoryBudget&) = delete;

  // Reserves `bytes` (>= 0) when they fit under the limit; otherwise reserves
  // nothing and returns ResourceExhausted "memory budget: request needs X MiB,
  // Y of Z MiB in use; retry later or raise --max-memory-mb".
  absl::Status Reserve(int64_t bytes);
  // Gives back `bytes` reserved before.
  void Release(int64_t bytes);
  // Counts `bytes` freed that were never reserved (what an open stream holds
  // of its own), so that they go back to the system as released reservations
  // do: at the first moment the budget is empty once enough was freed.
  void Freed(int64_t bytes);

  int64_t used() const { return used_.load(std::memory_order_relaxed); }
  int64_t limit() const { return limit_; }
  // Times the freed memory went back to the system (see the overview).
  int64_t trims() const { return trims_.load(std::memory_order_relaxed); }

 private:
  // Trims when `released` bytes (so far since the last trim) are enough.
  void TrimAfter(int64_t released);

  const int64_t limit_;
  std::atomic<int64_t> used_{0};
  std::atomic<int64_t> released_since_trim_{0};
  std::atomic<int64_t> trims_{0};
};

// A call's share of a budget, given back when it is destroyed. Move-only; a
// default-constructed one holds nothing (no budget). One thread at a time.
class Reservation {
 public:
  Reservation() = default;
  explicit Reservation(MemoryBudget* budget) : budget_(budget) {}
  ~Reservation() { Reset(); }
  Reservation(Reservation&& other) noexcept;
  Reservation& operator=(Reservation&& other) noexcept;

  // Reserves `bytes` more; on refusal holds what it held (see Reserve).
  absl::Status Add(int64_t bytes);
  // Gives back `bytes` of what it holds (at most all of it).
  void Shrink(int64_t bytes);
  // Gives back everything.
  void Reset() { Shrink(bytes_); }

  int64_t bytes() const { return bytes_; }

 private:
  MemoryBudget* budget_ = nullptr;
  int64_t bytes_ = 0;
};

// The share of the memory limit the default budget takes, percent.
inline constexpr int kDefaultBudgetPercent = 60;

// The default --max-memory-mb, in bytes: 60% of the process's memory limit
// (server/memory_limit.h: the tightest cgroup limit, or physical memory).
// The rest is the process's fixed part (models, libraries, threads' stacks,
// the compute threads' kept workspaces) and the allocator's slack.
int64_t DefaultMemoryBudgetBytes(const MemoryLimit& limit);

// The process's resident memory now (/proc/self/statm), or 0.
int64_t ResidentBytes();

// How --max-memory-mb is shared. gRPC's transport holds a request while it is
// still being received, before the service sees it; gRPC's resource quota
// (`transport_bytes`) bounds that: over it, gRPC 1.51 sends idle connections
// a GOAWAY and then cancels streams one at a time, chosen at random, until
// the quota is met again (the client sees RESOURCE_EXHAUSTED "Received
// RST_STREAM with error code 11"; a small honest call can be the one). What the
// service holds for requests it has been handed (parsed messages, compute
// buffers, responses) is the MemoryBudget (`served_bytes`). A quarter goes to
// the transport: enough to receive a request the served share can compute
// (which needs about three times its size), the rest to serving.
struct MemoryShares {
  int64_t transport_bytes = 0;
  int64_t served_bytes = 0;
};
// `total_bytes` > 0.
MemoryShares SplitMemoryBudget(int64_t total_bytes);

// Returns memory the allocator keeps after requests are gone: every
// `period`, when `budget` is idle (nothing reserved) and the process's
// resident memory has grown by 32 MiB or more since the last trim, it calls
// ReturnFreeMemory. This catches what the budget's own trim cannot see: gRPC's
// read buffers of requests the transport cancelled or is still receiving.
// The thread stops when the trimmer is destroyed.
class IdleTrimmer {
 public:
  IdleTrimmer(const MemoryBudget* budget, absl::Duration period);
  ~IdleTrimmer();
  IdleTrimmer(const IdleTrimmer&) = delete;
  IdleTrimmer& operator=(const IdleTrimmer&) = delete;

  int64_t trims() const { return trims_.load(std::memory_order_relaxed); }

 private:
  void Run(const MemoryBudget* budget, absl::Duration period);

  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<int64_t> trims_{0};
  std::thread thread_;
};

}  // namespace server
}  // namespace attention

#endif  // SERVER_MEMORY_BUDGET_H_
