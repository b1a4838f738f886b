#include "core/executor.h"

#include <atomic>
#include <chrono>
#include <future>
#include <stdexcept>
#include <thread>

#include "gtest/gtest.h"

namespace attention {
namespace {

TEST(Executor, RunsTasksAndRefusesBeyondTheQueue) {
  Executor ex({/*workers=*/1, /*threads_per_worker=*/1, /*max_queue=*/2});
  std::promise<void> release;
  std::shared_future<void> gate = release.get_future().share();
  std::atomic<int> ran{0};
  std::promise<void> started;
  ASSERT_TRUE(ex.TrySubmit([&] {
    started.set_value();
    gate.wait();
    ++ran;
  }));
  started.get_future().wait();  // the worker is busy; the queue is empty
  EXPECT_TRUE(ex.TrySubmit([&] { ++ran; }));
  EXPECT_TRUE(ex.TrySubmit([&] { ++ran; }));
  EXPECT_FALSE(ex.TrySubmit([&] { ++ran; }));  // full: refused at once
  EXPECT_EQ(ex.queued(), 2u);
  release.set_value();
  ex.Shutdown();  // runs what was queued
  EXPECT_EQ(ran.load(), 3);
  EXPECT_FALSE(ex.TrySubmit([] {}));
}

TEST(Executor, AnIdleWorkerTakesATaskEvenWithNoQueue) {
  Executor ex({/*workers=*/1, /*threads_per_worker=*/1, /*max_queue=*/0});
  std::promise<void> release;
  std::shared_future<void> gate = release.get_future().share();
  bool accepted = false;
  for (int i = 0; i < 200 && !accepted; ++i) {  // until the worker waits for work
    accepted = ex.TrySubmit([gate] { gate.wait(); });
    if (!accepted) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_TRUE(accepted);
  EXPECT_FALSE(ex.TrySubmit([] {}));  // the worker is busy and nothing may wait
  release.set_value();
}

TEST(Executor, ATaskThatThrowsDoesNotStopTheWorker) {
  Executor ex({1, 1, 4});
  std::atomic<int> ran{0};
  ASSERT_TRUE(ex.TrySubmit([] { throw std::runtime_error("boom"); }));
  ASSERT_TRUE(ex.TrySubmit([&] { ++ran; }));
  ex.Shutdown();
  EXPECT_EQ(ran.load(), 1);
}

TEST(Executor, SplitsCoresBetweenWorkers) {
  Executor ex({/*workers=*/2, /*threads_per_worker=*/0, /*max_queue=*/4});
  EXPECT_EQ(ex.workers(), 2);
  EXPECT_GE(ex.threads_per_worker(), 1);
}

}  // namespace
}  // namespace attention
