#include "server/connection_shares.h"

#include <utility>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace attention {
namespace server {
namespace {

using ::testing::HasSubstr;

TEST(ConnectionSharesTest, AConnectionAtItsShareIsRefusedOnlyWhileTheQueueIsBusy) {
  ConnectionShares shares(2);
  ConnectionShares::Ticket a1, a2, a3, b1;
  ASSERT_TRUE(shares.Enter("ipv4:127.0.0.1:1000", true, &a1).ok());
  ASSERT_TRUE(shares.Enter("ipv4:127.0.0.1:1000", true, &a2).ok());
  const absl::Status refused = shares.Enter("ipv4:127.0.0.1:1000", true, &a3);
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(refused.message(), HasSubstr("connection share"));
  EXPECT_THAT(refused.message(), HasSubstr("--max-queue"));
  EXPECT_EQ(shares.held("ipv4:127.0.0.1:1000"), 2);  // the refusal counted nothing
  // Another connection is still admitted; a quiet queue admits anyone.
  EXPECT_TRUE(shares.Enter("ipv4:127.0.0.1:2000", true, &b1).ok());
  EXPECT_TRUE(shares.Enter("ipv4:127.0.0.1:1000", false, &a3).ok());
  EXPECT_EQ(shares.held("ipv4:127.0.0.1:1000"), 3);
}

TEST(ConnectionSharesTest, TicketsGiveTheirPlaceBackOnceWhenMovedResetOrDestroyed) {
  ConnectionShares shares(1);
  {
    ConnectionShares::Ticket t;
    ASSERT_TRUE(shares.Enter("p", true, &t).ok());
    ConnectionShares::Ticket moved(std::move(t));
    t.Reset();  // NOLINT(bugprone-use-after-move): a moved-from ticket holds nothing
    EXPECT_EQ(shares.held("p"), 1);
    ConnectionShares::Ticket assigned;
    assigned = std::move(moved);
    EXPECT_EQ(shares.held("p"), 1);
  }
  EXPECT_EQ(shares.held("p"), 0);
  ConnectionShares::Ticket t;
  ASSERT_TRUE(shares.Enter("p", true, &t).ok());
  t.Reset();
  t.Reset();
  EXPECT_EQ(shares.held("p"), 0);
}

}  // namespace
}  // namespace server
}  // namespace attention
