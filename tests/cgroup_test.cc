// The server inside a memory cgroup the test makes (a 1 GiB limit, as a
// container or a systemd unit with MemoryMax= gives it): outside a container
// the limit is a sub-path of the hierarchy, and the server must still see it.
#include "tests/cgroup.h"

#include <csignal>
#include <string>

#include "client/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/e2e_util.h"
#include "tests/server_process.h"

namespace attention {
namespace testing {
namespace {

using ::testing::HasSubstr;

TEST(Cgroup, TheServerSeesTheLimitOfItsOwnGroup) {
  absl::StatusOr<std::unique_ptr<MemoryCgroup>> group = MemoryCgroup::Create(int64_t{1} << 30);
  if (!group.ok()) GTEST_SKIP() << group.status();
  {
    ServerProcess server(ModelFlags(), {}, (*group)->dir());
    ASSERT_TRUE(server.ok()) << server.Output();
    const std::string file =
        (*group)->dir() + ((*group)->v2() ? "/memory.max" : "/memory.limit_in_bytes");
    EXPECT_THAT(server.Output(),
                HasSubstr("memory budget 614 MiB (60% of 1024 MiB: cgroup " +
                          std::string((*group)->v2() ? "v2 " : "v1 ") + file + ";"));
    client::AttentionClient c(client::AttentionClient::Connect(server.target()));
    EXPECT_EQ(*c.Health("", {10}), "SERVING");
    EXPECT_EQ(server.Stop(SIGTERM, 15), 0);
  }
  EXPECT_EQ((*group)->OomKills(), 0);
  EXPECT_GT((*group)->PeakBytes(), 0);
}

}  // namespace
}  // namespace testing
}  // namespace attention
