// StreamDecode end to end, through a real server on 127.0.0.1: decoding
// message by message equals one causal forward (PyTorch's fixtures, the
// double-precision reference), many sequences interleaved on one stream,
// refusals that change nothing, the memory budget, idle expiry, a cancelled
// stream's bytes back in the budget, and a drain with sequences held.
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_join.h"
#include "client/client.h"
#include "core/model.h"
#include "core/reference.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/e2e_util.h"
#include "tests/server_process.h"

namespace attention {
namespace testing {
namespace {

using client::AttentionClient;
using client::DecodeStream;
using client::MakeTensor;
using ::testing::HasSubstr;

constexpr double kTolerance = 1e-4;

// Rows [first, first + n) of a row-major [rows, width] array as a [n, width]
// wire tensor.
v1::Tensor Rows(const std::vector<float>& x, int64_t width, int64_t first, int64_t n) {
  return MakeTensor({n, width}, x.data() + first * width, DType::kFloat32);
}

v1::DecodeRequest Step(const std::string& sequence, v1::Tensor input, const std::string& model) {
  v1::DecodeRequest r;
  r.set_sequence(sequence);
  *r.mutable_input() = std::move(input);
  r.mutable_options()->set_model(model);
  r.mutable_options()->set_causal(true);
  return r;
}

std::vector<float> Floats(const v1::Tensor& t) {
  absl::StatusOr<FloatTensor> f = client::ToFloat(t, "output");
  EXPECT_TRUE(f.ok()) << f.status();
  return f.ok() ? f->data : std::vector<float>{};
}

// max |got - want| / max |want| (infinity when the sizes differ).
double MaxRelativeDifference(const std::vector<float>& got, const std::vector<float>& want) {
  if (got.size() != want.size() || want.empty()) return std::numeric_limits<double>::infinity();
  double top = 0, diff = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    top = std::max(top, static_cast<double>(std::abs(want[i])));
    diff = std::max(diff, static_cast<double>(std::abs(got[i] - want[i])));
  }
  return diff / std::max(top, 1e-30);
}

int64_t HeldBytes(ServerProcess& server) {
  std::string text;
  if (HttpGet(AdminPort(server), "/metrics", &text) != 200) return -1;
  return static_cast<int64_t>(Sample(text, "attention_decode_held_bytes"));
}

class DecodeE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::vector<std::string> flags = ModelFlags();
    flags.push_back("--admin-listen=127.0.0.1:0");
    flags.push_back("--max-sequence-tokens=300");
    flags.push_back("--max-sequences-per-stream=3");
    server_ = new ServerProcess(flags);
    ASSERT_TRUE(server_->ok()) << server_->Output();
  }
  static void TearDownTestSuite() {
    EXPECT_EQ(server_->Stop(SIGTERM, 15), 0) << server_->Output();
    delete server_;
    server_ = nullptr;
  }
  AttentionClient Client() { return AttentionClient(AttentionClient::Connect(server_->target())); }
  static ServerProcess* server_;
};
ServerProcess* DecodeE2E::server_ = nullptr;

// PyTorch's causal scaled_dot_product_attention: both batch entries decoded
// as two sequences interleaved on one stream, in odd splits.
TEST_F(DecodeE2E, InterleavedSequencesEqualPyTorchsCausalForward) {
  absl::StatusOr<std::unique_ptr<Fixture>> f =
      LoadFixture(SourcePath("tests/fixtures/sdpa_self_causal_avg.safetensors"));
  ASSERT_TRUE(f.ok()) << f.status();
  const std::vector<float> x = ToFloats((*f)->args.query);
  const std::vector<float> want = ToFloats(*(*f)->expected_output);
  const int64_t B = 2, L = 8, E = 32;
  AttentionClient c = Client();
  DecodeStream stream(&c);
  std::vector<std::vector<float>> got(B);
  const std::vector<std::vector<int64_t>> splits = {{3, 1, 1, 2, 1}, {1, 4, 1, 1, 1}};
  for (size_t m = 0; m < 5; ++m) {
    for (int64_t b = 0; b < B; ++b) {
      const int64_t done = static_cast<int64_t>(got[b].size()) / E;
      v1::DecodeRequest r =
          Step("seq" + std::to_string(b), Rows(x, E, b * L + done, splits[b][m]), "");
      r.mutable_options()->set_num_heads(4);
      absl::StatusOr<v1::AttentionResponse> resp = stream.Append(r);
      ASSERT_TRUE(resp.ok()) << resp.status();
      EXPECT_EQ(resp->sequence_length(), done + splits[b][m]);
      const std::vector<float> out = Floats(resp->output());
      got[b].insert(got[b].end(), out.begin(), out.end());
    }
  }
  for (int64_t b = 0; b < B; ++b) {
    const std::vector<double> rows(want.begin() + b * L * E, want.begin() + (b + 1) * L * E);
    ASSERT_EQ(got[b].size(), rows.size());
    EXPECT_LE(RelativeMaxError(got[b].data(), rows), kTolerance);
  }
  EXPECT_TRUE(stream.Close().ok());
}

// A model's decode, one token a message after a prefill, against the double
// reference of the causal forward with the model's weights.
TEST_F(DecodeE2E, AModelsDecodeEqualsTheReference) {
  absl::StatusOr<std::unique_ptr<const Model>> model =
      LoadModel("demo", SourcePath("models/demo.safetensors"));
  ASSERT_TRUE(model.ok()) << model.status();
  const int64_t L = 150, E = 64;
  std::mt19937 rng(11);
  const FloatTensor x = RandomTensor({1, L, E}, rng);
  AttentionArgs whole;
  whole.query = x.view();
  whole.self_attention = true;
  whole.num_heads = (*model)->info().num_heads;
  whole.causal = true;
  whole.projection = &(*model)->weights();
  absl::StatusOr<ReferenceResult> want = ReferenceAttention(whole);
  ASSERT_TRUE(want.ok()) << want.status();
  for (const bool bf16 : {false, true}) {
    SCOPED_TRACE(bf16 ? "bfloat16 keys and values" : "float32");
    AttentionClient c = Client();
    DecodeStream stream(&c);
    std::vector<float> got;
    for (int64_t done = 0; done < L;) {
      const int64_t n = done == 0 ? 70 : 1;
      v1::DecodeRequest r = Step("s", Rows(x.data, E, done, n), "demo");
      if (bf16) r.mutable_options()->set_precision(v1::PRECISION_BFLOAT16);
      absl::StatusOr<v1::AttentionResponse> resp = stream.Append(r);
      ASSERT_TRUE(resp.ok()) << resp.status();
      EXPECT_EQ(resp->precision(), bf16 ? v1::PRECISION_BFLOAT16 : v1::PRECISION_FLOAT32);
      if (done > 0) {
        EXPECT_LT(stream.last_request_bytes(), E * 4 + 200);  // one token and a little
      }
      const std::vector<float> out = Floats(resp->output());
      got.insert(got.end(), out.begin(), out.end());
      done += n;
    }
    ASSERT_EQ(got.size(), want->output.size());
    const double error = RelativeMaxError(got.data(), want->output);
    EXPECT_LE(error, bf16 ? 1e-2 : kTolerance);
    if (bf16) {
      EXPECT_GT(error, 1e-6);
    }
    EXPECT_TRUE(stream.End("s").ok());
    EXPECT_TRUE(stream.Close().ok());
  }
}

// Refused messages are answered with their error, change nothing, and the
// stream goes on.
TEST_F(DecodeE2E, RefusalsChangeNothingAndTheStreamGoesOn) {
  AttentionClient c = Client();
  grpc::ClientContext context;
  auto stream = c.stub()->StreamDecode(&context);
  std::mt19937 rng(2);
  const FloatTensor x = RandomTensor({400, 64}, rng);
  auto send = [&](v1::DecodeRequest r, int64_t position) {
    r.set_position(position);
    EXPECT_TRUE(stream->Write(r));
    v1::AttentionResponse resp;
    EXPECT_TRUE(stream->Read(&resp));
    return resp;
  };
  auto error_of = [](const v1::AttentionResponse& r) {
    return r.has_error()
               ? absl::StrCat(
                     absl::StatusCodeToString(static_cast<absl::StatusCode>(r.error().code())),
                     ": ", r.error().message())
               : std::string("OK");
  };
  v1::AttentionResponse r = send(Step("a", Rows(x.data, 64, 0, 4), "demo"), 0);
  ASSERT_FALSE(r.has_error()) << r.error().message();
  EXPECT_EQ(r.sequence_length(), 4);
  EXPECT_THAT(error_of(send(Step("a", Rows(x.data, 64, 4, 1), "demo"), 3)),
              HasSubstr("FAILED_PRECONDITION: position: 3, but sequence 'a' holds 4 keys"));
  EXPECT_THAT(error_of(send(Step("b", Rows(x.data, 64, 0, 1), "demo"), 2)),
              HasSubstr("FAILED_PRECONDITION: position: 2, but this stream holds no sequence 'b'"));
  v1::DecodeRequest changed = Step("a", Rows(x.data, 64, 4, 1), "demo");
  changed.mutable_options()->set_num_heads(2);
  EXPECT_THAT(error_of(send(changed, 4)), HasSubstr("INVALID_ARGUMENT: options.num_heads: 2 does"));
  changed = Step("a", Rows(x.data, 64, 4, 1), "mha_e32_h4");
  EXPECT_THAT(error_of(send(changed, 4)), HasSubstr("INVALID_ARGUMENT: input: width 64"));
  changed = Step("a", Rows(x.data, 64, 4, 1), "demo");
  *changed.mutable_options()->mutable_key_padding_mask() =
      MakeTensor({1}, x.data.data(), DType::kFloat32);
  EXPECT_THAT(error_of(send(changed, 4)), HasSubstr("options.key_padding_mask: not taken"));
  changed = Step("a", Rows(x.data, 64, 4, 1), "nope");
  EXPECT_THAT(error_of(send(changed, 4)), HasSubstr("NOT_FOUND: options.model: no model 'nope'"));
  changed = Step("c", Rows(x.data, 64, 0, 1), "");
  *changed.mutable_options()->mutable_projection()->mutable_out_proj_weight() =
      MakeTensor({64, 64}, x.data.data(), DType::kFloat32);
  EXPECT_THAT(error_of(send(changed, 0)),
              HasSubstr("options.projection: StreamDecode takes a model"));
  // --max-sequence-tokens 300: refused whole, the sequence as it was.
  EXPECT_THAT(error_of(send(Step("a", Rows(x.data, 64, 4, 297), "demo"), 4)),
              HasSubstr("RESOURCE_EXHAUSTED: sequence 'a': would hold 301 keys"));
  // --max-sequences-per-stream 3.
  EXPECT_EQ(error_of(send(Step("b", Rows(x.data, 64, 0, 1), "demo"), 0)), "OK");
  EXPECT_EQ(error_of(send(Step("c", Rows(x.data, 64, 0, 1), "demo"), 0)), "OK");
  EXPECT_THAT(error_of(send(Step("d", Rows(x.data, 64, 0, 1), "demo"), 0)),
              HasSubstr("RESOURCE_EXHAUSTED: sequence: this stream holds 3 sequences"));
  v1::DecodeRequest end;
  end.set_sequence("c");
  end.set_end(true);
  r = send(end, 1);
  EXPECT_FALSE(r.has_error()) << r.error().message();
  EXPECT_EQ(r.sequence_length(), 0);
  EXPECT_EQ(error_of(send(Step("d", Rows(x.data, 64, 0, 1), "demo"), 0)), "OK");
  // After every refusal, 'a' still holds its 4 keys and goes on.
  r = send(Step("a", Rows(x.data, 64, 4, 1), "demo"), 4);
  EXPECT_FALSE(r.has_error()) << r.error().message();
  EXPECT_EQ(r.sequence_length(), 5);
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
}

// Nothing outlives a stream: a cancelled stream's keys and values go back
// to the budget (the metric of held bytes returns to 0).
TEST_F(DecodeE2E, ACancelledStreamsBytesGoBack) {
  std::mt19937 rng(4);
  const FloatTensor x = RandomTensor({200, 64}, rng);
  AttentionClient c = Client();
  {
    DecodeStream stream(&c);
    ASSERT_TRUE(stream.Append(Step("a", Rows(x.data, 64, 0, 200), "demo")).ok());
    ASSERT_TRUE(stream.Append(Step("b", Rows(x.data, 64, 0, 10), "demo")).ok());
    EXPECT_GE(HeldBytes(*server_), 200 * 2 * 64 * 4);
  }  // cancelled
  for (int i = 0; i < 100 && HeldBytes(*server_) != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(HeldBytes(*server_), 0);
}

// Decodes `sequences` sequences of the demo model on `server`, each on a
// stream of its own from a thread of its own (a prefill of 9 tokens, then one
// token a message): each sequence's outputs, concatenated.
std::vector<std::vector<float>> DecodeConcurrently(ServerProcess& server, int sequences,
                                                   int64_t tokens) {
  std::vector<std::vector<float>> got(sequences);
  std::vector<std::thread> threads;
  for (int s = 0; s < sequences; ++s) {
    threads.emplace_back([&, s] {
      std::mt19937 rng(100 + s);
      const FloatTensor x = RandomTensor({tokens, 64}, rng);
      AttentionClient c(AttentionClient::Connect(server.target()));
      DecodeStream stream(&c);
      for (int64_t done = 0; done < tokens;) {
        const int64_t n = done == 0 ? 9 : 1;
        absl::StatusOr<v1::AttentionResponse> r =
            stream.Append(Step("s", Rows(x.data, 64, done, n), "demo"));
        ASSERT_TRUE(r.ok()) << r.status();
        const std::vector<float> out = Floats(r->output());
        got[s].insert(got[s].end(), out.begin(), out.end());
        done += n;
      }
      EXPECT_TRUE(stream.Close().ok());
    });
  }
  for (std::thread& t : threads) t.join();
  return got;
}

// --batch-delay-us merges decode steps of many streams (their projections as
// one product): every output equals, to float32 rounding (bit for bit on
// AVX-512), what a server without batching computes, and the batch size
// metric shows steps computed together.
TEST(DecodeBatching, BatchedStepsEqualUnbatchedOnes) {
  std::vector<std::string> flags = ModelFlags();
  flags.push_back("--admin-listen=127.0.0.1:0");
  ServerProcess alone(flags);
  ASSERT_TRUE(alone.ok()) << alone.Output();
  flags.push_back("--batch-delay-us=3000");
  ServerProcess batching(flags);
  ASSERT_TRUE(batching.ok()) << batching.Output();
  constexpr int kSequences = 6;
  constexpr int64_t kTokens = 40;
  const std::vector<std::vector<float>> want = DecodeConcurrently(alone, kSequences, kTokens);
  const std::vector<std::vector<float>> got = DecodeConcurrently(batching, kSequences, kTokens);
  for (int s = 0; s < kSequences; ++s) {
    ASSERT_EQ(want[s].size(), static_cast<size_t>(kTokens * 64));
    EXPECT_LE(MaxRelativeDifference(got[s], want[s]), 1e-5) << "sequence " << s;
  }
  std::string text;
  ASSERT_EQ(HttpGet(AdminPort(batching), "/metrics", &text), 200);
  const double batches = Sample(text, "attention_decode_batch_size_count");
  const double steps = Sample(text, "attention_decode_batch_size_sum");
  EXPECT_EQ(steps, kSequences * (kTokens - 8));  // every message computed, once
  EXPECT_LT(batches, steps) << "no two steps were computed together";
  ASSERT_EQ(HttpGet(AdminPort(alone), "/metrics", &text), 200);
  EXPECT_EQ(Sample(text, "attention_decode_batch_size_count"), 0);
  EXPECT_EQ(batching.Stop(SIGTERM, 15), 0) << batching.Output();
  EXPECT_EQ(alone.Stop(SIGTERM, 15), 0) << alone.Output();
}

// Messages of different sequences sent on one stream without waiting for
// answers may compute at once (and batch); the answers come in the order
// sent, each equal to its sequence decoded alone.
TEST_F(DecodeE2E, PipelinedSequencesOnOneStreamAnswerInOrder) {
  constexpr int kSequences = 3;
  constexpr int64_t kTokens = 12;
  std::vector<FloatTensor> x;
  std::vector<std::vector<float>> want(kSequences), got(kSequences);
  AttentionClient c = Client();
  for (int s = 0; s < kSequences; ++s) {
    std::mt19937 rng(200 + s);
    x.push_back(RandomTensor({kTokens, 64}, rng));
    DecodeStream alone(&c);
    for (int64_t t = 0; t < kTokens; ++t) {
      absl::StatusOr<v1::AttentionResponse> r =
          alone.Append(Step("s", Rows(x[s].data, 64, t, 1), "demo"));
      ASSERT_TRUE(r.ok()) << r.status();
      const std::vector<float> out = Floats(r->output());
      want[s].insert(want[s].end(), out.begin(), out.end());
    }
    ASSERT_TRUE(alone.Close().ok());
  }
  grpc::ClientContext context;
  auto stream = c.stub()->StreamDecode(&context);
  for (int64_t t = 0; t < kTokens; ++t) {
    for (int s = 0; s < kSequences; ++s) {  // a round of messages, then its answers
      v1::DecodeRequest r = Step(absl::StrCat("seq", s), Rows(x[s].data, 64, t, 1), "demo");
      r.set_position(t);
      r.set_id(absl::StrCat(t, "/", s));
      ASSERT_TRUE(stream->Write(r));
    }
    for (int s = 0; s < kSequences; ++s) {
      v1::AttentionResponse resp;
      ASSERT_TRUE(stream->Read(&resp));
      ASSERT_EQ(resp.id(), absl::StrCat(t, "/", s));
      ASSERT_FALSE(resp.has_error()) << resp.error().message();
      EXPECT_EQ(resp.sequence_length(), t + 1);
      const std::vector<float> out = Floats(resp.output());
      got[s].insert(got[s].end(), out.begin(), out.end());
    }
  }
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
  for (int s = 0; s < kSequences; ++s) EXPECT_EQ(got[s], want[s]) << "sequence " << s;
}

// Held keys count in --max-memory-mb: a sequence that would not fit is
// refused and keeps what it held.
TEST(DecodeLimits, TheBudgetRefusesAnAppendAndKeepsTheSequence) {
  std::vector<std::string> flags = ModelFlags();
  flags.push_back("--max-memory-mb=16");  // 12 MiB for serving
  ServerProcess server(flags);
  ASSERT_TRUE(server.ok()) << server.Output();
  AttentionClient c(AttentionClient::Connect(server.target()));
  DecodeStream stream(&c);
  std::mt19937 rng(6);
  const FloatTensor x = RandomTensor({16, 1024}, rng);  // plain, 8 KiB of keys and values a token
  auto step = [&](int64_t rows) {
    v1::DecodeRequest r = Step("a", Rows(x.data, 1024, 0, rows), "");
    r.mutable_options()->set_num_heads(8);
    return stream.Append(r);
  };
  int64_t held = 0;
  absl::Status refused;
  for (int i = 0; i < 400 && refused.ok(); ++i) {
    absl::StatusOr<v1::AttentionResponse> r = step(16);
    refused = r.status();
    if (r.ok()) held = r->sequence_length();
  }
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_THAT(std::string(refused.message()), HasSubstr("memory budget"));
  EXPECT_GT(held, 0);
  EXPECT_EQ(stream.length("a"), held);
  absl::StatusOr<v1::AttentionResponse> r = step(1);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->sequence_length(), held + 1);
  EXPECT_TRUE(stream.Close().ok());
  EXPECT_EQ(server.Stop(SIGTERM, 15), 0);
}

// --sequence-idle-seconds: an untouched sequence is freed while its stream
// waits; its next message says so.
TEST(DecodeLimits, AnIdleSequenceIsFreedAndItsNextMessageSaysSo) {
  std::vector<std::string> flags = ModelFlags();
  flags.push_back("--sequence-idle-seconds=1");
  flags.push_back("--admin-listen=127.0.0.1:0");
  ServerProcess server(flags);
  ASSERT_TRUE(server.ok()) << server.Output();
  AttentionClient c(AttentionClient::Connect(server.target()));
  grpc::ClientContext context;
  auto stream = c.stub()->StreamDecode(&context);
  std::mt19937 rng(8);
  const FloatTensor x = RandomTensor({8, 64}, rng);
  v1::DecodeRequest r = Step("a", Rows(x.data, 64, 0, 8), "demo");
  v1::AttentionResponse resp;
  ASSERT_TRUE(stream->Write(r) && stream->Read(&resp));
  ASSERT_FALSE(resp.has_error());
  EXPECT_GT(HeldBytes(server), 0);
  for (int i = 0; i < 150 && HeldBytes(server) != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(HeldBytes(server), 0);  // freed while the stream waited
  r = Step("a", Rows(x.data, 64, 0, 1), "demo");
  r.set_position(8);
  ASSERT_TRUE(stream->Write(r) && stream->Read(&resp));
  EXPECT_EQ(resp.error().code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(resp.error().message(), HasSubstr("sequence 'a': freed after 1s untouched"));
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(server.Stop(SIGTERM, 15), 0);
}

// Draining: a decode stream holding sequences ends with UNAVAILABLE at once
// (it does not hold the drain to its deadline), after its answers.
TEST(DecodeLimits, DrainEndsDecodeStreamsWithUnavailable) {
  ServerProcess server(ModelFlags());
  ASSERT_TRUE(server.ok()) << server.Output();
  AttentionClient c(AttentionClient::Connect(server.target()));
  DecodeStream stream(&c);
  std::mt19937 rng(9);
  const FloatTensor x = RandomTensor({8, 64}, rng);
  ASSERT_TRUE(stream.Append(Step("a", Rows(x.data, 64, 0, 8), "demo")).ok());
  const auto start = std::chrono::steady_clock::now();
  ASSERT_EQ(kill(server.pid(), SIGTERM), 0);
  absl::StatusOr<v1::AttentionResponse> r;
  for (int i = 0; i < 100; ++i) {  // until the drain reaches the stream
    r = stream.Append(Step("a", Rows(x.data, 64, 0, 1), "demo"));
    if (!r.ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("draining"));
  EXPECT_EQ(server.Stop(0, 15), 0);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(8));  // not the deadline
}

// Decodes two sequences on one stream of `c` for `tokens` tokens (a prefill
// of 10, then one token a message): "a" of the demo model, "b" plain
// attention with its own keys and values. `fault(t)` runs before token t.
// Returns each sequence's outputs.
std::vector<std::vector<float>> DecodeTwo(AttentionClient& c, int retries, int64_t tokens,
                                          const std::function<void(int64_t)>& fault, int* retried) {
  std::mt19937 rng(21);
  const FloatTensor x = RandomTensor({tokens, 64}, rng);
  const FloatTensor kv = RandomTensor({tokens, 32}, rng);
  std::vector<std::vector<float>> got(2);
  DecodeStream stream(&c, {0, retries});
  for (int64_t done = 0; done < tokens;) {
    fault(done);
    const int64_t n = done == 0 ? 10 : 1;
    absl::StatusOr<v1::AttentionResponse> r =
        stream.Append(Step("a", Rows(x.data, 64, done, n), "demo"));
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return {};
    std::vector<float> out = Floats(r->output());
    got[0].insert(got[0].end(), out.begin(), out.end());
    v1::DecodeRequest b;
    b.set_sequence("b");
    *b.mutable_query() = Rows(kv.data, 32, done, n);
    *b.mutable_key() = Rows(kv.data, 32, done, n);
    *b.mutable_value() = Rows(x.data, 64, done, n);
    b.mutable_options()->set_num_heads(4);
    b.mutable_options()->set_causal(true);
    r = stream.Append(b);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return {};
    out = Floats(r->output());
    got[1].insert(got[1].end(), out.begin(), out.end());
    done += n;
  }
  EXPECT_TRUE(stream.Close().ok());
  *retried = stream.retries();
  return got;
}

// With retries, a decode stream survives its replica killed (SIGKILL) and
// then the next one drained (SIGTERM): the stream is reopened on a live
// replica, both sequences are rebuilt from the tokens the client sent, and
// every output equals an uninterrupted decode's (to float32 rounding: the
// rebuilt keys come from one product over many rows).
TEST(DecodeRetries, AStreamSurvivesItsReplicaKilledThenDrained) {
  std::vector<std::unique_ptr<ServerProcess>> servers;
  std::vector<std::string> targets;
  for (int i = 0; i < 3; ++i) {
    std::vector<std::string> flags = ModelFlags();
    flags.push_back("--admin-listen=127.0.0.1:0");
    servers.push_back(std::make_unique<ServerProcess>(flags));
    ASSERT_TRUE(servers.back()->ok()) << servers.back()->Output();
    targets.push_back(servers.back()->target());
  }
  constexpr int64_t kTokens = 60;
  int retried = 0;
  AttentionClient one(AttentionClient::Connect(targets[0]));
  const std::vector<std::vector<float>> want = DecodeTwo(
      one, 0, kTokens, [](int64_t) {}, &retried);
  ASSERT_EQ(want.size(), 2u);
  absl::StatusOr<std::string> all = client::ChannelTarget(absl::StrJoin(targets, ","));
  ASSERT_TRUE(all.ok()) << all.status();
  AttentionClient c(AttentionClient::Connect(*all, int64_t{256} << 20, /*round_robin=*/true));
  // The replica holding the stream's sequences.
  auto holder = [&]() -> int {
    for (size_t i = 0; i < servers.size(); ++i) {
      std::string text;
      if (servers[i] && HttpGet(AdminPort(*servers[i]), "/metrics", &text) == 200 &&
          Sample(text, "attention_decode_sequences") == 2) {
        return static_cast<int>(i);
      }
    }
    return -1;
  };
  int killed = -1, drained = -1;
  const std::vector<std::vector<float>> got = DecodeTwo(
      c, 5, kTokens,
      [&](int64_t t) {
        if (t == 20) {
          killed = holder();
          ASSERT_GE(killed, 0);
          servers[killed]->Stop(SIGKILL, 5);
          servers[killed].reset();
        } else if (t == 40) {
          drained = holder();
          ASSERT_GE(drained, 0);
          ASSERT_EQ(kill(servers[drained]->pid(), SIGTERM), 0);
        }
      },
      &retried);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_NE(killed, drained);
  EXPECT_GE(retried, 2);
  EXPECT_LE(MaxRelativeDifference(got[0], want[0]), 1e-5);
  EXPECT_LE(MaxRelativeDifference(got[1], want[1]), 1e-5);
  ASSERT_GE(drained, 0);
  EXPECT_EQ(servers[drained]->Stop(0, 15), 0) << servers[drained]->Output();
}

}  // namespace
}  // namespace testing
}  // namespace attention
