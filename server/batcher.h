// Dynamic batching: requests that compute the same thing on different batch
// entries (same model or no projection, same shapes past the batch
// dimension, same options) are merged along B into one ComputeAttention
// call, and the results are split back into each request's OutputBuffers.
// StreamDecode's steps of one model are merged likewise (Request::sequence:
// their projections as one product, core/decode.h's DecodeSteps).
// One product over many rows reads the weights once instead of once per
// request, which is most of the cost of small requests.
//
//   Batcher batcher(&executor, {/*delay_us=*/500, /*max_size=*/32});
//   Batcher::Request r;
//   r.args = &args;          // validated alone first (PlanAttention)
//   r.outputs = &outputs;    // where this request's results go
//   r.check = [] { return absl::OkStatus(); };       // deadline, cancel
//   r.done = [](const absl::Status& s) { /* answer the caller */ };
//   if (!batcher.Submit(std::move(r))) { /* executor full: RESOURCE_EXHAUSTED */ }
//
// Scheduling is work-conserving: every request still becomes one task on the
// Executor (so admission and its bound are unchanged), and the task that
// runs first takes its request together with the compatible ones that
// accumulated while compute was busy (up to max_size); the tasks of requests
// already taken do nothing. A lone request therefore starts at once. The
// delay only matters under concurrent traffic: when the previous batch of
// the same kind had company, the current one is not full and no request of
// another kind is ready, the worker waits for more until the oldest request
// in it has waited delay_us (closed loops of callers send their next
// requests just after a batch is answered, and would otherwise alternate
// between a batch of one and the rest).
//
// Exactness and isolation: a batched request gets the values its own call
// would compute (float32 rounding aside). Each request's `check` is applied
// to it alone: one whose caller left is answered with its status and does
// not stop the others; the merged computation is aborted only when every
// member is gone. If the merged computation fails (or its own copies do not
// fit the memory budget), each member is computed alone, so one request
// never fails another.
//
// Thread-safe. The Batcher must outlive the Executor's tasks it submitted
// (shut the executor down first).
#ifndef SERVER_BATCHER_H_
#define SERVER_BATCHER_H_

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "core/attention.h"
#include "core/decode.h"
#include "core/executor.h"
#include "server/memory_budget.h"

namespace attention {
namespace server {

class Batcher {
 public:
  struct Options {
    int64_t delay_us = 0;  // see the overview; must be > 0 (0 means: no Batcher)
    int max_size = 32;     // requests in one computation at most
    int max_threads = 0;   // ComputeOptions::max_threads of each computation
    // Each member's memory limit; a batch may use this times its size.
    int64_t max_request_memory_bytes = int64_t{1} << 30;
    // The server's memory budget (optional, not owned): a merged computation
    // reserves its own copies there (ComputeMerged).
    MemoryBudget* budget = nullptr;
    // Observers (optional): the size of each computation started, and how
    // long each request waited in the batcher (from Submit to its start).
    std::function<void(int size)> on_batch;
    std::function<void(double seconds)> on_wait;
  };

  struct Request {
    const AttentionArgs* args = nullptr;  // valid until done; validated alone
    // Set for a StreamDecode message (args as DecodeStep takes them): merged
    // with other messages of the same model (whatever their options) by
    // DecodeSteps (core/decode.h), never with calls. Each gets its own
    // status; `check` is not asked again after the computation (the
    // message's sequence has changed: the status says so).
    SequenceCache* sequence = nullptr;
    OutputBuffers* outputs = nullptr;               // valid until done
    std::function<absl::Status()> check;            // non-OK: answer this status instead
    std::function<void()> started;                  // optional: its computation begins
    std::function<void(const absl::Status&)> done;  // called once, on a worker
  };

  Batcher(Executor* executor, Options options);

  // Queues `request` for computation; `done` follows on an executor thread.
  // False when the executor's queue is full (nothing is called then).
  bool Submit(Request request) ABSL_LOCKS_EXCLUDED(mu_);

  // Executor tasks still queued whose request a batch has already answered:
  // each returns at once when a worker takes it, so they are not waiting
  // work (a busy batching server would otherwise look fuller than it is).
  size_t answered_queued() const {
    return static_cast<size_t>(std::max<int64_t>(0, answered_queued_.load()));
  }

  // Whether `args` may be merged with others at all: rank-3 inputs, no
  // attn_mask, and no inline projection (`inline_projection` points to the
  // request's own weights: those differ between requests).
  static bool Batchable(const AttentionArgs& args, const ProjectionWeights* inline_projection);
  // Whether `a` and `b` may be computed as one: everything equal but the
  // batch dimension.
  static bool Compatible(const AttentionArgs& args, const AttentionArgs& b);

  // Computes `members` (pairwise Compatible, each valid alone) as one call
  // and writes each member's results to its OutputBuffers. Inputs are copied
  // into one buffer each and the results come whole before they are split:
  // those copies, beyond what the members reserved for themselves, are
  // reserved in `budget` (when given) first, and a batch that does not fit
  // is refused (ResourceExhausted; the caller then computes the members
  // alone). `options.max_memory_bytes` bounds the merged call.
  static absl::Status ComputeMerged(const std::vector<const AttentionArgs*>& members,
                                    const ComputeOptions& options,
                                    const std::vector<OutputBuffers*>& outputs,
                                    MemoryBudget* budget = nullptr);

 private:
  using Clock = std::chrono::steady_clock;
  // `request` and `arrived` are set before the request is shared, and then
  // `request` is the taker's alone; `taken` is guarded by mu_ (which
  // ABSL_GUARDED_BY cannot name from here).
  struct Pending {
    Request request;
    Clock::time_point arrived;
    bool taken = false;
  };
  // Guarded by mu_ as a whole (which ABSL_GUARDED_BY cannot name from here).
  struct Group {
    AttentionArgs key;    // a member's args: shapes and options only (data never read)
    bool decode = false;  // of decode steps (merged by model only)
    std::vector<std::shared_ptr<Pending>> pending;  // in arrival order
    int last_batch = 0;                             // size of the last batch taken
    int waiting = 0;                                // workers waiting for company
  };

  // On a worker: takes `own` (unless taken already) and its company, and
  // computes them.
  void Run(const std::shared_ptr<Pending>& own) ABSL_LOCKS_EXCLUDED(mu_);
  static void Forget(const std::vector<std::shared_ptr<Pending>>& batch);
  // Moves pending requests of `group` into `batch` until it holds max_size.
  void Take(Group* group, std::vector<std::shared_ptr<Pending>>* batch) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  static bool Joins(const Group& group, const Request& request);
  // The check of a merged computation: OK while any member's caller is left
  // to answer (`live` must outlive it).
  static std::function<absl::Status()> AnyAlive(const std::vector<Request*>& live);
  void ComputeBatch(const std::vector<std::shared_ptr<Pending>>& batch) const;
  void ComputeSteps(const std::vector<Request*>& live) const;

  Executor* const executor_;
  const Options options_;
  mutable std::atomic<int64_t> answered_queued_{0};  // see answered_queued()
  absl::Mutex mu_;
  absl::CondVar arrived_;  // a request was queued
  // Few kinds at a time: a linear search. Pointers stay valid while a worker
  // waits on one (empty groups go only when none waits).
  std::vector<std::unique_ptr<Group>> groups_ ABSL_GUARDED_BY(mu_);
};

}  // namespace server
}  // namespace attention

#endif  // SERVER_BATCHER_H_
