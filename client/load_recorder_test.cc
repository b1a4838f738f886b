// The load tester's ledger without a server: every request settled exactly
// once (OK or an error code, lost stream messages as LOST), latency from the
// send and from the due time, behind-schedule sends, and --verify's checks,
// of parsed responses and of serialized ones alike.
#include "client/load_recorder.h"

#include <cmath>

#include "grpcpp/impl/codegen/proto_utils.h"
#include "gtest/gtest.h"

namespace attention {
namespace client {
namespace {

int64_t ErrorTotal(const LoadResult& r) {
  int64_t n = 0;
  for (const auto& [code, count] : r.errors) n += count;
  return n;
}

v1::AttentionResponse Response(const std::vector<float>& output) {
  v1::AttentionResponse r;
  *r.mutable_output() =
      MakeTensor({1, 1, static_cast<int64_t>(output.size())}, output.data(), DType::kFloat32);
  return r;
}

TEST(Recorder, EveryRequestSettledOnceAsOkOrAnErrorCode) {
  Workload w;
  Recorder rec(w, 0);
  const v1::AttentionResponse ok = Response({1, 2});
  v1::AttentionResponse stream_error;  // a stream message failed inside an OK stream
  stream_error.mutable_error()->set_code(static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED));
  stream_error.mutable_error()->set_message("queue full (message)");
  for (int i = 0; i < 10; ++i) rec.Sent();
  for (int i = 0; i < 5; ++i) rec.Done(grpc::Status::OK, &ok, 0, {-1, 0, 100});
  rec.Done(grpc::Status::OK, nullptr, 0, {-1, 0, 100});  // a health check
  rec.Done(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "queue full"), nullptr, 0,
           {-1, 0, 100});
  rec.Done(grpc::Status::OK, &stream_error, 0, {-1, 0, 100});
  rec.Done(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "late"), nullptr, 0, {-1, 0, 100});
  rec.Lost("stream response id '3' out of order");

  const LoadResult r = rec.Snapshot();
  EXPECT_EQ(r.sent, 10);
  EXPECT_EQ(r.ok, 6);
  EXPECT_EQ(r.errors.at("RESOURCE_EXHAUSTED"), 2);
  EXPECT_EQ(r.first_error.at("RESOURCE_EXHAUSTED"), "queue full");
  EXPECT_EQ(r.errors.at("DEADLINE_EXCEEDED"), 1);
  EXPECT_EQ(r.errors.at("LOST"), 1);
  EXPECT_EQ(r.first_error.at("LOST"), "stream response id '3' out of order");
  EXPECT_EQ(r.lost, 1);
  EXPECT_EQ(r.first_lost, "stream response id '3' out of order");
  EXPECT_EQ(r.sent, r.ok + ErrorTotal(r));
  EXPECT_EQ(r.error_count(), 4);
  EXPECT_DOUBLE_EQ(r.response_bytes, 5.0 * ok.ByteSizeLong());
  EXPECT_EQ(r.latency.count(), 9);  // lost requests have no latency
  EXPECT_EQ(r.corrected.count(), 0);
}

TEST(Recorder, RetriesAreCountedApartAndARequestStaysOneRequest) {
  Workload w;
  Recorder rec(w, 0);
  const v1::AttentionResponse ok = Response({1});
  for (int i = 0; i < 3; ++i) rec.Sent();
  rec.Done(grpc::Status::OK, &ok, 0, {-1, 0, 100});  // answered at once
  rec.Retried(0);
  rec.Done(grpc::Status::OK, &ok, 0, {-1, 0, 300});  // answered after two retries
  rec.Retried(2);
  rec.Done(grpc::Status(grpc::StatusCode::UNAVAILABLE, "down"), nullptr, 0, {-1, 0, 500});
  rec.Retried(3);  // still failing after three: one error

  const LoadResult r = rec.Snapshot();
  EXPECT_EQ(r.sent, 3);
  EXPECT_EQ(r.ok, 2);
  EXPECT_EQ(r.errors.at("UNAVAILABLE"), 1);
  EXPECT_EQ(r.error_count(), 1);
  EXPECT_EQ(r.retries, 5);
  EXPECT_EQ(r.latency.count(), 3);
}

TEST(Recorder, LostInBulkAndUnexpectedResponsesAreCountedApart) {
  Workload w;
  Recorder rec(w, 0);
  for (int i = 0; i < 4; ++i) rec.Sent();
  rec.Unexpected("stream response id '9' out of order (expected '')");
  rec.Lost("stream ended without answering message '0.1'", 3);
  rec.Lost("a second reason", 1);
  const LoadResult r = rec.Snapshot();
  EXPECT_EQ(r.lost, 4);
  EXPECT_EQ(r.errors.at("LOST"), 4);
  EXPECT_EQ(r.first_error.at("LOST"), "stream ended without answering message '0.1'");
  EXPECT_EQ(r.unexpected, 1);  // not a request: not in the ledger of sent ones
  EXPECT_EQ(r.first_lost, "stream response id '9' out of order (expected '')");
  EXPECT_EQ(r.sent, r.ok + ErrorTotal(r));
}

TEST(Recorder, PercentilesOfTheRecordedLatencies) {
  Workload w;
  Recorder rec(w, 0);
  for (int i = 1; i <= 1000; ++i) {
    rec.Sent();
    rec.Done(grpc::Status::OK, nullptr, 0, {-1, 1e6, 1e6 + i * 1000.0});  // i ms
  }
  const LoadResult r = rec.Snapshot();
  EXPECT_EQ(r.latency.count(), 1000);
  EXPECT_NEAR(r.latency.Percentile(50), 500e3, 500e3 * 0.01);
  EXPECT_NEAR(r.latency.Percentile(99), 990e3, 990e3 * 0.01);
  EXPECT_NEAR(r.latency.mean(), 500.5e3, 1);
  EXPECT_DOUBLE_EQ(r.latency.max(), 1000e3);
  EXPECT_DOUBLE_EQ(r.latency.min(), 1e3);
}

TEST(Recorder, CorrectedLatencyCountsFromTheDueTime) {
  Workload w;
  Recorder rec(w, 0);
  // Due at 0, sent 5 ms late (behind schedule), answered 2 ms after the send.
  rec.Sent({0, 5000});
  rec.Done(grpc::Status::OK, nullptr, 0, {0, 5000, 7000});
  // Due at 10 ms, sent 0.5 ms late (on schedule), answered 1 ms later.
  rec.Sent({10000, 10500});
  rec.Done(grpc::Status::OK, nullptr, 0, {10000, 10500, 11500});
  // Exactly 1 ms late is still on schedule.
  rec.Sent({20000, 21000});
  rec.Done(grpc::Status::OK, nullptr, 0, {20000, 21000, 22000});
  const LoadResult r = rec.Snapshot();
  EXPECT_EQ(r.sent, 3);
  EXPECT_EQ(r.behind_schedule, 1);
  EXPECT_DOUBLE_EQ(r.latency.max(), 2000);    // from the send
  EXPECT_DOUBLE_EQ(r.corrected.max(), 7000);  // from the due time
  EXPECT_DOUBLE_EQ(r.latency.min(), 1000);
  EXPECT_DOUBLE_EQ(r.corrected.min(), 1500);
  EXPECT_EQ(r.corrected.count(), 3);
}

// A workload whose one pool entry's reference output is [[[1, 2]]].
Workload OneReference() {
  Workload w;
  ReferenceResult want;
  want.output_shape = {1, 1, 2};
  want.output = {1.0, 2.0};
  w.references.push_back(want);
  return w;
}

TEST(Recorder, VerifyChecksItsShareOfOkResponsesAgainstTheReference) {
  const Workload w = OneReference();
  Recorder rec(w, 50);
  const v1::AttentionResponse right = Response({1, 2});
  const v1::AttentionResponse wrong = Response({1, 3});
  for (int i = 0; i < 4; ++i) rec.Done(grpc::Status::OK, &right, 0, {-1, 0, 1});
  for (int i = 0; i < 4; ++i) rec.Done(grpc::Status::OK, &wrong, 0, {-1, 0, 1});
  rec.Done(grpc::Status(grpc::StatusCode::INTERNAL, "x"), nullptr, 0, {-1, 0, 1});  // unchecked
  const LoadResult r = rec.Snapshot();
  EXPECT_EQ(r.checked, 4);  // every second OK response
  EXPECT_EQ(r.mismatches, 2);
  EXPECT_EQ(r.first_mismatch.rfind("output differs from the reference: relative max error", 0), 0u)
      << r.first_mismatch;
}

// What a unary call hands the recorder: the response's bytes.
grpc::ByteBuffer Serialized(const v1::AttentionResponse& r) {
  grpc::ByteBuffer bytes;
  bool own = false;
  EXPECT_TRUE(grpc::SerializationTraits<v1::AttentionResponse>::Serialize(r, &bytes, &own).ok());
  return bytes;
}

TEST(Recorder, SerializedResponsesAreSettledAsTheParsedOnesWould) {
  const Workload w = OneReference();
  Recorder rec(w, 50);
  const v1::AttentionResponse right = Response({1, 2});
  v1::AttentionResponse wrong = Response({1, 3});
  wrong.set_id("kept apart from the tensors");
  v1::AttentionResponse stream_error;
  stream_error.mutable_error()->set_code(static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED));
  stream_error.mutable_error()->set_message("queue full (message)");
  for (const v1::AttentionResponse* response : std::vector<const v1::AttentionResponse*>{
           &right, &right, &right, &right, &wrong, &wrong, &wrong, &wrong}) {
    grpc::ByteBuffer bytes = Serialized(*response);
    rec.DoneSerialized(grpc::Status::OK, &bytes, 0, {-1, 0, 1});
  }
  grpc::ByteBuffer e = Serialized(stream_error);
  rec.DoneSerialized(grpc::Status::OK, &e, 0, {-1, 0, 1});
  const char junk[] = {0x12, 0x7f, 0x01};  // field 2 says 127 bytes follow; 1 does
  grpc::Slice junk_slice(junk, sizeof(junk));
  grpc::ByteBuffer bad(&junk_slice, 1);
  rec.DoneSerialized(grpc::Status::OK, &bad, 0, {-1, 0, 1});
  rec.DoneSerialized(grpc::Status(grpc::StatusCode::UNAVAILABLE, "down"), nullptr, 0, {-1, 0, 1});
  rec.DoneSerialized(grpc::Status::OK, nullptr, 0, {-1, 0, 1});  // a health check's

  const LoadResult r = rec.Snapshot();
  EXPECT_EQ(r.ok, 9);
  EXPECT_EQ(r.errors.at("RESOURCE_EXHAUSTED"), 1);
  EXPECT_EQ(r.first_error.at("RESOURCE_EXHAUSTED"), "queue full (message)");
  EXPECT_EQ(r.errors.at("INTERNAL"), 1);
  EXPECT_EQ(r.errors.at("UNAVAILABLE"), 1);
  EXPECT_EQ(r.latency.count(), 12);
  EXPECT_DOUBLE_EQ(r.response_bytes, 4.0 * (right.ByteSizeLong() + wrong.ByteSizeLong()));
  EXPECT_EQ(r.checked, 4);  // every second OK response with a body
  EXPECT_EQ(r.mismatches, 2);
  EXPECT_EQ(r.first_mismatch.rfind("output differs from the reference: relative max error", 0), 0u)
      << r.first_mismatch;
}

}  // namespace
}  // namespace client
}  // namespace attention
