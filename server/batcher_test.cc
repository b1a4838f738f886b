#include "server/batcher.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <future>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "core/test_util.h"

namespace attention {
namespace server {
namespace {

using ::attention::testing::RandomTensor;

// What several requests share: the model's weights, the shapes past B.
struct Kind {
  int64_t L = 3, S = 5, E = 16, H = 4;
  bool self_attention = true;
  bool projection = true;
  bool padding = false;  // a bool key_padding_mask [B, S]
  bool causal = false;
  WeightsMode weights = WeightsMode::kNone;
};

// One request of a Kind, owning its inputs and outputs.
struct Member {
  FloatTensor query, key, value;
  std::vector<char> padding;
  AttentionArgs args;
  VectorOutputs outputs;
  std::mutex mu;
  std::condition_variable cv;
  bool answered = false;
  absl::Status status;

  Batcher::Request Request() {
    Batcher::Request r;
    r.args = &args;
    r.outputs = &outputs;
    r.check = [] { return absl::OkStatus(); };
    r.done = [this](const absl::Status& s) {
      std::lock_guard<std::mutex> lock(mu);
      status = s;
      answered = true;
      cv.notify_all();
    };
    return r;
  }
  absl::Status Wait() {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [this] { return answered; });
    return status;
  }
};

class Model {
 public:
  explicit Model(const Kind& kind, std::mt19937& rng) : kind_(kind) {
    const float ws = 1.0f / std::sqrt(static_cast<float>(kind.E));
    in_ = RandomTensor({3 * kind.E, kind.E}, rng, ws);
    bias_ = RandomTensor({3 * kind.E}, rng);
    out_ = RandomTensor({kind.E, kind.E}, rng, ws);
    weights_.in_proj_weight = in_.view();
    weights_.in_proj_bias = bias_.view();
    weights_.out_proj_weight = out_.view();
  }

  std::unique_ptr<Member> Make(int64_t batch, std::mt19937& rng) const {
    auto m = std::make_unique<Member>();
    const Kind& k = kind_;
    m->query = RandomTensor({batch, k.L, k.E}, rng);
    AttentionArgs& a = m->args;
    a.query = m->query.view();
    a.self_attention = k.self_attention;
    if (!k.self_attention) {
      m->key = RandomTensor({batch, k.S, k.E}, rng);
      m->value = RandomTensor({batch, k.S, k.E}, rng);
      a.key = m->key.view();
      a.value = m->value.view();
    }
    if (k.padding) {
      const int64_t keys = k.self_attention ? k.L : k.S;
      m->padding.resize(batch * keys);
      for (size_t i = 0; i < m->padding.size(); ++i) m->padding[i] = (rng() % 3 == 0);
      a.key_padding_mask =
          TensorView{DType::kBool, {batch, keys}, m->padding.data(), m->padding.size()};
    }
    a.num_heads = k.H;
    a.causal = k.causal;
    a.weights = k.weights;
    if (k.projection) a.projection = &weights_;
    return m;
  }

 private:
  Kind kind_;
  FloatTensor in_, bias_, out_;
  ProjectionWeights weights_;
};

// Max |got - want| over max |want| (the contract's measure).
double RelativeError(const FloatTensor& got, const FloatTensor& want) {
  EXPECT_EQ(got.shape, want.shape);
  if (got.data.size() != want.data.size()) return 1e9;
  double diff = 0, scale = 1e-30;
  for (size_t i = 0; i < got.data.size(); ++i) {
    diff = std::max(diff, static_cast<double>(std::fabs(got.data[i] - want.data[i])));
    scale = std::max(scale, static_cast<double>(std::fabs(want.data[i])));
  }
  return diff / scale;
}

// Each member's result equals what its own call computes.
void ExpectAsAlone(const std::vector<std::unique_ptr<Member>>& members) {
  for (const auto& m : members) {
    VectorOutputs alone;
    ASSERT_TRUE(ComputeAttention(m->args, {}, &alone).ok());
    EXPECT_LE(RelativeError(m->outputs.output, alone.output), 1e-5);
    if (m->args.weights != WeightsMode::kNone) {
      EXPECT_LE(RelativeError(m->outputs.weights, alone.weights), 1e-5);
    }
  }
}

class MergedTest : public ::testing::TestWithParam<Kind> {};

TEST_P(MergedTest, EachMemberGetsItsOwnAnswer) {
  std::mt19937 rng(7);
  const Model model(GetParam(), rng);
  std::vector<std::unique_ptr<Member>> members;
  std::vector<const AttentionArgs*> args;
  std::vector<OutputBuffers*> outputs;
  for (int64_t b : {1, 2, 1, 3}) {
    members.push_back(model.Make(b, rng));
    args.push_back(&members.back()->args);
    outputs.push_back(&members.back()->outputs);
    ASSERT_TRUE(Batcher::Batchable(members.back()->args, nullptr));
    ASSERT_TRUE(Batcher::Compatible(members[0]->args, members.back()->args));
  }
  ASSERT_TRUE(Batcher::ComputeMerged(args, {}, outputs).ok());
  ExpectAsAlone(members);
}

// A merged computation's own copies (the concatenated inputs, the whole
// results) are reserved in the memory budget while it runs: refused when
// they do not fit, given back after.
TEST_P(MergedTest, ItsCopiesAreReservedInTheMemoryBudget) {
  std::mt19937 rng(7);
  const Model model(GetParam(), rng);
  std::vector<std::unique_ptr<Member>> members;
  std::vector<const AttentionArgs*> args;
  std::vector<OutputBuffers*> outputs;
  int64_t copies = 0;  // inputs and results of the members, in bytes
  for (int64_t b : {1, 2, 3}) {
    members.push_back(model.Make(b, rng));
    args.push_back(&members.back()->args);
    outputs.push_back(&members.back()->outputs);
    const AttentionArgs& a = members.back()->args;
    for (const auto& t : {std::optional<TensorView>(a.query), a.key, a.value, a.key_padding_mask}) {
      if (t) copies += static_cast<int64_t>(t->byte_size);
    }
    const absl::StatusOr<AttentionPlanInfo> info = PlanAttention(a, {});
    ASSERT_TRUE(info.ok()) << info.status();
    copies += 4 * ShapeProduct(info->output_shape);
    if (!info->weights_shape.empty()) copies += 4 * ShapeProduct(info->weights_shape);
  }
  MemoryBudget small(copies - 1);
  const absl::Status refused = Batcher::ComputeMerged(args, {}, outputs, &small);
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_THAT(std::string(refused.message()), ::testing::HasSubstr("memory budget"));
  EXPECT_EQ(small.used(), 0);
  MemoryBudget enough(copies);
  ASSERT_TRUE(Batcher::ComputeMerged(args, {}, outputs, &enough).ok());
  EXPECT_EQ(enough.used(), 0);
  ExpectAsAlone(members);
}

Kind SelfAttentionWithModel() { return {}; }
Kind AveragedWeightsPaddingCausal() {
  Kind k;
  k.padding = true;
  k.causal = true;
  k.weights = WeightsMode::kAveraged;
  return k;
}
Kind ScaledDotProductPerHead() {
  Kind k;
  k.self_attention = false;
  k.projection = false;
  k.padding = true;
  k.weights = WeightsMode::kPerHead;
  return k;
}

INSTANTIATE_TEST_SUITE_P(Kinds, MergedTest,
                         ::testing::Values(SelfAttentionWithModel(), AveragedWeightsPaddingCausal(),
                                           ScaledDotProductPerHead()));

TEST(BatcherTest, OnlyTheSameComputationIsMerged) {
  std::mt19937 rng(1);
  const Model model({}, rng);
  auto a = model.Make(1, rng);
  auto b = model.Make(4, rng);
  EXPECT_TRUE(Batcher::Compatible(a->args, b->args));

  Kind longer;
  longer.L = 4;
  const Model other_length(longer, rng);
  EXPECT_FALSE(Batcher::Compatible(a->args, other_length.Make(1, rng)->args));
  const Model other_weights({}, rng);  // same shapes, other weights
  EXPECT_FALSE(Batcher::Compatible(a->args, other_weights.Make(1, rng)->args));
  auto causal = model.Make(1, rng);
  causal->args.causal = true;
  EXPECT_FALSE(Batcher::Compatible(a->args, causal->args));
  auto scaled = model.Make(1, rng);
  scaled->args.scale = 0.5f;
  EXPECT_FALSE(Batcher::Compatible(a->args, scaled->args));
  auto bf16 = model.Make(1, rng);  // a float32 request is never computed in bfloat16
  bf16->args.precision = Precision::kBFloat16;
  EXPECT_FALSE(Batcher::Compatible(a->args, bf16->args));

  // Never merged at all: inline weights, an attn_mask, unbatched inputs.
  EXPECT_FALSE(Batcher::Batchable(a->args, a->args.projection));
  auto masked = model.Make(1, rng);
  std::vector<char> mask(3 * 3, 0);
  masked->args.attn_mask = TensorView{DType::kBool, {3, 3}, mask.data(), mask.size()};
  EXPECT_FALSE(Batcher::Batchable(masked->args, nullptr));
  auto unbatched = model.Make(1, rng);
  unbatched->args.query.shape = {3, 16};
  EXPECT_FALSE(Batcher::Batchable(unbatched->args, nullptr));
}

// A single-worker executor held busy until Release(), so that requests
// accumulate as they do while compute is busy.
class BusyExecutor {
 public:
  explicit BusyExecutor(size_t max_queue = 64) : executor_({1, 1, max_queue, false}) {
    std::promise<void> running;
    executor_.TrySubmit([this, &running] {
      running.set_value();
      release_.get_future().wait();
    });
    running.get_future().wait();  // the worker is busy, nothing queued
  }
  ~BusyExecutor() {
    if (!released_) Release();  // a failed test must not hang in Shutdown
  }
  void Release() {
    released_ = true;
    release_.set_value();
  }
  Executor* get() { return &executor_; }

 private:
  std::promise<void> release_;
  bool released_ = false;
  Executor executor_;
};

struct Recorded {
  std::mutex mu;
  std::vector<int> sizes;
  Batcher::Options Options(int64_t delay_us, int max_size) {
    Batcher::Options o;
    o.delay_us = delay_us;
    o.max_size = max_size;
    o.max_threads = 1;
    o.on_batch = [this](int size) {
      std::lock_guard<std::mutex> lock(mu);
      sizes.push_back(size);
    };
    return o;
  }
  std::vector<int> Sizes() {
    std::lock_guard<std::mutex> lock(mu);
    return sizes;
  }
};

// Submits `count` requests (B = 1 or 2) while compute is busy, then lets it
// run; returns the batch sizes, after checking every answer. `budget`: the
// batcher's memory budget (optional).
std::vector<int> BatchesOfQueued(int count, int max_size, MemoryBudget* budget = nullptr) {
  std::mt19937 rng(2);
  const Model model({}, rng);
  Recorded recorded;
  BusyExecutor busy;
  Batcher::Options options = recorded.Options(100, max_size);
  options.budget = budget;
  Batcher batcher(busy.get(), std::move(options));
  std::vector<std::unique_ptr<Member>> members;
  for (int i = 0; i < count; ++i) {
    members.push_back(model.Make(1 + i % 2, rng));
    EXPECT_TRUE(batcher.Submit(members.back()->Request()));
  }
  busy.Release();
  for (auto& m : members) EXPECT_TRUE(m->Wait().ok());
  busy.get()->Shutdown();
  ExpectAsAlone(members);
  return recorded.Sizes();
}

TEST(BatcherTest, RequestsThatWaitedForComputeRunAsOneBatch) {
  EXPECT_EQ(BatchesOfQueued(5, 32), std::vector<int>({5}));
}

TEST(BatcherTest, BatchesHoldAtMostMaxSize) {
  EXPECT_EQ(BatchesOfQueued(5, 2), std::vector<int>({2, 2, 1}));
}

// A lone request starts at once: the delay (here 5 s) never applies to it.
TEST(BatcherTest, ALoneRequestDoesNotWaitForCompany) {
  std::mt19937 rng(4);
  const Model model({}, rng);
  Executor executor({1, 1, 64, false});
  Recorded recorded;
  Batcher batcher(&executor, recorded.Options(5'000'000, 32));
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 3; ++i) {
    auto m = model.Make(1, rng);
    ASSERT_TRUE(batcher.Submit(m->Request()));
    EXPECT_TRUE(m->Wait().ok());
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
  executor.Shutdown();
  EXPECT_EQ(recorded.Sizes(), std::vector<int>({1, 1, 1}));
}

// After a batch with company, a worker waits (up to the delay) for the rest
// of the callers instead of computing the first one back alone.
TEST(BatcherTest, UnderConcurrentTrafficAWorkerWaitsForCompany) {
  std::mt19937 rng(5);
  const Model model({}, rng);
  BusyExecutor busy;
  Recorded recorded;
  Batcher batcher(busy.get(), recorded.Options(5'000'000, 2));
  auto a = model.Make(1, rng), b = model.Make(1, rng);
  ASSERT_TRUE(batcher.Submit(a->Request()));
  ASSERT_TRUE(batcher.Submit(b->Request()));
  busy.Release();
  ASSERT_TRUE(a->Wait().ok());
  ASSERT_TRUE(b->Wait().ok());
  const auto start = std::chrono::steady_clock::now();
  auto c = model.Make(1, rng), d = model.Make(1, rng);
  ASSERT_TRUE(batcher.Submit(c->Request()));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_TRUE(batcher.Submit(d->Request()));
  EXPECT_TRUE(c->Wait().ok());
  EXPECT_TRUE(d->Wait().ok());
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));  // full: no delay
  busy.get()->Shutdown();
  EXPECT_EQ(recorded.Sizes(), std::vector<int>({2, 2}));
}

// A member whose caller left is answered with its own status; the others
// are computed and exact.
TEST(BatcherTest, ACancelledMemberDoesNotFailTheOthers) {
  std::mt19937 rng(6);
  const Model model({}, rng);
  BusyExecutor busy;
  Recorded recorded;
  Batcher batcher(busy.get(), recorded.Options(100, 32));
  std::vector<std::unique_ptr<Member>> members;
  for (int i = 0; i < 3; ++i) members.push_back(model.Make(1, rng));
  for (int i = 0; i < 3; ++i) {
    Batcher::Request r = members[i]->Request();
    if (i == 1) r.check = [] { return absl::CancelledError("the call was cancelled"); };
    ASSERT_TRUE(batcher.Submit(std::move(r)));
  }
  busy.Release();
  EXPECT_TRUE(members[0]->Wait().ok());
  EXPECT_EQ(members[1]->Wait().code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(members[2]->Wait().ok());
  busy.get()->Shutdown();
  members.erase(members.begin() + 1);
  ExpectAsAlone(members);
}

// When the executor's queue is full, Submit refuses and never calls done.
// A batch whose copies do not fit the memory budget computes its members
// one by one: every answer still right, nothing left reserved (the refusal
// itself: MergedTest.ItsCopiesAreReservedInTheMemoryBudget).
TEST(BatcherTest, ABatchOverTheMemoryBudgetComputesItsMembersAlone) {
  MemoryBudget budget(64);  // far below any batch's copies
  EXPECT_EQ(BatchesOfQueued(3, 32, &budget), std::vector<int>({3}));  // its members alone
  EXPECT_EQ(budget.used(), 0);
}

TEST(BatcherTest, AFullQueueRefuses) {
  std::mt19937 rng(8);
  const Model model({}, rng);
  BusyExecutor busy(/*max_queue=*/1);
  Recorded recorded;
  Batcher batcher(busy.get(), recorded.Options(100, 32));
  auto queued = model.Make(1, rng), refused = model.Make(1, rng);
  ASSERT_TRUE(batcher.Submit(queued->Request()));
  EXPECT_FALSE(batcher.Submit(refused->Request()));
  busy.Release();
  EXPECT_TRUE(queued->Wait().ok());
  busy.get()->Shutdown();
  EXPECT_FALSE(refused->answered);
  EXPECT_EQ(recorded.Sizes(), std::vector<int>({1}));
}

// A request a batch has answered leaves its executor task queued until a
// worker pops it (a no-op then): such tasks do not fill the queue.
TEST(BatcherTest, AnsweredRequestsDoNotFillTheQueue) {
  std::mt19937 rng(9);
  const Model model({}, rng);
  BusyExecutor busy(/*max_queue=*/2);
  Recorded recorded;
  Batcher batcher(busy.get(), recorded.Options(100, 32));
  auto a = model.Make(1, rng), b = model.Make(1, rng);
  std::promise<void> computing, gate;
  std::shared_future<void> opened = gate.get_future().share();
  Batcher::Request held = a->Request();
  held.started = [&computing, opened] {
    computing.set_value();
    opened.wait();  // the batch of a and b computes until the gate opens
  };
  ASSERT_TRUE(batcher.Submit(std::move(held)));
  ASSERT_TRUE(batcher.Submit(b->Request()));  // the queue is full: a's task and b's
  busy.Release();
  computing.get_future().wait();  // a's task took b along: b's task is a no-op now
  EXPECT_EQ(batcher.answered_queued(), 1u);
  EXPECT_EQ(busy.get()->queued(), 1u);
  std::vector<Member*> accepted = {a.get(), b.get()};
  std::vector<bool> admitted;
  std::vector<std::unique_ptr<Member>> more;
  for (int i = 0; i < 3; ++i) {
    more.push_back(model.Make(1, rng));
    admitted.push_back(batcher.Submit(more.back()->Request()));
    if (admitted.back()) accepted.push_back(more.back().get());
  }
  // Two fit (the second is refused if b's no-op counts), the third not.
  EXPECT_EQ(admitted, std::vector<bool>({true, true, false}));
  gate.set_value();
  for (Member* m : accepted) EXPECT_TRUE(m->Wait().ok());
  busy.get()->Shutdown();
  EXPECT_EQ(batcher.answered_queued(), 0u);
  EXPECT_EQ(recorded.Sizes(), std::vector<int>({2, 2}));
}

}  // namespace
}  // namespace server
}  // namespace attention
