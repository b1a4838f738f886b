#include "core/executor.h"

#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <utility>

namespace attention {

Executor::Executor(Options options) : max_queue_(options.max_queue) {
  const int workers = std::max(1, options.workers);
  const int cores = std::max(1, omp_get_num_procs());
  threads_per_worker_ =
      options.threads_per_worker > 0 ? options.threads_per_worker : std::max(1, cores / workers);
  for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { Work(); });
}

Executor::~Executor() { Shutdown(); }

bool Executor::TrySubmit(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ || queue_.size() >= max_queue_ + idle_) return false;
    queue_.push_back(std::move(task));
  }
  cv_.notify_one();
  return true;
}

void Executor::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ && threads_.empty()) return;
    stopping_ = true;
  }
  cv_.notify_all();
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
  threads_.clear();
}

size_t Executor::queued() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queue_.size();
}

void Executor::Work() {
  omp_set_num_threads(threads_per_worker_);
  for (;;) {
    std::function<void()> task;
    {
      std::unique_lock<std::mutex> lock(mu_);
      ++idle_;
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
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
