#include "server/stream_flow.h"

#include <atomic>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "grpcpp/support/slice.h"
#include "gtest/gtest.h"

namespace attention {
namespace server {
namespace {

grpc::ByteBuffer Text(const std::string& s) {
  grpc::Slice slice(s);
  return grpc::ByteBuffer(&slice, 1);
}

std::string TextOf(const grpc::ByteBuffer& b) {
  std::vector<grpc::Slice> slices;
  if (!b.Dump(&slices).ok()) return "<unreadable>";
  std::string s;
  for (const grpc::Slice& x : slices) s.append(reinterpret_cast<const char*>(x.begin()), x.size());
  return s;
}

// A stream whose actions are recorded instead of sent to gRPC, with gRPC's
// rules checked as they happen: the tests play gRPC and the executor.
class RecordingStream final : public StreamFlow {
 public:
  struct Message : Slot {
    int index = 0;
  };

  explicit RecordingStream(int max_in_flight, StreamReadGuard* guard = nullptr)
      : StreamFlow(max_in_flight, guard), max_(max_in_flight) {}

  // A message read: answered at once when `malformed` (as a parse error is).
  static std::shared_ptr<Slot> NewMessage(int index, bool malformed) {
    auto m = std::make_shared<Message>();
    m->index = index;
    if (malformed) {
      m->response = Text("bad " + std::to_string(index));
      m->answered = true;
    }
    return m;
  }
  static std::string AnswerOf(int index) { return "answer " + std::to_string(index); }

  // Plays the executor: the computation issued k-th among those pending ends.
  void Compute(size_t k) {
    std::shared_ptr<Slot> s = computing_[k];
    computing_.erase(computing_.begin() + k);
    Computed(s, Text(AnswerOf(static_cast<Message&>(*s).index)));
  }
  // Plays gRPC: the pending write ends.
  void EndWrite(bool ok) {
    write_pending_ = false;
    if (!ok) write_failed_ = true;
    if (ok) heard_.push_back(writing_);
    ++writes_done_;
    WriteDone(ok);
  }
  void EndRead(const std::shared_ptr<Slot>& slot, int64_t bytes = 0) {
    read_pending_ = false;
    if (slot != nullptr) ++reads_;
    ReadDone(slot, bytes);
  }

  bool read_pending() const { return read_pending_; }
  bool write_pending() const { return write_pending_; }
  size_t computing() const { return computing_.size(); }
  int computations_issued() const { return computations_issued_; }
  int finishes() const { return finishes_; }
  bool finished_cut() const { return finished_cut_; }
  const std::vector<std::string>& heard() const { return heard_; }  // responses written ok
  const std::string& violation() const { return violation_; }       // first rule broken
  bool refuse_computations = false;                                 // as a full executor does

 private:
  void Violate(const std::string& what) {
    if (violation_.empty()) violation_ = what;
  }
  void IssueRead() override {
    if (read_pending_) Violate("a second read while one is pending");
    if (finishes_ > 0) Violate("a read after Finish");
    if (reads_ - writes_done_ >= max_) Violate("a read beyond max_in_flight");
    if (cut()->load() || write_failed_) Violate("a read nobody will answer");
    read_pending_ = true;
  }
  void IssueWrite(const Slot& slot) override {
    if (write_pending_) Violate("a second write while one is pending");
    if (finishes_ > 0) Violate("a write after Finish");
    if (cut()->load() || write_failed_) Violate("a write nobody will hear");
    const int index = static_cast<const Message&>(slot).index;
    if (index != next_write_) Violate("a write out of order: " + std::to_string(index));
    ++next_write_;
    writing_ = TextOf(slot.response);
    write_pending_ = true;
  }
  bool IssueCompute(const std::shared_ptr<Slot>& slot) override {
    ++computations_issued_;
    if (cut()->load() || write_failed_) Violate("a computation nobody will hear");
    if (refuse_computations) {
      slot->response = Text("refused " + std::to_string(static_cast<Message&>(*slot).index));
      return false;
    }
    computing_.push_back(slot);
    return true;
  }
  void IssueFinish(bool cut) override {
    if (finishes_ > 0) Violate("Finish twice");
    if ((read_pending_ && !draining() && !ended_by_guard()) || write_pending_ ||
        !computing_.empty()) {
      Violate("Finish with a read, write or computation pending");
    }
    ++finishes_;
    finished_cut_ = cut;
  }

  const int max_;
  bool read_pending_ = false;
  bool write_pending_ = false;
  bool write_failed_ = false;
  std::vector<std::shared_ptr<Slot>> computing_;
  int computations_issued_ = 0;
  int reads_ = 0;
  int writes_done_ = 0;
  int next_write_ = 0;
  std::string writing_;
  std::vector<std::string> heard_;
  int finishes_ = 0;
  bool finished_cut_ = false;
  std::string violation_;
};

// The race that hung shutdown: the read pending when the client cancelled
// completes with a message. Nothing computes it and the stream finishes.
TEST(StreamFlow, AReadCompletingAfterTheCancellationFinishesTheStream) {
  RecordingStream s(4);
  s.Begin();
  ASSERT_TRUE(s.read_pending());
  s.Cancelled();
  EXPECT_EQ(s.finishes(), 0);  // the read is pending
  s.EndRead(RecordingStream::NewMessage(0, false));
  EXPECT_EQ(s.computations_issued(), 0);
  EXPECT_FALSE(s.read_pending());
  EXPECT_EQ(s.finishes(), 1);
  EXPECT_TRUE(s.finished_cut());
  EXPECT_EQ(s.violation(), "");
}

TEST(StreamFlow, ACancellationWhileComputingFinishesWhenTheComputationReports) {
  RecordingStream s(4);
  s.Begin();
  s.EndRead(RecordingStream::NewMessage(0, false));
  ASSERT_EQ(s.computing(), 1u);
  ASSERT_TRUE(s.read_pending());
  s.Cancelled();
  s.EndRead(nullptr);          // reads fail after a cancellation
  EXPECT_EQ(s.finishes(), 0);  // the computation still refers to the stream
  EXPECT_TRUE(s.cut()->load());
  s.Compute(0);
  EXPECT_FALSE(s.write_pending());  // nobody hears it
  EXPECT_EQ(s.finishes(), 1);
  EXPECT_TRUE(s.finished_cut());
  EXPECT_EQ(s.violation(), "");
}

// Draining: what was read is answered and written, then the stream finishes
// without waiting for the client's next message; one that arrives after is
// not computed.
TEST(StreamFlow, ADrainingStreamAnswersWhatItReadThenFinishes) {
  RecordingStream s(4);
  s.Begin();
  s.EndRead(RecordingStream::NewMessage(0, false));
  s.EndRead(RecordingStream::NewMessage(1, false));
  ASSERT_TRUE(s.read_pending());
  s.Drain();
  EXPECT_EQ(s.finishes(), 0);  // two computations pending
  s.Compute(0);
  s.EndWrite(true);
  EXPECT_EQ(s.finishes(), 0);
  s.Compute(0);
  EXPECT_EQ(s.finishes(), 0);  // its answer is being written
  s.EndWrite(true);
  EXPECT_EQ(s.finishes(), 1);
  EXPECT_FALSE(s.finished_cut());
  EXPECT_THAT(s.heard(), ::testing::ElementsAre("answer 0", "answer 1"));
  s.EndRead(RecordingStream::NewMessage(2, false));  // the pending read, after Finish
  EXPECT_EQ(s.computations_issued(), 2);
  EXPECT_EQ(s.finishes(), 1);
  EXPECT_EQ(s.violation(), "");
}

TEST(StreamFlow, AnswersInOrderAndFinishesOkAfterTheClientsLastMessage) {
  RecordingStream s(2);
  s.Begin();
  s.EndRead(RecordingStream::NewMessage(0, false));
  s.EndRead(RecordingStream::NewMessage(1, true));  // malformed: answered at once
  EXPECT_FALSE(s.read_pending());                   // two in flight: reading stops
  EXPECT_FALSE(s.write_pending());                  // 0 comes first
  s.Compute(0);
  ASSERT_TRUE(s.write_pending());
  s.EndWrite(true);
  EXPECT_TRUE(s.read_pending());  // room again
  ASSERT_TRUE(s.write_pending());
  s.EndWrite(true);
  s.EndRead(nullptr);  // the client's writes are done
  EXPECT_EQ(s.finishes(), 1);
  EXPECT_FALSE(s.finished_cut());
  EXPECT_THAT(s.heard(), ::testing::ElementsAre("answer 0", "bad 1"));
  EXPECT_EQ(s.violation(), "");
}

TEST(StreamFlow, ARefusedComputationIsAnsweredWithItsError) {
  RecordingStream s(4);
  s.refuse_computations = true;
  s.Begin();
  s.EndRead(RecordingStream::NewMessage(0, false));
  ASSERT_TRUE(s.write_pending());
  s.EndWrite(true);
  s.EndRead(nullptr);
  EXPECT_THAT(s.heard(), ::testing::ElementsAre("refused 0"));
  EXPECT_EQ(s.finishes(), 1);
  EXPECT_EQ(s.violation(), "");
}

// gRPC and the executor report in any order; random orders, many of them,
// each checked against the rules (as they happen) and the outcome.
TEST(StreamFlow, EveryOrderOfEventsKeepsTheRulesAndEnds) {
  // How often the rare orders came up over all seeds (none would mean the
  // test did not try them).
  int reads_after_cancel = 0, writes_ok_after_cancel = 0, cancels_after_finish = 0;
  int refusals_heard = 0, bad_heard = 0;
  for (uint32_t seed = 0; seed < 20000; ++seed) {
    std::mt19937 rng(seed);
    auto chance = [&rng](int percent) {
      return std::uniform_int_distribution<int>(0, 99)(rng) < percent;
    };
    const int max_in_flight = 1 + static_cast<int>(rng() % 4);
    const int messages = static_cast<int>(rng() % 8);
    const bool will_cancel = chance(40);
    const bool will_drop = !will_cancel && chance(20);  // a write fails: the connection broke
    RecordingStream s(max_in_flight);
    s.refuse_computations = chance(10);
    s.Begin();
    int sent = 0;
    bool cancelled = false;
    bool cut = false;                   // cancelled or a write failed before the stream finished
    std::vector<std::string> expected;  // the answer to each message sent
    for (int step = 0; step < 1000; ++step) {
      // The events that could happen now. A cancellation may also come after
      // Finish (the status did not reach the client).
      std::vector<int> events;
      if (s.read_pending()) events.push_back(0);
      if (s.write_pending()) events.push_back(1);
      if (s.computing() > 0) events.push_back(2);
      if (will_cancel && !cancelled) events.push_back(3);
      if (events.empty()) break;
      switch (events[rng() % events.size()]) {
        case 0: {
          // After a cancellation a read may still deliver a message.
          const bool more = sent < messages && (!cancelled || chance(50));
          const bool malformed = chance(15);
          if (more) {
            reads_after_cancel += cancelled;
            const std::string n = std::to_string(sent);
            expected.push_back(malformed               ? "bad " + n
                               : s.refuse_computations ? "refused " + n
                                                       : "answer " + n);
          }
          s.EndRead(more ? RecordingStream::NewMessage(sent, malformed) : nullptr);
          sent += more;
          break;
        }
        case 1: {
          const bool fail = (cancelled && chance(70)) || (will_drop && chance(30));
          writes_ok_after_cancel += cancelled && !fail;
          cut |= fail;
          s.EndWrite(!fail);
          if (fail) {
            ASSERT_TRUE(s.cut()->load()) << "seed " << seed << ": computations go on";
          }
          break;
        }
        case 2:
          s.Compute(rng() % s.computing());
          break;
        case 3:
          cancelled = true;
          cut |= s.finishes() == 0;
          cancels_after_finish += s.finishes() > 0;
          s.Cancelled();
          break;
      }
      ASSERT_EQ(s.violation(), "") << "seed " << seed;
    }
    ASSERT_EQ(s.finishes(), 1) << "seed " << seed << ": the stream never finished";
    ASSERT_FALSE(s.read_pending() || s.write_pending() || s.computing() > 0) << "seed " << seed;
    ASSERT_EQ(s.finished_cut(), cut) << "seed " << seed;
    if (!cut) {
      ASSERT_EQ(static_cast<int>(s.heard().size()), messages) << "seed " << seed;
    }
    ASSERT_LE(s.heard().size(), expected.size()) << "seed " << seed;
    for (size_t i = 0; i < s.heard().size(); ++i) {  // in order, each its own answer
      ASSERT_EQ(s.heard()[i], expected[i]) << "seed " << seed << " message " << i;
      refusals_heard += s.heard()[i].rfind("refused", 0) == 0;
      bad_heard += s.heard()[i].rfind("bad", 0) == 0;
    }
  }
  EXPECT_GT(reads_after_cancel, 0);
  EXPECT_GT(writes_ok_after_cancel, 0);
  EXPECT_GT(cancels_after_finish, 0);
  EXPECT_GT(refusals_heard, 0);
  EXPECT_GT(bad_heard, 0);
}

// A read guard with an allowance of 100 bytes, checked by the test itself.
StreamReadGuard::Options GuardOptions(std::atomic<int64_t>* untracked) {
  StreamReadGuard::Options o;
  o.allowance_bytes = 100;
  o.untracked = [untracked] { return untracked->load(); };
  o.period = absl::Hours(1);
  o.settle = absl::Hours(1);
  return o;
}

// The read guard ends a stream whose read is pending (its messages overshoot
// the transport's share): it finishes at once, after the computation in
// progress, without waiting for the read; the message that completes the
// read then is not computed, and the read leaves the guard.
TEST(StreamFlow, TheReadGuardEndsAStreamWithoutWaitingForItsRead) {
  std::atomic<int64_t> untracked{0};
  StreamReadGuard guard(GuardOptions(&untracked));
  RecordingStream oldest(1, &guard);  // its read pending first: never ended
  oldest.Begin();
  RecordingStream s(4, &guard);
  s.Begin();
  s.EndRead(RecordingStream::NewMessage(0, false));
  EXPECT_EQ(s.computing(), 1u);
  EXPECT_TRUE(s.read_pending());
  EXPECT_EQ(guard.pending(), 2);
  guard.Check();  // within the allowance
  EXPECT_EQ(s.finishes(), 0);
  untracked = 1000;
  guard.Check();
  EXPECT_TRUE(s.ended_by_guard());
  EXPECT_EQ(s.finishes(), 0);  // the computation first (it stops early: cut)
  s.Compute(0);
  EXPECT_EQ(s.finishes(), 1);
  EXPECT_TRUE(s.finished_cut());
  EXPECT_TRUE(s.heard().empty());
  s.EndRead(RecordingStream::NewMessage(1, false));  // gRPC's read completes after Finish
  EXPECT_EQ(s.computations_issued(), 1);
  EXPECT_EQ(guard.pending(), 1);
  EXPECT_EQ(guard.ended(), 1);
  EXPECT_EQ(s.violation(), "");
  EXPECT_EQ(oldest.finishes(), 0);
  oldest.EndRead(nullptr);  // the client's writes are done: it finishes OK
  EXPECT_EQ(oldest.finishes(), 1);
  EXPECT_FALSE(oldest.finished_cut());
  EXPECT_EQ(guard.pending(), 0);
}

// While the guard defers reads, the stream starts none; the guard starts it
// later. A stream cancelled while its read is deferred finishes at once (no
// read is pending at gRPC) and the guard forgets it.
TEST(StreamFlow, AReadTheGuardDefersStartsLaterOrNever) {
  std::atomic<int64_t> untracked{90};
  StreamReadGuard guard(GuardOptions(&untracked));
  RecordingStream idle(1, &guard);  // reading all along (the guard samples)
  idle.Begin();
  guard.Check();  // 90 of 100: the room is used up
  RecordingStream s(4, &guard), t(4, &guard);
  s.Begin();
  t.Begin();
  EXPECT_FALSE(s.read_pending());
  EXPECT_FALSE(t.read_pending());
  EXPECT_EQ(guard.deferred(), 2);
  t.Cancelled();
  EXPECT_EQ(t.finishes(), 1);
  EXPECT_TRUE(t.finished_cut());
  EXPECT_EQ(guard.deferred(), 1);
  untracked = 0;
  guard.Check();
  EXPECT_TRUE(s.read_pending());
  s.EndRead(RecordingStream::NewMessage(0, false), 10);
  EXPECT_EQ(s.computing(), 1u);
  s.Compute(0);
  s.EndWrite(true);
  s.EndRead(nullptr);
  EXPECT_EQ(s.finishes(), 1);
  EXPECT_FALSE(s.finished_cut());
  idle.EndRead(nullptr);
  EXPECT_EQ(guard.pending(), 0);
  EXPECT_EQ(s.violation(), "");
  EXPECT_EQ(t.violation(), "");
}

}  // namespace
}  // namespace server
}  // namespace attention
