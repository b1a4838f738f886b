// A bounded executor for compute: a fixed set of worker threads, each the
// master of its own OpenMP team of `threads_per_worker` threads, and a queue
// of bounded length. workers x threads_per_worker is the number of cores the
// executor occupies, so callers (the server's gRPC threads) never start
// OpenMP teams of their own and the machine is not oversubscribed.
//
//   Executor executor({/*workers=*/1, /*threads_per_worker=*/2, /*max_queue=*/64});
//   if (!executor.TrySubmit([&] { ComputeAttention(args, {executor.threads_per_worker()}, &out);
//   })) {
//     // full: answer RESOURCE_EXHAUSTED now instead of queueing without bound
//   }
//
// Thread-safe. Tasks must not throw. The destructor calls Shutdown().
#ifndef CORE_EXECUTOR_H_
#define CORE_EXECUTOR_H_

#include <cstddef>
#include <deque>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace attention {

class Executor {
 public:
  struct Options {
    int workers = 1;             // concurrent tasks
    int threads_per_worker = 0;  // OpenMP threads each; 0 = cores / workers
    size_t max_queue = 64;       // tasks waiting (not running) at most
    // Pin each compute thread (every worker and its OpenMP threads) to a CPU
    // of its own, when the process may run on exactly workers x
    // threads_per_worker CPUs (a container's cpuset, a machine of that size);
    // never on a larger set shared with others. Unpinned, Linux tends to wake
    // an OpenMP thread that slept on the CPU of the thread waking it, which
    // then spins at the team's barrier for that thread for up to
    // milliseconds: small calls after an idle moment took 8-12 ms instead of
    // 0.2 ms.
    bool pin_threads = true;
  };

  // Starts the workers and their OpenMP teams (every compute thread named
  // "compute-W.T": worker W, OpenMP thread T) and returns when all are up.
  explicit Executor(Options options);
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // Queues `task`. Returns false, without running it, when max_queue tasks are
  // already waiting beyond those an idle worker is about to take and the
  // `no_ops` the caller knows will return at once (a batcher's requests that
  // another batch answered), or Shutdown() has been called. A task that
  // throws is reported on stderr and dropped (it must not: tasks own their
  // errors).
  bool TrySubmit(std::function<void()> task, size_t no_ops = 0) ABSL_LOCKS_EXCLUDED(mu_);

  // Stops accepting tasks, runs those already queued, joins the workers.
  void Shutdown() ABSL_LOCKS_EXCLUDED(mu_);

  int workers() const { return static_cast<int>(threads_.size()); }
  int threads_per_worker() const { return threads_per_worker_; }
  // The CPUs compute threads are pinned to, worker by worker ("" unpinned).
  std::string pinned_cpus() const;
  size_t queued() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void Work(int worker) ABSL_LOCKS_EXCLUDED(mu_);

  const size_t max_queue_;
  int threads_per_worker_;
  // CPU of worker w's OpenMP thread t: [w * threads + t]. Set before the
  // workers start and cleared after they are all up: never changed while one
  // reads it.
  std::vector<int> pinned_;
  mutable absl::Mutex mu_;
  absl::CondVar started_cv_;                     // pending_starts_ reached 0
  int pending_starts_ ABSL_GUARDED_BY(mu_) = 0;  // workers still starting their teams
  int pin_failures_ ABSL_GUARDED_BY(mu_) = 0;
  absl::CondVar cv_;  // a task was queued, or stopping_
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  size_t idle_ ABSL_GUARDED_BY(mu_) = 0;  // workers waiting for a task
  // Not guarded: filled by the constructor and emptied by Shutdown, on the
  // owner's thread once nobody else uses the executor.
  std::vector<std::thread> threads_;
};

}  // namespace attention

#endif  // CORE_EXECUTOR_H_
