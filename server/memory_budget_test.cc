#include "server/memory_budget.h"

#include <unistd.h>

#include <atomic>
#include <cstring>
#include <memory>
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
  const int64_t bytes = DefaultMemoryBudgetBytes();
  EXPECT_GT(bytes, 64 * kMiB);
  EXPECT_LE(bytes, static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE));
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
  // 64 MiB touched and freed in small blocks between blocks that stay (so the
  // heap keeps them, as it keeps gRPC's read buffers) while the budget is in
  // use: no trim.
  std::vector<std::unique_ptr<char[]>> blocks, pins;
  for (int i = 0; i < 1024; ++i) {
    blocks.emplace_back(new char[64 << 10]);
    std::memset(blocks.back().get(), 1, 64 << 10);
    pins.emplace_back(new char[64]);
  }
  blocks.clear();
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_EQ(trimmer.trims(), 0);
  held.Reset();
  for (int i = 0; i < 200 && trimmer.trims() == 0; ++i) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_EQ(trimmer.trims(), 1);
}

}  // namespace
}  // namespace server
}  // namespace attention
