// StreamReadGuard: within the allowance nothing happens; over it, the most
// recently begun reads are ended, half at a time, then those left are given
// time to finish (unless the overshoot passes half the allowance); a read
// completing while the guard ends its stream waits for that end to begin.
#include "server/stream_read_guard.h"

#include <atomic>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace attention {
namespace server {
namespace {

// Records its start and end; tells the guard, as StreamFlow does.
class FakeReader final : public StreamReadGuard::Reader {
 public:
  explicit FakeReader(StreamReadGuard* guard) : guard_(guard) {}
  void StartDeferredRead() override {
    started = true;
    guard_->Started(this, !over);
  }
  void EndWhileReading() override {
    if (before_ending) before_ending();
    ended = true;
    guard_->Ending(this);
  }
  std::function<void()> before_ending;
  std::atomic<bool> ended{false};
  std::atomic<bool> started{false};  // by the guard, after a deferral
  bool over = false;                 // the stream ended meanwhile

 private:
  StreamReadGuard* guard_;
};

// An allowance of 100 bytes; by default the tests call Check themselves and
// nothing settles within a test.
StreamReadGuard::Options Options(std::atomic<int64_t>* untracked,
                                 absl::Duration period = absl::Hours(1),
                                 absl::Duration settle = absl::Hours(1)) {
  StreamReadGuard::Options o;
  o.allowance_bytes = 100;
  o.untracked = [untracked] { return untracked->load(); };
  o.period = period;
  o.settle = settle;
  return o;
}

// With no stream reading the guard does not sample (it costs); a read then
// asks with the last sample's answer.
TEST(StreamReadGuard, NoSampleWithoutReaders) {
  int samples = 0;
  StreamReadGuard::Options o;
  o.allowance_bytes = 100;
  o.untracked = [&samples] {
    ++samples;
    return int64_t{0};
  };
  o.period = absl::Hours(1);
  StreamReadGuard guard(std::move(o));
  guard.Check();
  EXPECT_EQ(samples, 0);
  FakeReader a(&guard);
  EXPECT_TRUE(guard.Reading(&a));
  guard.Check();
  EXPECT_EQ(samples, 1);
  guard.ReadOver(&a, 0);
}

TEST(StreamReadGuard, NothingEndsWithinTheAllowance) {
  std::atomic<int64_t> untracked{100};
  StreamReadGuard guard(Options(&untracked));
  FakeReader a(&guard);
  EXPECT_TRUE(guard.Reading(&a));
  guard.Check();
  EXPECT_FALSE(a.ended);
  EXPECT_EQ(guard.ended(), 0);
  guard.ReadOver(&a, 0);
  EXPECT_EQ(guard.pending(), 0);
}

TEST(StreamReadGuard, OverItTheLatestReadsEndFirstHalfAtATime) {
  std::atomic<int64_t> untracked{101};
  StreamReadGuard guard(Options(&untracked));
  std::vector<std::unique_ptr<FakeReader>> r;
  for (int i = 0; i < 5; ++i) {
    r.push_back(std::make_unique<FakeReader>(&guard));
    guard.Reading(r.back().get());
  }
  guard.ReadOver(r[4].get(), 0);  // its read completed: no longer a candidate
  guard.Check();                  // 4 pending: the 2 begun last
  EXPECT_FALSE(r[0]->ended);
  EXPECT_FALSE(r[1]->ended);
  EXPECT_TRUE(r[2]->ended);
  EXPECT_TRUE(r[3]->ended);
  EXPECT_FALSE(r[4]->ended);
  EXPECT_EQ(guard.ended(), 2);
  // Within `settle`: those left are given time to finish their messages.
  untracked = 150;
  guard.Check();
  EXPECT_FALSE(r[1]->ended);
  // Half the allowance over it: more end (half of the 2 left: 1, the later).
  untracked = 151;
  guard.Check();
  EXPECT_FALSE(r[0]->ended);
  EXPECT_TRUE(r[1]->ended);
  EXPECT_EQ(guard.ended(), 3);
  for (int i = 0; i < 4; ++i) guard.ReadOver(r[i].get(), 0);
  EXPECT_EQ(guard.pending(), 0);
}

TEST(StreamReadGuard, MoreEndOnceTheSettleTimeHasPassed) {
  std::atomic<int64_t> untracked{200};
  StreamReadGuard guard(Options(&untracked, absl::Hours(1), absl::Milliseconds(1)));
  FakeReader a(&guard), b(&guard);
  guard.Reading(&a);
  guard.Reading(&b);
  FakeReader c(&guard);
  guard.Reading(&c);
  guard.Check();  // 3 pending: the latest of the 2 that may end
  EXPECT_TRUE(c.ended);
  EXPECT_FALSE(b.ended);
  absl::SleepFor(absl::Milliseconds(5));
  guard.Check();
  EXPECT_TRUE(b.ended);
  absl::SleepFor(absl::Milliseconds(5));
  guard.Check();  // the oldest read goes on, whatever the memory
  EXPECT_FALSE(a.ended);
  EXPECT_EQ(guard.ended(), 2);
  for (FakeReader* r : {&a, &b, &c}) guard.ReadOver(r, 0);
}

// The race the claim guards against: the reader's read completes (ReadOver,
// on gRPC's thread) after the guard chose it but before its end began; the
// reader must not go away meanwhile.
TEST(StreamReadGuard, AReadCompletingWhileItsStreamIsChosenWaitsForTheEnd) {
  std::atomic<int64_t> untracked{200};
  StreamReadGuard guard(Options(&untracked));
  FakeReader oldest(&guard), a(&guard);
  guard.Reading(&oldest);
  guard.Reading(&a);
  absl::Notification in_end, read_over;
  std::atomic<bool> ended_before_read_over{false};
  a.before_ending = [&] {
    in_end.Notify();
    // ReadOver is blocked now: it must not return before Ending.
    EXPECT_FALSE(read_over.WaitForNotificationWithTimeout(absl::Milliseconds(50)));
  };
  std::thread grpc([&] {
    in_end.WaitForNotification();
    guard.ReadOver(&a, 0);
    ended_before_read_over = a.ended.load();
    read_over.Notify();
  });
  guard.Check();
  grpc.join();
  EXPECT_TRUE(ended_before_read_over);
  guard.ReadOver(&oldest, 0);
  EXPECT_EQ(guard.pending(), 0);
}

TEST(StreamReadGuard, TheWatchdogEndsReadsByItself) {
  std::atomic<int64_t> untracked{0};
  StreamReadGuard guard(Options(&untracked, absl::Milliseconds(1)));
  FakeReader a(&guard), b(&guard);
  guard.Reading(&a);
  guard.Reading(&b);
  absl::SleepFor(absl::Milliseconds(20));
  EXPECT_FALSE(b.ended);
  untracked = 1000;
  for (int i = 0; i < 2000 && !b.ended; ++i) absl::SleepFor(absl::Milliseconds(1));
  EXPECT_TRUE(b.ended);
  EXPECT_FALSE(a.ended);
  guard.ReadOver(&a, 0);
  guard.ReadOver(&b, 0);
}

// From three quarters of the allowance (the uploads' part) reads are
// deferred, then started in the order they came, as many as the room left
// takes messages of the largest size seen lately; a stream that ends while
// deferred is forgotten and never started.
TEST(StreamReadGuard, ReadsWaitWhileTheRoomIsUsedUpThenStartInOrder) {
  constexpr int64_t kMiB = int64_t{1} << 20;
  std::atomic<int64_t> untracked{0};
  StreamReadGuard::Options o = Options(&untracked);
  o.allowance_bytes = 100 * kMiB;  // from 75 MiB the room is used up
  StreamReadGuard guard(std::move(o));
  FakeReader first(&guard), idle(&guard);
  ASSERT_TRUE(guard.Reading(&first));
  ASSERT_TRUE(guard.Reading(&idle));  // a stream reading all along (the guard samples)
  guard.ReadOver(&first, 20 * kMiB);  // the largest message lately
  untracked = 75 * kMiB;
  guard.Check();
  std::vector<std::unique_ptr<FakeReader>> r;
  for (int i = 0; i < 5; ++i) {
    r.push_back(std::make_unique<FakeReader>(&guard));
    EXPECT_FALSE(guard.Reading(r.back().get()));
  }
  EXPECT_EQ(guard.deferred(), 5);
  guard.Forget(r[1].get());  // its stream ended while deferred: never started
  EXPECT_EQ(guard.deferred(), 4);
  guard.Check();  // used up: one trickles through, then one a `settle` (an hour here)
  EXPECT_EQ(guard.deferred(), 3);
  EXPECT_TRUE(r[0]->started);
  guard.Check();
  EXPECT_FALSE(r[2]->started);
  untracked = 30 * kMiB;
  guard.Check();  // 45 MiB of room, less r0's message (its bytes may not show yet)
  EXPECT_TRUE(r[2]->started);
  EXPECT_FALSE(r[3]->started);
  // No longer pressed, but a read asked for while others wait queues behind them.
  FakeReader late(&guard);
  EXPECT_FALSE(guard.Reading(&late));
  guard.ReadOver(r[0].get(), 20 * kMiB);
  guard.ReadOver(r[2].get(), 20 * kMiB);
  guard.Check();  // 45 MiB of room: two messages of 20 MiB
  EXPECT_TRUE(r[3]->started);
  EXPECT_TRUE(r[4]->started);
  EXPECT_FALSE(late.started);
  guard.ReadOver(r[3].get(), 20 * kMiB);
  guard.ReadOver(r[4].get(), 20 * kMiB);
  untracked = 0;
  guard.Check();
  EXPECT_TRUE(late.started);
  EXPECT_FALSE(r[1]->started);
  EXPECT_EQ(guard.deferred(), 0);
  FakeReader now(&guard);
  EXPECT_TRUE(guard.Reading(&now));  // nothing waits: it starts at once
  guard.ReadOver(&late, 0);
  guard.ReadOver(&now, 0);
  guard.ReadOver(&idle, 0);
  EXPECT_EQ(guard.pending(), 0);
}

// While the room stays used up (between three quarters of the allowance and
// all of it), one deferred read starts every `settle`: streams slow down but
// never stall.
TEST(StreamReadGuard, ReadsTrickleWhileTheRoomStaysUsedUp) {
  std::atomic<int64_t> untracked{80};
  StreamReadGuard guard(Options(&untracked, absl::Hours(1), absl::Milliseconds(20)));
  FakeReader idle(&guard);
  ASSERT_TRUE(guard.Reading(&idle));  // a stream reading all along (the guard samples)
  guard.Check();
  FakeReader a(&guard), b(&guard);
  EXPECT_FALSE(guard.Reading(&a));
  EXPECT_FALSE(guard.Reading(&b));
  guard.Check();
  EXPECT_TRUE(a.started);
  EXPECT_FALSE(b.started);
  guard.Check();
  EXPECT_FALSE(b.started);
  absl::SleepFor(absl::Milliseconds(30));
  guard.Check();
  EXPECT_TRUE(b.started);
  guard.ReadOver(&a, 0);
  guard.ReadOver(&b, 0);
  guard.ReadOver(&idle, 0);
}

// A stream finishing while the guard is about to start its deferred read:
// Forget waits for the start (which sees the stream over and starts nothing).
TEST(StreamReadGuard, ForgetWaitsForAStartUnderWay) {
  // Holds the start until the finishing thread is waiting in Forget.
  class Slow final : public StreamReadGuard::Reader {
   public:
    Slow(StreamReadGuard* g, absl::Notification* in, std::atomic<bool>* forgot)
        : g_(g), in_(in), forgot_(forgot) {}
    void StartDeferredRead() override {
      in_->Notify();
      absl::SleepFor(absl::Milliseconds(50));
      EXPECT_FALSE(forgot_->load()) << "Forget returned before the start";
      g_->Started(this, false);  // the stream is over: nothing started
    }
    void EndWhileReading() override {}

   private:
    StreamReadGuard* g_;
    absl::Notification* in_;
    std::atomic<bool>* forgot_;
  };
  std::atomic<int64_t> untracked{80};
  StreamReadGuard guard(Options(&untracked));
  FakeReader idle(&guard);
  ASSERT_TRUE(guard.Reading(&idle));  // a stream reading all along (the guard samples)
  guard.Check();
  absl::Notification in_start;
  std::atomic<bool> forgot{false};
  Slow slow(&guard, &in_start, &forgot);
  EXPECT_FALSE(guard.Reading(&slow));
  untracked = 0;
  std::thread finishing([&] {
    in_start.WaitForNotification();
    guard.Forget(&slow);
    forgot = true;
  });
  guard.Check();
  finishing.join();
  EXPECT_TRUE(forgot);
  guard.ReadOver(&idle, 0);
  EXPECT_EQ(guard.pending(), 0);
}

}  // namespace
}  // namespace server
}  // namespace attention
