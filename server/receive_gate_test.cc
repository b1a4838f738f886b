// ReceiveGate: at most `slots` reads at once, granted in arrival order; a
// waiter that leaves never starts; a slot given back starts the next waiter.
#include "server/receive_gate.h"

#include <atomic>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace attention {
namespace server {
namespace {

TEST(ReceiveGate, SlotsAreGrantedInArrivalOrder) {
  ReceiveGate gate(2);
  std::vector<int> started;
  ReceiveGate::Ticket t[4];
  for (int i = 0; i < 4; ++i) gate.Enter(&t[i], [&started, i] { started.push_back(i); });
  EXPECT_EQ(started, (std::vector<int>{0, 1}));
  EXPECT_EQ(gate.holding(), 2);
  EXPECT_EQ(gate.waiting(), 2);
  t[1].Reset();  // its slot goes to the first waiter
  EXPECT_EQ(started, (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(gate.holding(), 2);
  t[0].Reset();
  t[2].Reset();
  EXPECT_EQ(started, (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(gate.holding(), 1);
  t[3].Reset();
  t[3].Reset();  // once is enough
  EXPECT_EQ(gate.holding(), 0);
}

TEST(ReceiveGate, AWaiterThatLeavesNeverStarts) {
  ReceiveGate gate(1);
  int started = 0;
  ReceiveGate::Ticket holder, leaver, next;
  gate.Enter(&holder, [&] { ++started; });
  gate.Enter(&leaver, [&] { ADD_FAILURE() << "a cancelled waiter started"; });
  gate.Enter(&next, [&] { ++started; });
  EXPECT_TRUE(leaver.Cancel());
  EXPECT_FALSE(leaver.Cancel());
  EXPECT_FALSE(holder.Cancel());  // holds its slot: nothing to cancel
  EXPECT_EQ(gate.waiting(), 1);
  holder.Reset();
  EXPECT_EQ(started, 2);
  {
    ReceiveGate::Ticket gone;
    gate.Enter(&gone, [] { ADD_FAILURE() << "a destroyed waiter started"; });
  }  // destroyed while waiting: leaves the queue
  EXPECT_EQ(gate.waiting(), 0);
  next.Reset();
  EXPECT_EQ(gate.holding(), 0);
}

// A holder past max_hold is expired only while someone waits, once.
// A rapid reset's many cancelled waiters (each leaves the queue by its id,
// not by a scan of it): the others keep their order.
TEST(ReceiveGate, ManyCancelledWaitersLeaveTheOthersInOrder) {
  ReceiveGate gate(1);
  std::vector<int> started;
  constexpr int kWaiters = 20000;
  std::vector<ReceiveGate::Ticket> t(kWaiters);
  for (int i = 0; i < kWaiters; ++i) gate.Enter(&t[i], [&started, i] { started.push_back(i); });
  for (int i = 1; i < kWaiters; ++i) {
    if (i % 3 != 0) {
      EXPECT_TRUE(t[i].Cancel());
    }
  }
  EXPECT_EQ(gate.waiting(), (kWaiters - 1) / 3);
  for (int i = 0; i < kWaiters; i += 3) t[i].Reset();  // each passes its slot on
  std::vector<int> want;
  for (int i = 0; i < kWaiters; i += 3) want.push_back(i);
  EXPECT_EQ(started, want);
  EXPECT_EQ(gate.waiting(), 0);
  EXPECT_EQ(gate.holding(), 0);
}

TEST(ReceiveGate, AHolderIsExpiredOnlyWhileOthersWait) {
  ReceiveGate gate(1, absl::Milliseconds(40));
  std::atomic<int> expired{0};
  ReceiveGate::Ticket holder, waiter;
  gate.Enter(
      &holder, [] {}, [&] { ++expired; });
  absl::SleepFor(absl::Milliseconds(150));
  EXPECT_EQ(expired, 0) << "nobody waits";
  bool started = false;
  gate.Enter(&waiter, [&] { started = true; });
  for (int i = 0; i < 200 && expired == 0; ++i) absl::SleepFor(absl::Milliseconds(5));
  EXPECT_EQ(expired, 1);
  EXPECT_FALSE(started);  // the slot is freed by the holder's Reset, not by the expiry
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_EQ(expired, 1);  // once
  holder.Reset();
  EXPECT_TRUE(started);
  EXPECT_EQ(gate.expired(), 1);
  waiter.Reset();
}

TEST(ReceiveGate, ZeroSlotsMeansNoGate) {
  ReceiveGate gate(0);
  int started = 0;
  ReceiveGate::Ticket t[3];
  for (auto& ticket : t) gate.Enter(&ticket, [&] { ++started; });
  EXPECT_EQ(started, 3);
  EXPECT_EQ(gate.holding(), 0);
}

}  // namespace
}  // namespace server
}  // namespace attention
