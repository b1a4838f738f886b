// The admin endpoint in process on 127.0.0.1, through raw sockets: what each
// path answers, and what it does to hostile clients (endless heads, slow
// heads, many ranges, many connections).
#include "server/admin_http.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "core/test_util.h"

namespace attention {
namespace server {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr int64_t kMiB = 1 << 20;

// A connected socket to 127.0.0.1:port, or -1.
int Connect(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

bool SendAll(int fd, const std::string& data) {
  for (size_t sent = 0; sent < data.size();) {
    const ssize_t n = send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return false;
    sent += n;
  }
  return true;
}

// What arrives on fd until the peer closes it, `limit` bytes came, or the
// deadline; *closed tells whether the peer closed (or reset) it.
std::string ReadUntil(int fd, Clock::time_point deadline, bool* closed = nullptr,
                      size_t limit = size_t{1} << 30) {
  std::string got;
  if (closed != nullptr) *closed = false;
  char buffer[1 << 16];
  while (got.size() < limit) {
    const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
    pollfd p{fd, POLLIN, 0};
    if (left <= 0 || poll(&p, 1, static_cast<int>(left)) <= 0) break;
    const ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
    if (n <= 0) {
      if (closed != nullptr) *closed = true;
      break;
    }
    got.append(buffer, n);
  }
  return got;
}

struct Reply {
  int status = -1;
  std::string head;  // the status line and headers
  std::string body;
  std::string raw;  // everything received
};

Reply Parse(const std::string& raw) {
  Reply r;
  r.raw = raw;
  const size_t end = raw.find("\r\n\r\n");
  if (raw.compare(0, 9, "HTTP/1.1 ") != 0 || end == std::string::npos) return r;
  r.status = std::atoi(raw.c_str() + 9);
  r.head = raw.substr(0, end + 2);
  r.body = raw.substr(end + 4);
  return r;
}

// One request on a connection of its own ("Connection: close"), within 2 s
// and the first `limit` bytes of the answer.
Reply Exchange(int port, const std::string& method, const std::string& path,
               const std::string& extra_headers = "", size_t limit = size_t{1} << 20) {
  const int fd = Connect(port);
  if (fd < 0) return {};
  SendAll(fd, method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" +
                  extra_headers + "\r\n");
  const std::string raw = ReadUntil(fd, Clock::now() + std::chrono::seconds(2), nullptr, limit);
  close(fd);
  return Parse(raw);
}

AdminServer::Handlers TestHandlers(const std::string* metrics, const std::string* not_ready) {
  AdminServer::Handlers h;
  h.metrics = [metrics] { return *metrics; };
  h.not_ready = [not_ready] { return *not_ready; };
  return h;
}

TEST(AdminHttpTest, PathsAnswerWithTheirStatusBodyAndType) {
  const std::string metrics = "# TYPE up gauge\nup 1\n";
  std::string not_ready;
  auto admin = AdminServer::Start("127.0.0.1:0", TestHandlers(&metrics, &not_ready));
  ASSERT_TRUE(admin.ok()) << admin.status();
  const int port = (*admin)->port();
  ASSERT_GT(port, 0);

  Reply r = Exchange(port, "GET", "/metrics");
  EXPECT_EQ(r.status, 200) << r.raw;
  EXPECT_EQ(r.body, metrics);
  EXPECT_THAT(r.head, HasSubstr("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
  r = Exchange(port, "GET", "/metrics?name[]=up");  // the query is no part of the path
  EXPECT_EQ(r.status, 200) << r.raw;
  r = Exchange(port, "GET", "/healthz");
  EXPECT_EQ(r.status, 200) << r.raw;
  EXPECT_EQ(r.body, "ok\n");
  EXPECT_THAT(r.head, HasSubstr("Content-Type: text/plain; charset=utf-8\r\n"));
  r = Exchange(port, "GET", "/readyz");
  EXPECT_EQ(r.status, 200) << r.raw;
  EXPECT_EQ(r.body, "ready\n");
  not_ready = "draining";
  r = Exchange(port, "GET", "/readyz");
  EXPECT_EQ(r.status, 503) << r.raw;
  EXPECT_EQ(r.body, "not ready: draining\n");
  EXPECT_THAT(r.head, HasSubstr("Content-Type: text/plain; charset=utf-8\r\n"));
  EXPECT_EQ(Exchange(port, "GET", "/healthz").status, 200);  // alive while draining

  r = Exchange(port, "HEAD", "/metrics");
  EXPECT_EQ(r.status, 200) << r.raw;
  EXPECT_THAT(r.head, HasSubstr("Content-Length: " + std::to_string(metrics.size()) + "\r\n"));
  EXPECT_EQ(r.body, "");
  EXPECT_EQ(Exchange(port, "GET", "/").status, 404);
  EXPECT_EQ(Exchange(port, "GET", "/metricsz").status, 404);
  EXPECT_EQ(Exchange(port, "DELETE", "/nowhere").status, 404);
  for (const char* method : {"POST", "PUT", "DELETE", "OPTIONS", "TRACE"}) {
    r = Exchange(port, method, "/metrics");
    EXPECT_EQ(r.status, 405) << method << "\n" << r.raw;
    EXPECT_THAT(r.head, HasSubstr("Allow: GET, HEAD\r\n"));
  }
  // A body with a GET is read and dropped.
  r = Exchange(port, "GET", "/healthz", "Content-Length: 5\r\n\r\nhello");
  EXPECT_EQ(r.status, 200) << r.raw;
}

TEST(AdminHttpTest, AKeptAliveConnectionServesOneRequestAfterAnother) {
  const std::string metrics = "up 1\n";
  const std::string not_ready;
  auto admin = AdminServer::Start("127.0.0.1:0", TestHandlers(&metrics, &not_ready));
  ASSERT_TRUE(admin.ok()) << admin.status();
  const int fd = Connect((*admin)->port());
  ASSERT_GE(fd, 0);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(SendAll(fd, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
    const std::string expected = "ok\n";
    std::string raw;
    const auto deadline = Clock::now() + std::chrono::seconds(2);
    while (raw.find("\r\n\r\nok\n") == std::string::npos && Clock::now() < deadline) {
      raw += ReadUntil(fd, deadline, nullptr, 1);
    }
    EXPECT_EQ(Parse(raw).status, 200) << raw;
    EXPECT_EQ(Parse(raw).body, expected);
  }
  close(fd);
}

TEST(AdminHttpTest, ListensOnHostPortOrSaysWhyNot) {
  const std::string metrics, not_ready;
  for (const char* bad : {"9090", ":9090", "127.0.0.1:", "127.0.0.1:x", "127.0.0.1:65536"}) {
    auto admin = AdminServer::Start(bad, TestHandlers(&metrics, &not_ready));
    EXPECT_EQ(admin.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(std::string(admin.status().message()), StartsWith("--admin-listen: ")) << bad;
  }
  auto first = AdminServer::Start("localhost:0", TestHandlers(&metrics, &not_ready));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_GT((*first)->port(), 0);
  auto numeric = AdminServer::Start("127.0.0.1:0", TestHandlers(&metrics, &not_ready));
  ASSERT_TRUE(numeric.ok()) << numeric.status();
  const std::string busy = "127.0.0.1:" + std::to_string((*numeric)->port());
  auto second = AdminServer::Start(busy, TestHandlers(&metrics, &not_ready));
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(second.status().message()),
              HasSubstr("--admin-listen: cannot listen on " + busy));
  auto nowhere = AdminServer::Start("no-such-host.invalid:0", TestHandlers(&metrics, &not_ready));
  EXPECT_EQ(nowhere.status().code(), absl::StatusCode::kUnavailable);
}

// Against cpp-httplib, which bounded neither a header line's count nor
// their total, two such connections grew the server ~300 MiB/s.
TEST(AdminHttpTest, EndlessHeaderLinesAreRefusedInBoundedMemory) {
  const std::string metrics, not_ready;
  auto admin = AdminServer::Start("127.0.0.1:0", TestHandlers(&metrics, &not_ready));
  ASSERT_TRUE(admin.ok()) << admin.status();
  const int port = (*admin)->port();
  const int64_t before = testing::ProcStatusBytes(0, "VmRSS");
  const std::string line = "X-a: " + std::string(1000, 'a') + "\r\n";
  std::atomic<int64_t> peak{before};
  std::vector<std::string> answers(2);
  std::vector<size_t> sent(2, 0);
  std::vector<std::thread> flooders;
  for (int i = 0; i < 2; ++i) {
    flooders.emplace_back([&, i] {
      const int fd = Connect(port);
      if (fd < 0) return;
      const auto end = Clock::now() + std::chrono::seconds(3);
      bool ok = SendAll(fd, "GET /metrics HTTP/1.1\r\nHost: x\r\n");
      while (ok && Clock::now() < end) {
        ok = SendAll(fd, line);
        if (ok) sent[i] += line.size();
        int64_t rss = testing::ProcStatusBytes(0, "VmRSS");
        for (int64_t p = peak.load(); rss > p && !peak.compare_exchange_weak(p, rss);) {
        }
      }
      bool closed = false;
      answers[i] = ReadUntil(fd, Clock::now() + milliseconds(500), &closed);
      if (!closed) answers[i] += "\n(still open)";
      if (ok) answers[i] += "\n(still accepting header lines after 3 s)";
      close(fd);
    });
  }
  for (std::thread& t : flooders) t.join();
  EXPECT_LE(peak.load() - before, 4 * kMiB);
  for (int i = 0; i < 2; ++i) {
    // Refused once the head passes the connection's memory (32 KiB), with a
    // 431, or a reset when the refusal crossed the flood.
    EXPECT_LT(sent[i], size_t{4} * kMiB) << i;
    EXPECT_THAT(answers[i], ::testing::Not(HasSubstr("(still"))) << i;
    if (!answers[i].empty()) {
      EXPECT_EQ(Parse(answers[i]).status, 431) << answers[i];
    }
  }
  // And the endpoint still serves.
  EXPECT_EQ(Exchange(port, "GET", "/readyz").status, 200);
}

// Against cpp-httplib's 4 threads, 4 such clients blocked every probe.
TEST(AdminHttpTest, SlowClientsNeverBlockTheProbes) {
  const std::string metrics, not_ready;
  auto admin = AdminServer::Start("127.0.0.1:0", TestHandlers(&metrics, &not_ready));
  ASSERT_TRUE(admin.ok()) << admin.status();
  const int port = (*admin)->port();
  constexpr int kSlow = 8;
  std::vector<int> slow;
  for (int i = 0; i < kSlow; ++i) {
    slow.push_back(Connect(port));
    ASSERT_GE(slow.back(), 0);
    ASSERT_TRUE(SendAll(slow.back(), "GET /metrics HTTP/1.1\r\nHost: x\r\n"));
  }
  std::atomic<bool> done{false};
  std::thread trickle([&] {
    for (int n = 0; !done.load(); ++n) {
      for (int fd : slow) SendAll(fd, "X-slow-" + std::to_string(n) + ": 1\r\n");
      for (int i = 0; i < 20 && !done.load(); ++i) std::this_thread::sleep_for(milliseconds(100));
    }
  });
  int probes = 0;
  for (const auto end = Clock::now() + std::chrono::milliseconds(4500); Clock::now() < end;) {
    const auto start = Clock::now();
    const Reply r = Exchange(port, "GET", probes % 2 == 0 ? "/readyz" : "/healthz");
    const int64_t took_ms = std::chrono::duration_cast<milliseconds>(Clock::now() - start).count();
    EXPECT_EQ(r.status, 200) << r.raw;
    EXPECT_LT(took_ms, 1000);
    ++probes;
    std::this_thread::sleep_for(milliseconds(200));
  }
  EXPECT_GE(probes, 10);
  done = true;
  trickle.join();
  for (int fd : slow) close(fd);
}

// The idle timeout restarts at every byte; the deadline does not.
TEST(AdminHttpTest, ATricklingHeadIsClosedAtTheDeadlineAndAnIdleConnectionAtTheTimeout) {
  const std::string metrics, not_ready;
  AdminServer::Limits limits;
  limits.request_deadline = milliseconds(1500);
  limits.idle_timeout_seconds = 1;
  auto admin = AdminServer::Start("127.0.0.1:0", TestHandlers(&metrics, &not_ready), limits);
  ASSERT_TRUE(admin.ok()) << admin.status();
  const int port = (*admin)->port();

  const int trickling = Connect(port);
  ASSERT_GE(trickling, 0);
  const auto start = Clock::now();
  bool alive = SendAll(trickling, "GET /metrics HTTP/1.1\r\n");
  bool closed = false;
  for (int n = 0; alive && !closed && Clock::now() - start < std::chrono::seconds(4); ++n) {
    alive = SendAll(trickling, "X-" + std::to_string(n) + ": 1\r\n");
    ReadUntil(trickling, Clock::now() + milliseconds(300), &closed);
  }
  const auto lasted = Clock::now() - start;
  EXPECT_TRUE(closed || !alive);
  EXPECT_GE(lasted, milliseconds(1400));
  EXPECT_LE(lasted, milliseconds(2800));
  close(trickling);

  // A kept-alive connection after its response: idle, then closed.
  const int idle = Connect(port);
  ASSERT_GE(idle, 0);
  ASSERT_TRUE(SendAll(idle, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
  const auto sent = Clock::now();
  const std::string raw = ReadUntil(idle, sent + std::chrono::seconds(4), &closed);
  EXPECT_EQ(Parse(raw).status, 200) << raw;
  EXPECT_TRUE(closed);
  EXPECT_LE(Clock::now() - sent, milliseconds(2800));
  close(idle);
}

// Against cpp-httplib, one 8 KB request with 2,700 ranges got a 41 MB
// multipart answer (a part per range, each with its own headers).
TEST(AdminHttpTest, RangesAreIgnoredAndTheBodySentOnce) {
  std::string metrics;
  for (int i = 0; metrics.size() < 20000; ++i) {
    metrics += "attention_test_series{n=\"" + std::to_string(i) + "\"} 1\n";
  }
  const std::string not_ready;
  auto admin = AdminServer::Start("127.0.0.1:0", TestHandlers(&metrics, &not_ready));
  ASSERT_TRUE(admin.ok()) << admin.status();
  const int port = (*admin)->port();
  std::string overlapping = "Range: bytes=0-";  // 2,700 copies of the whole body
  std::string pairs = "Range: bytes=0-1";       // 2,700 parts, as the probe sent
  for (int i = 1; i < 2700; ++i) {
    overlapping += ",0-";
    pairs += "," + std::to_string(2 * i) + "-" + std::to_string(2 * i + 1);
  }
  for (const std::string& range : {overlapping, pairs}) {
    const size_t most = metrics.size() + 1024;  // the body once, and its head
    const Reply r = Exchange(port, "GET", "/metrics", range + "\r\n", 4 * most);
    EXPECT_EQ(r.status, 200) << r.head;
    EXPECT_LE(r.raw.size(), most);
    EXPECT_TRUE(r.body == metrics) << r.body.size() << " bytes of body";
  }
}

TEST(AdminHttpTest, ConnectionsFromOneAddressAreCapped) {
  const std::string metrics, not_ready;
  AdminServer::Limits limits;
  limits.connections_per_ip = 4;
  auto admin = AdminServer::Start("127.0.0.1:0", TestHandlers(&metrics, &not_ready), limits);
  ASSERT_TRUE(admin.ok()) << admin.status();
  const int port = (*admin)->port();
  std::vector<int> held;
  for (int i = 0; i < 4; ++i) {
    held.push_back(Connect(port));
    ASSERT_GE(held.back(), 0);
  }
  std::this_thread::sleep_for(milliseconds(200));  // all four accepted
  bool closed = false;
  const int extra = Connect(port);
  ASSERT_GE(extra, 0);  // the kernel accepts; MHD closes it at once
  SendAll(extra, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
  const std::string raw = ReadUntil(extra, Clock::now() + std::chrono::seconds(2), &closed);
  EXPECT_TRUE(closed);
  EXPECT_EQ(raw, "");
  close(extra);
  close(held.back());
  held.pop_back();
  std::this_thread::sleep_for(milliseconds(200));  // MHD sees the close
  EXPECT_EQ(Exchange(port, "GET", "/healthz").status, 200);
  for (int fd : held) close(fd);
}

}  // namespace
}  // namespace server
}  // namespace attention
