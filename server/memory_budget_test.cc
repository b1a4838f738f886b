#include "server/memory_budget.h"

#include <unistd.h>

#include <atomic>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace attention {
namespace server {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kMiB = 1 << 20;

TEST(MemoryBudgetTest, RefusesWhatDoesNotFitAndSaysWhy) {
  MemoryBudget budget(10 * kMiB);
  Reservation a(&budget);
  ASSERT_TRUE(a.Add(6 * kMiB).ok());
  Reservation b(&budget);
  const absl::Status refused = b.Add(5 * kMiB);
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(refused.message(),
              HasSubstr("memory budget: request needs 5 MiB, 6 of 10 MiB in use; retry later or "
                        "raise --max-memory-mb"));
  EXPECT_EQ(b.bytes(), 0);  // nothing reserved on refusal
  EXPECT_EQ(budget.used(), 6 * kMiB);
  ASSERT_TRUE(b.Add(4 * kMiB).ok());  // exactly full fits
  EXPECT_EQ(budget.used(), 10 * kMiB);
}

TEST(MemoryBudgetTest, ReservationsGiveBackOnShrinkResetAndDestruction) {
  MemoryBudget budget(100);
  {
    Reservation r(&budget);
    ASSERT_TRUE(r.Add(60).ok());
    r.Shrink(20);
    EXPECT_EQ(budget.used(), 40);
    r.Shrink(1000);  // at most what it holds
    EXPECT_EQ(budget.used(), 0);
    ASSERT_TRUE(r.Add(30).ok());
    Reservation moved = std::move(r);
    EXPECT_EQ(moved.bytes(), 30);
    EXPECT_EQ(budget.used(), 30);
  }
  EXPECT_EQ(budget.used(), 0);
  Reservation none;  // no budget: everything fits, nothing is counted
  EXPECT_TRUE(none.Add(int64_t{1} << 50).ok());
}

TEST(MemoryBudgetTest, ConcurrentReservationsNeverExceedTheLimit) {
  MemoryBudget budget(1000);
  std::vector<std::thread> threads;
  std::atomic<int64_t> peak{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 20000; ++i) {
        Reservation r(&budget);
        if (r.Add(300).ok()) {
          int64_t seen = budget.used();
          int64_t p = peak.load();
          while (seen > p && !peak.compare_exchange_weak(p, seen)) {
          }
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_LE(peak.load(), 1000);
  EXPECT_EQ(budget.used(), 0);
}

TEST(MemoryBudgetTest, TrimsOnceEmptyAfterLargeReleasesOnly) {
  MemoryBudget budget(1024 * kMiB);
  for (int i = 0; i < 100; ++i) {
    Reservation small(&budget);
    ASSERT_TRUE(small.Add(4096).ok());
  }
  EXPECT_EQ(budget.trims(), 0);
  Reservation held(&budget);
  ASSERT_TRUE(held.Add(kMiB).ok());
  {
    Reservation large(&budget);
    ASSERT_TRUE(large.Add(100 * kMiB).ok());
  }
  EXPECT_EQ(budget.trims(), 0);  // not empty yet
  held.Reset();
  EXPECT_EQ(budget.trims(), 1);
}

TEST(MemoryBudgetTest, MemoryFreedOutsideReservationsCountsTowardsATrim) {
  MemoryBudget budget(1024 * kMiB);
  Reservation held(&budget);
  ASSERT_TRUE(held.Add(kMiB).ok());
  for (int i = 0; i < 64; ++i) budget.Freed(kMiB);
  EXPECT_EQ(budget.trims(), 0);  // not empty
  held.Reset();
  EXPECT_EQ(budget.trims(), 1);
  for (int i = 0; i < 63; ++i) budget.Freed(kMiB);
  EXPECT_EQ(budget.trims(), 1);  // not enough yet
  budget.Freed(kMiB);
  EXPECT_EQ(budget.trims(), 2);
  EXPECT_EQ(budget.used(), 0);
}

TEST(MemoryBudgetTest, DefaultIsAShareOfTheMachineOrContainer) {
  const MemoryLimit limit = FindMemoryLimit();
  EXPECT_LE(limit.bytes, static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE));
  EXPECT_FALSE(limit.source.empty());
  EXPECT_EQ(DefaultMemoryBudgetBytes({1000 * kMiB, "x"}), 600 * kMiB);
}

// Limits as each kind of place shows them: the smallest on the way up from
// the process's own group wins, whichever hierarchy it is in.
TEST(MemoryLimitTest, TheTightestCgroupLimitOnTheWayUpIsFound) {
  const int64_t physical = 24 * 1024 * kMiB;
  std::map<std::string, int64_t> files;
  auto read = [&files](const std::string& path) -> std::optional<int64_t> {
    auto it = files.find(path);
    if (it == files.end()) return std::nullopt;
    return it->second;
  };
  // cgroup v1 (a hybrid host), the process in a group a supervisor made: the
  // group's own limit, below its parent's.
  const std::string v1_cgroup = "9:name=systemd:/\n4:memory:/jobs/test-1\n0::/\n";
  const std::string v1_mounts =
      "30 22 0:27 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
      "34 30 0:31 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory\n";
  files["/sys/fs/cgroup/memory/memory.limit_in_bytes"] = 9223372036854771712;
  files["/sys/fs/cgroup/memory/jobs/memory.limit_in_bytes"] = 4096 * kMiB;
  files["/sys/fs/cgroup/memory/jobs/test-1/memory.limit_in_bytes"] = 1024 * kMiB;
  MemoryLimit l = FindMemoryLimit(v1_cgroup, v1_mounts, physical, read);
  EXPECT_EQ(l.bytes, 1024 * kMiB);
  EXPECT_EQ(l.source, "cgroup v1 /sys/fs/cgroup/memory/jobs/test-1/memory.limit_in_bytes");
  files["/sys/fs/cgroup/memory/jobs/memory.limit_in_bytes"] = 512 * kMiB;  // the parent's
  EXPECT_EQ(FindMemoryLimit(v1_cgroup, v1_mounts, physical, read).bytes, 512 * kMiB);

  // cgroup v2, a systemd unit with MemoryMax= ("max" elsewhere).
  const std::string v2_cgroup = "0::/system.slice/attention.service\n";
  const std::string v2_mounts =
      "25 20 0:23 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
  files.clear();
  files["/sys/fs/cgroup/system.slice/attention.service/memory.max"] = 2048 * kMiB;
  l = FindMemoryLimit(v2_cgroup, v2_mounts, physical, read);
  EXPECT_EQ(l.bytes, 2048 * kMiB);
  EXPECT_EQ(l.source, "cgroup v2 /sys/fs/cgroup/system.slice/attention.service/memory.max");

  // A container: its group is the mount's root, so the limit is at the mount.
  const std::string container_cgroup = "0::/\n";
  const std::string container_mounts =
      "700 690 0:23 /kubepods/pod1/c1 /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n";
  files.clear();
  files["/sys/fs/cgroup/memory.max"] = 1024 * kMiB;
  EXPECT_EQ(FindMemoryLimit(container_cgroup, container_mounts, physical, read).bytes, 1024 * kMiB);

  // No limit anywhere, or one above physical memory: physical memory.
  files.clear();
  l = FindMemoryLimit(v2_cgroup, v2_mounts, physical, read);
  EXPECT_EQ(l.bytes, physical);
  EXPECT_EQ(l.source, "physical memory");
}

TEST(MemoryBudgetTest, AQuarterGoesToTheTransportAndTheRestToServing) {
  const MemoryShares shares = SplitMemoryBudget(512 * kMiB);
  EXPECT_EQ(shares.transport_bytes, 128 * kMiB);
  EXPECT_EQ(shares.served_bytes, 384 * kMiB);
  const MemoryShares tiny = SplitMemoryBudget(3);
  EXPECT_EQ(tiny.transport_bytes + tiny.served_bytes, 3);
  EXPECT_GT(tiny.transport_bytes, 0);
}

TEST(MemoryBudgetTest, TheIdleTrimmerTrimsOnlyAnIdleBudgetAfterGrowth) {
  MemoryBudget budget(1024 * kMiB);
  Reservation held(&budget);
  ASSERT_TRUE(held.Add(kMiB).ok());
  const IdleTrimmer trimmer(&budget, absl::Milliseconds(10));
  absl::SleepFor(absl::Milliseconds(50));  // its first look at resident memory
  // 64 MiB touched while the budget is in use: no trim. (Kept until the
  // end: the allocator may return freed memory by itself, which would hide
  // the growth.)
  std::vector<std::unique_ptr<char[]>> blocks;
  for (int i = 0; i < 1024; ++i) {
    blocks.emplace_back(new char[64 << 10]);
    std::memset(blocks.back().get(), 1, 64 << 10);
  }
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_EQ(trimmer.trims(), 0);
  held.Reset();  // idle, 64 MiB above the last look: one trim
  for (int i = 0; i < 200 && trimmer.trims() == 0; ++i) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_EQ(trimmer.trims(), 1);
}

}  // namespace
}  // namespace server
}  // namespace attention
