// PlanAttention's memory estimate against what a computation really takes:
// each case runs in a child process of its own (fork), which warms the
// libraries up on a tiny call, resets its peak resident memory
// (/proc/self/clear_refs) and then computes; the growth of its peak must
// stay within the estimate (which the server reserves in its budget before
// computing) plus a constant, and the estimate must not be wildly above it
// (a budget that refuses for memory never used).
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "core/attention.h"
#include "core/test_util.h"
#include "gtest/gtest.h"

namespace attention {
namespace {

using testing::RandomTensor;

constexpr int64_t kMiB = 1 << 20;

struct Case {
  const char* name;
  std::vector<int64_t> query;  // [B, L, E]; self-attention unless kv_length > 0
  int64_t kv_length = 0;
  int heads = 8;
  WeightsMode weights = WeightsMode::kNone;
  bool projection = false;  // inline nn.MultiheadAttention weights
  bool causal = false;
  DType dtype = DType::kFloat32;
  Precision precision = Precision::kFloat32;
};

struct Measured {
  bool ok = false;  // planned and computed
  int64_t estimate = 0;
  int64_t peak_growth = 0;
};

// Runs `c` in this process: the estimate and the peak's growth while computing.
Measured Run(const Case& c) {
  std::mt19937 rng(11);
  const int64_t e = c.query[2];
  const FloatTensor x = RandomTensor(c.query, rng);
  FloatTensor kv;
  if (c.kv_length > 0) kv = RandomTensor({c.query[0], c.kv_length, e}, rng);
  std::vector<uint16_t> half;
  TensorView q = x.view();
  if (c.dtype == DType::kFloat16) {
    for (float v : x.data) half.push_back(FloatToHalf(v));
    q = TensorView{DType::kFloat16, x.shape, half.data(), half.size() * 2};
  }
  const FloatTensor in_w = RandomTensor({3 * e, e}, rng, 0.05f);
  const FloatTensor out_w = RandomTensor({e, e}, rng, 0.05f);
  ProjectionWeights w;
  w.in_proj_weight = in_w.view();
  w.out_proj_weight = out_w.view();

  AttentionArgs args;
  args.query = q;
  if (c.kv_length > 0) {
    args.key = kv.view();
    args.value = kv.view();
  } else {
    args.self_attention = true;
  }
  args.num_heads = c.heads;
  args.weights = c.weights;
  args.causal = c.causal;
  args.precision = c.precision;
  if (c.projection) args.projection = &w;
  ComputeOptions options;
  options.max_threads = 2;
  options.max_memory_bytes = int64_t{8} << 30;

  // The libraries' own first-use memory (oneDNN's kernels, OpenMP's threads)
  // is not the call's: a tiny call of the same kind first.
  {
    AttentionArgs tiny = args;
    const FloatTensor t = RandomTensor({1, 4, e}, rng);
    tiny.query = t.view();
    if (c.kv_length > 0) {
      tiny.key = t.view();
      tiny.value = t.view();
    }
    VectorOutputs out;
    EXPECT_TRUE(ComputeAttention(tiny, options, &out).ok());
  }
  Measured m;
  absl::StatusOr<AttentionPlanInfo> plan = PlanAttention(args, options);
  EXPECT_TRUE(plan.ok()) << plan.status();
  if (!plan.ok()) return m;
  m.estimate = plan->memory_bytes;
  std::ofstream("/proc/self/clear_refs") << "5";  // VmHWM := VmRSS
  const int64_t before = testing::ProcStatusBytes(0, "VmRSS");
  VectorOutputs out;
  const absl::Status s = ComputeAttention(args, options, &out);
  EXPECT_TRUE(s.ok()) << s;
  m.peak_growth = testing::ProcStatusBytes(0, "VmHWM") - before;
  m.ok = s.ok();
  return m;
}

// Runs `c` in a child process (so that the peak is this case's alone).
Measured RunInChild(const Case& c) {
  int fds[2];
  EXPECT_EQ(pipe(fds), 0);
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    const Measured m = Run(c);
    const bool written = write(fds[1], &m, sizeof m) == static_cast<ssize_t>(sizeof m);
    _exit(written ? 0 : 1);
  }
  close(fds[1]);
  Measured m;
  const bool read_all = read(fds[0], &m, sizeof m) == static_cast<ssize_t>(sizeof m);
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(read_all && m.ok && WIFEXITED(status) && WEXITSTATUS(status) == 0) << c.name;
  return m;
}

TEST(MemoryEstimateTest, ThePeakOfAComputationStaysWithinItsEstimate) {
  const std::vector<Case> cases = {
      {"rows, no weights", {4, 512, 512}},
      {"rows, no weights, large", {16, 512, 1024}, 0, 16},
      {"inline projection, large", {16, 512, 1024}, 0, 16, WeightsMode::kNone, true},
      {"per-head weights", {2, 256, 512}, 0, 8, WeightsMode::kPerHead},
      {"inline projection, averaged weights", {4, 256, 512}, 0, 8, WeightsMode::kAveraged, true},
      {"fused keys, causal", {1, 2048, 256}, 0, 4, WeightsMode::kNone, false, true},
      {"cross-attention, float16 query",
       {8, 128, 256},
       512,
       4,
       WeightsMode::kNone,
       false,
       false,
       DType::kFloat16},
      {"bfloat16 precision, inline projection",
       {4, 256, 512},
       0,
       8,
       WeightsMode::kNone,
       true,
       false,
       DType::kFloat32,
       Precision::kBFloat16},
  };
  for (const Case& c : cases) {
    const Measured m = RunInChild(c);
    std::printf("%-40s estimate %7.1f MiB, peak growth %7.1f MiB\n", c.name,
                static_cast<double>(m.estimate) / kMiB, static_cast<double>(m.peak_growth) / kMiB);
    // Within the estimate, plus a constant: oneDNN's own buffers of a call
    // (gemm packing, per thread) and the allocator's slack, measured at
    // 1-8 MiB with 2 threads whatever the size (2.5 to 160 MiB estimates):
    // part of the server's fixed overhead per worker, not of the request.
    if (testing::kAddressSanitizer) continue;  // the RSS is mostly the sanitizer's
    EXPECT_LE(m.peak_growth, m.estimate + 10 * kMiB) << c.name;
    // And not a budget held for nothing: at most 3x what was touched.
    EXPECT_LE(m.estimate, 3 * m.peak_growth + 8 * kMiB) << c.name;
  }
}

}  // namespace
}  // namespace attention
