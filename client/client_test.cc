// The client library's pure parts: how a --target list becomes one balancing
// channel's target, which failed calls are retried, and by whom, and how
// statuses are reported.
#include "client/client.h"

#include "absl/strings/match.h"
#include "client/security.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace attention {
namespace client {
namespace {

using ::testing::HasSubstr;

TEST(ChannelTarget, AnIpv4ListBecomesOneMultiAddressTarget) {
  absl::StatusOr<std::string> t = ChannelTarget("127.0.0.2:50051,127.0.0.3:50052,");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(*t, "ipv4:127.0.0.2:50051,127.0.0.3:50052");
}

TEST(ChannelTarget, OneAddressOrAnyGrpcTargetIsKept) {
  for (const std::string target : {"localhost:50051", "dns:///attention:50051", "unix:/tmp/s"}) {
    absl::StatusOr<std::string> t = ChannelTarget(target);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(*t, target);
  }
}

TEST(ChannelTarget, AListWithANameOrNoPortIsRefusedWithAHint) {
  for (const std::string target : {"localhost:1,127.0.0.1:2", "127.0.0.1,127.0.0.2:5", ","}) {
    absl::StatusOr<std::string> t = ChannelTarget(target);
    ASSERT_FALSE(t.ok()) << target;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(t.status().message().find("--target"), absl::string_view::npos);
  }
}

TEST(Retries, UnavailableCancelledAndStreamResetsAreRetriedOnlyAsOftenAsAsked) {
  const grpc::Status unavailable(grpc::StatusCode::UNAVAILABLE, "draining");
  EXPECT_TRUE(ShouldRetry(unavailable, 0, 2));
  EXPECT_TRUE(ShouldRetry(unavailable, 1, 2));
  EXPECT_FALSE(ShouldRetry(unavailable, 2, 2));
  EXPECT_FALSE(ShouldRetry(unavailable, 0, 0));
  EXPECT_FALSE(ShouldRetry(grpc::Status::OK, 0, 2));
  // A proxy resets the stream when its replica dies mid-call: retried too.
  EXPECT_TRUE(ShouldRetry(
      grpc::Status(grpc::StatusCode::INTERNAL, "Received RST_STREAM with error code 2"), 0, 1));
  EXPECT_FALSE(ShouldRetry(
      grpc::Status(grpc::StatusCode::INTERNAL, "Received RST_STREAM with error code 2"), 1, 1));
  // A replica cancelling at the end of its drain, or a proxy: never this client.
  EXPECT_TRUE(ShouldRetry(grpc::Status(grpc::StatusCode::CANCELLED, "CANCELLED"), 0, 1));
  for (grpc::StatusCode code :
       {grpc::StatusCode::RESOURCE_EXHAUSTED, grpc::StatusCode::DEADLINE_EXCEEDED,
        grpc::StatusCode::INVALID_ARGUMENT, grpc::StatusCode::INTERNAL,
        grpc::StatusCode::NOT_FOUND}) {
    EXPECT_FALSE(ShouldRetry(grpc::Status(code, ""), 0, 5)) << code;
  }
}

TEST(Retries, TheLibraryRetriesWhatTheChannelsBufferCannotHold) {
  EXPECT_FALSE(RetriesByClient(1000));
  EXPECT_FALSE(RetriesByClient(kChannelRetryBufferBytes));
  EXPECT_TRUE(RetriesByClient(kChannelRetryBufferBytes + 1));
  EXPECT_TRUE(RetriesByClient(int64_t{64} << 20));
}

// A server that closes the TLS handshake (a refused client certificate)
// shows up as "Socket closed": the CLI says what to check, on TLS channels.
TEST(ExplainTlsFailure, AClosedHandshakeSaysWhatToCheck) {
  const absl::Status closed = absl::UnavailableError("Socket closed");
  ChannelSecurity tls;
  tls.tls = true;
  EXPECT_THAT(std::string(ExplainTlsFailure(closed, tls).message()),
              HasSubstr("the server may require a client certificate"));
  tls.cert_chain_pem = "a certificate";
  const absl::Status explained = ExplainTlsFailure(closed, tls);
  EXPECT_EQ(explained.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(explained.message()),
              HasSubstr("the server may have refused the client certificate"));
  EXPECT_THAT(std::string(explained.message()), HasSubstr("(Socket closed)"));
  EXPECT_EQ(ExplainTlsFailure(closed, ChannelSecurity()), closed);  // plaintext: as it is
  const absl::Status other = absl::UnavailableError("failed to connect to all addresses");
  EXPECT_EQ(ExplainTlsFailure(other, tls), other);
}

TEST(FromGrpcStatus, ATransportCancelUnderMemoryPressureNamesTheLimit) {
  const absl::Status s = FromGrpcStatus(
      grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "Received RST_STREAM with error code 11"));
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StartsWith(s.message(), "Received RST_STREAM with error code 11 ("));
  EXPECT_TRUE(absl::StrContains(s.message(), "--max-memory-mb")) << s.message();
  // Other resets and codes keep gRPC's message as it is.
  EXPECT_EQ(FromGrpcStatus(
                grpc::Status(grpc::StatusCode::INTERNAL, "Received RST_STREAM with error code 2"))
                .message(),
            "Received RST_STREAM with error code 2");
  EXPECT_EQ(
      FromGrpcStatus(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "queue full")).message(),
      "queue full");
}

}  // namespace
}  // namespace client
}  // namespace attention
