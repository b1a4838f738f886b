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

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

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
  bool TrySubmit(std::function<void()> task, size_t no_ops = 0);

  // Stops accepting tasks, runs those already queued, joins the workers.
  void Shutdown();

  int workers() const { return static_cast<int>(threads_.size()); }
  int threads_per_worker() const { return threads_per_worker_; }
  // The CPUs compute threads are pinned to, worker by worker ("" unpinned).
  std::string pinned_cpus() const;
  size_t queued() const;

 private:
  void Work(int worker);

  const size_t max_queue_;
  int threads_per_worker_;
  std::vector<int> pinned_;  // CPU of worker w's OpenMP thread t: [w * threads + t]
  std::condition_variable started_cv_;
  int pending_starts_ = 0;  // workers still starting their teams (guarded by mu_)
  int pin_failures_ = 0;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  size_t idle_ = 0;  // workers waiting for a task
  std::vector<std::thread> threads_;
};

}  // namespace attention

#endif  // CORE_EXECUTOR_H_
