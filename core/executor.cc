#include "core/executor.h"

#include <omp.h>
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <exception>
#include <string>
#include <utility>

namespace attention {

namespace {

// The CPUs this process may run on, in order.
std::vector<int> AllowedCpus() {
  std::vector<int> cpus;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &set)) cpus.push_back(c);
  }
  return cpus;
}

}  // namespace

Executor::Executor(Options options) : max_queue_(options.max_queue) {
  const int workers = std::max(1, options.workers);
  const int cores = std::max(1, omp_get_num_procs());
  threads_per_worker_ =
      options.threads_per_worker > 0 ? options.threads_per_worker : std::max(1, cores / workers);
  // OMP_PROC_BIND set by the user: OpenMP binds its threads itself.
  if (options.pin_threads && omp_get_proc_bind() == omp_proc_bind_false) {
    std::vector<int> cpus = AllowedCpus();
    if (static_cast<int>(cpus.size()) == workers * threads_per_worker_) pinned_ = std::move(cpus);
  }
  pending_starts_ = workers;  // no worker yet: no lock needed
  for (int i = 0; i < workers; ++i) threads_.emplace_back([this, i] { Work(i); });
  absl::MutexLock lock(&mu_);
  while (pending_starts_ != 0) started_cv_.Wait(&mu_);  // every team is up
  if (pin_failures_ > 0) pinned_.clear();
}

std::string Executor::pinned_cpus() const {
  std::string cpus;
  for (size_t i = 0; i < pinned_.size(); ++i) {
    cpus += (i == 0 ? "" : ",") + std::to_string(pinned_[i]);
  }
  return cpus;
}

Executor::~Executor() { Shutdown(); }

bool Executor::TrySubmit(std::function<void()> task, size_t no_ops) {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_ || queue_.size() - std::min(no_ops, queue_.size()) >= max_queue_ + idle_) {
      return false;
    }
    queue_.push_back(std::move(task));
  }
  cv_.Signal();
  return true;
}

void Executor::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_ && threads_.empty()) return;
    stopping_ = true;
  }
  cv_.SignalAll();
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
  threads_.clear();
}

size_t Executor::queued() const {
  absl::MutexLock lock(&mu_);
  return queue_.size();
}

void Executor::Work(int worker) {
  omp_set_num_threads(threads_per_worker_);
  {
    // The team starts now: each thread named "compute-W.T" (worker W, OpenMP
    // thread T; top -H, perf and /proc show it) and pinned when pinning.
    // OpenMP keeps this thread's team threads for later regions as long as
    // they have the same size (ComputeAttention uses one thread or the whole
    // team), so this holds for good.
    std::atomic<int> failures{0};
#pragma omp parallel num_threads(threads_per_worker_)
    {
      const int t = omp_get_thread_num();
      const std::string name = "compute-" + std::to_string(worker) + "." + std::to_string(t);
      pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());  // at most 15 chars
      if (!pinned_.empty()) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(pinned_[worker * threads_per_worker_ + t], &set);
        if (pthread_setaffinity_np(pthread_self(), sizeof(set), &set) != 0) ++failures;
      }
    }
    absl::MutexLock lock(&mu_);
    pin_failures_ += failures.load();
    --pending_starts_;
    started_cv_.SignalAll();
  }
  for (;;) {
    std::function<void()> task;
    {
      absl::MutexLock lock(&mu_);
      ++idle_;
      while (!stopping_ && queue_.empty()) cv_.Wait(&mu_);
      --idle_;
      if (queue_.empty()) return;  // stopping, and nothing left
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    try {
      task();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "executor: a task threw: %s\n", e.what());
    } catch (...) {
      std::fprintf(stderr, "executor: a task threw\n");
    }
  }
}

}  // namespace attention
