#include "core/executor.h"

#include <omp.h>
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <future>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

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
  // Refused only until the worker waits for work, which it does as soon as
  // it is scheduled: no bound on the attempts (a worker that never takes the
  // task hangs the test, which the test's timeout reports).
  std::promise<void> started;
  while (!ex.TrySubmit([gate, &started] {
    started.set_value();
    gate.wait();
  })) {
    std::this_thread::yield();
  }
  started.get_future().wait();        // the worker took it
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

int AllowedCpuCount() {
  cpu_set_t set;
  CPU_ZERO(&set);
  EXPECT_EQ(sched_getaffinity(0, sizeof(set), &set), 0);
  return CPU_COUNT(&set);
}

std::set<int> ThisThreadsCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  pthread_getaffinity_np(pthread_self(), sizeof(set), &set);
  std::set<int> cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &set)) cpus.insert(c);
  }
  return cpus;
}

// What one task on every worker sees at once: for each worker, the team size
// an OpenMP region gets by default (as the core's regions do) and the CPUs
// each thread of that team may run on. The tasks wait for each other, so
// each runs on a worker of its own.
struct WorkerTeam {
  int default_team_size = 0;
  std::vector<std::set<int>> cpus;
};

std::vector<WorkerTeam> EveryWorkersTeam(Executor& ex) {
  const int n = ex.workers();
  std::vector<WorkerTeam> teams(n);
  std::mutex mu;
  std::condition_variable cv;
  int arrived = 0;
  std::vector<std::promise<void>> done(n);
  for (int i = 0; i < n; ++i) {
    auto task = [&, i] {  // (a pragma may not sit in a macro's argument)
      {
        std::unique_lock<std::mutex> lock(mu);
        ++arrived;
        cv.notify_all();
        cv.wait(lock, [&] { return arrived == n; });  // every worker holds one task
      }
      WorkerTeam& t = teams[i];
      t.default_team_size = omp_get_max_threads();
      t.cpus.resize(t.default_team_size);
#pragma omp parallel
      t.cpus[omp_get_thread_num()] = ThisThreadsCpus();
      done[i].set_value();
    };
    EXPECT_TRUE(ex.TrySubmit(task));
  }
  for (auto& d : done) d.get_future().wait();
  return teams;
}

TEST(Executor, SplitsCoresBetweenWorkers) {
  const int cores = std::max(1, omp_get_num_procs());
  Executor ex({/*workers=*/2, /*threads_per_worker=*/0, /*max_queue=*/4});
  EXPECT_EQ(ex.workers(), 2);
  const int share = std::max(1, cores / 2);
  EXPECT_EQ(ex.threads_per_worker(), share);  // each worker its share, not all the cores
  const std::vector<WorkerTeam> teams = EveryWorkersTeam(ex);
  for (const WorkerTeam& t : teams) EXPECT_EQ(t.default_team_size, share);
  // Pinned (the CPU set is exactly workers x share when the cores are even):
  // the two teams run on different CPUs, one each.
  if (!ex.pinned_cpus().empty()) {
    std::set<int> used;
    for (const WorkerTeam& t : teams) {
      for (const std::set<int>& c : t.cpus) {
        EXPECT_EQ(c.size(), 1u);
        used.insert(c.begin(), c.end());
      }
    }
    EXPECT_EQ(static_cast<int>(used.size()), 2 * share);
  }
  if (AllowedCpuCount() == 2 * share) {
    EXPECT_FALSE(ex.pinned_cpus().empty());  // as on this 2-core machine
  }
}

// What `look` returns on each thread of an OpenMP team started inside a task
// (as the core starts them), by thread number.
template <typename T, typename Look>
std::vector<T> OnTeam(Executor& ex, Look look) {
  std::vector<T> seen(ex.threads_per_worker());
  std::promise<void> done;
  auto task = [&] {
#pragma omp parallel num_threads(ex.threads_per_worker())
    seen[omp_get_thread_num()] = look();
    done.set_value();
  };
  EXPECT_TRUE(ex.TrySubmit(task));
  done.get_future().wait();
  return seen;
}

// The CPUs each thread of a task's OpenMP team may run on.
std::vector<std::set<int>> TeamCpus(Executor& ex) {
  return OnTeam<std::set<int>>(ex, ThisThreadsCpus);
}

std::vector<std::string> TeamNames(Executor& ex) {
  return OnTeam<std::string>(ex, [] {
    char name[16] = {};
    pthread_getname_np(pthread_self(), name, sizeof(name));
    return std::string(name);
  });
}

TEST(Executor, NamesEachComputeThreadPinnedOrNot) {
  for (bool pin : {true, false}) {
    Executor ex({/*workers=*/1, /*threads_per_worker=*/2, /*max_queue=*/4, pin});
    EXPECT_EQ(TeamNames(ex), (std::vector<std::string>{"compute-0.0", "compute-0.1"})) << pin;
  }
}

TEST(Executor, PinsEachComputeThreadToItsOwnCpuWhenItHasExactlyThat) {
  const int n = AllowedCpuCount();
  Executor ex({/*workers=*/1, /*threads_per_worker=*/n, /*max_queue=*/4});
  EXPECT_FALSE(ex.pinned_cpus().empty());
  std::set<int> used;
  for (const std::set<int>& c : TeamCpus(ex)) {
    EXPECT_EQ(c.size(), 1u);  // one CPU each
    used.insert(c.begin(), c.end());
  }
  EXPECT_EQ(static_cast<int>(used.size()), n);  // all different
  // Still pinned in later calls (OpenMP reuses the team's threads).
  for (const std::set<int>& c : TeamCpus(ex)) EXPECT_EQ(c.size(), 1u);
}

TEST(Executor, DoesNotPinOnACpuSetOfAnotherSizeOrWhenAskedNotTo) {
  const int n = AllowedCpuCount();
  Executor more({/*workers=*/1, /*threads_per_worker=*/n + 1, /*max_queue=*/4});
  EXPECT_TRUE(more.pinned_cpus().empty());
  for (const std::set<int>& c : TeamCpus(more)) EXPECT_EQ(static_cast<int>(c.size()), n);
  Executor off({/*workers=*/1, /*threads_per_worker=*/n, /*max_queue=*/4, /*pin_threads=*/false});
  EXPECT_TRUE(off.pinned_cpus().empty());
  for (const std::set<int>& c : TeamCpus(off)) EXPECT_EQ(static_cast<int>(c.size()), n);
}

}  // namespace
}  // namespace attention
