#include "server/admin_http.h"

#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"

namespace attention {
namespace server {
namespace {

using Clock = std::chrono::steady_clock;

constexpr char kText[] = "text/plain; charset=utf-8";
constexpr char kExposition[] = "text/plain; version=0.0.4; charset=utf-8";
constexpr int kBacklog = 64;
// A GET's body is read and dropped; a larger one closes the connection.
constexpr uintptr_t kMaxDroppedBody = 1 << 16;

// A listening socket on HOST:PORT, the first of the host's addresses that
// binds, or -1. SO_REUSEADDR (a restart binds while the last run's
// connections linger in TIME_WAIT) but not SO_REUSEPORT (which would let
// another process share the port).
int Listen(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found) != 0) return -1;
  int fd = -1;
  for (const addrinfo* a = found; a != nullptr && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
    if (fd < 0) continue;
    const int yes = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes)) != 0 ||
        bind(fd, a->ai_addr, a->ai_addrlen) != 0 || listen(fd, kBacklog) != 0) {
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(found);
  return fd;
}

int BoundPort(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return -1;
  if (addr.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
  if (addr.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
  return -1;
}

// Queues the whole body (MHD sends none for HEAD, and never a part: it
// implements no ranges).
MHD_Result Reply(MHD_Connection* connection, unsigned status, const std::string& body,
                 const char* type, bool allow_get = false) {
  MHD_Response* response = MHD_create_response_from_buffer(
      body.size(), const_cast<char*>(body.data()), MHD_RESPMEM_MUST_COPY);
  if (response == nullptr) return MHD_NO;
  MHD_Result ok = MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, type);
  if (ok == MHD_YES && allow_get) {
    ok = MHD_add_response_header(response, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
  }
  if (ok == MHD_YES) ok = MHD_queue_response(connection, status, response);
  MHD_destroy_response(response);
  return ok;
}

}  // namespace

struct AdminServer::Callbacks {
  // Called when a request's head has arrived (*request is null), then for
  // each part of its body, then once more with none left.
  static MHD_Result Answer(void* cls, MHD_Connection* connection, const char* url,
                           const char* method, const char* /*version*/, const char* /*upload_data*/,
                           size_t* upload_size, void** request) {
    const AdminServer& self = *static_cast<const AdminServer*>(cls);
    const bool metrics = std::strcmp(url, "/metrics") == 0;
    const bool healthz = std::strcmp(url, "/healthz") == 0;
    const bool readyz = std::strcmp(url, "/readyz") == 0;
    if (*request == nullptr) {
      // Refusals at once (the connection then closes, unread body and all).
      if (!metrics && !healthz && !readyz) return Reply(connection, 404, "not found\n", kText);
      if (std::strcmp(method, MHD_HTTP_METHOD_GET) != 0 &&
          std::strcmp(method, MHD_HTTP_METHOD_HEAD) != 0) {
        return Reply(connection, 405, "method not allowed\n", kText, /*allow_get=*/true);
      }
      // MHD answers only once the whole request is in: *request counts the
      // body bytes dropped, plus one.
      *request = reinterpret_cast<void*>(uintptr_t{1});
      return MHD_YES;
    }
    if (*upload_size != 0) {
      const uintptr_t dropped = reinterpret_cast<uintptr_t>(*request) - 1 + *upload_size;
      if (dropped > kMaxDroppedBody) return MHD_NO;  // closes the connection
      *request = reinterpret_cast<void*>(dropped + 1);
      *upload_size = 0;
      return MHD_YES;
    }
    try {
      if (metrics) {
        return Reply(connection, 200, self.handlers_.metrics ? self.handlers_.metrics() : "",
                     kExposition);
      }
      if (healthz) return Reply(connection, 200, "ok\n", kText);
      const std::string reason = self.handlers_.not_ready ? self.handlers_.not_ready() : "";
      return reason.empty() ? Reply(connection, 200, "ready\n", kText)
                            : Reply(connection, 503, "not ready: " + reason + "\n", kText);
    } catch (...) {  // nothing may unwind through the C library
      return Reply(connection, 500, "internal error\n", kText);
    }
  }

  static void Notify(void* cls, MHD_Connection* connection, void** /*socket_context*/,
                     MHD_ConnectionNotificationCode code) {
    AdminServer& self = *static_cast<AdminServer*>(cls);
    std::lock_guard<std::mutex> lock(self.mu_);
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
      const MHD_ConnectionInfo* info =
          MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CONNECTION_FD);
      self.connections_[connection] = {info != nullptr ? info->connect_fd : -1, Clock::now()};
    } else {
      // Before MHD closes the socket: Watch never shuts down a reused fd.
      self.connections_.erase(connection);
    }
  }

  static void Completed(void* cls, MHD_Connection* connection, void** /*request*/,
                        MHD_RequestTerminationCode code) {
    if (code != MHD_REQUEST_TERMINATED_COMPLETED_OK) return;  // the connection closes
    AdminServer& self = *static_cast<AdminServer*>(cls);
    std::lock_guard<std::mutex> lock(self.mu_);
    const auto it = self.connections_.find(connection);
    if (it != self.connections_.end()) it->second.since = Clock::now();
  }
};

AdminServer::~AdminServer() {
  if (watchdog_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    wake_.notify_all();
    watchdog_.join();
  }
  if (daemon_ != nullptr) MHD_stop_daemon(daemon_);  // closes the listening socket too
}

// MHD's own timeout restarts at every byte, so a client sending a header
// line every few seconds would hold its connection forever: past the
// deadline its socket is shut down here, and MHD, reading the end of it,
// closes the connection.
void AdminServer::Watch() {
  const std::chrono::milliseconds period = std::clamp(
      limits_.request_deadline / 8, std::chrono::milliseconds(10), std::chrono::milliseconds(500));
  std::unique_lock<std::mutex> lock(mu_);
  while (!wake_.wait_for(lock, period, [this] { return stopping_; })) {
    const Clock::time_point now = Clock::now();
    for (auto& [connection, c] : connections_) {
      if (c.fd >= 0 && now - c.since > limits_.request_deadline) {
        shutdown(c.fd, SHUT_RDWR);
        c.fd = -1;  // once
      }
    }
  }
}

absl::StatusOr<std::unique_ptr<AdminServer>> AdminServer::Start(const std::string& address,
                                                                Handlers handlers) {
  return Start(address, std::move(handlers), Limits());
}

absl::StatusOr<std::unique_ptr<AdminServer>> AdminServer::Start(const std::string& address,
                                                                Handlers handlers, Limits limits) {
  const size_t colon = address.rfind(':');
  int port = -1;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(address.substr(colon + 1), &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError("--admin-listen: \"" + address +
                                      "\" is not HOST:PORT (e.g. 0.0.0.0:9090)");
  }
  std::string host = address.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }

  const int fd = Listen(host, port);
  if (fd >= 0) port = BoundPort(fd);
  if (fd < 0 || port <= 0) {
    if (fd >= 0) close(fd);
    return absl::UnavailableError("--admin-listen: cannot listen on " + address +
                                  " (address in use, or no such host)");
  }

  std::unique_ptr<AdminServer> admin(new AdminServer());
  admin->handlers_ = std::move(handlers);
  admin->limits_ = limits;
  admin->port_ = port;
  // One thread's epoll loop serves every connection: a slow one holds
  // memory (bounded by the limits) but never a thread.
  admin->daemon_ = MHD_start_daemon(
      MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL, 0, nullptr, nullptr, &Callbacks::Answer,
      admin.get(), MHD_OPTION_LISTEN_SOCKET, static_cast<MHD_socket>(fd),
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, static_cast<size_t>(limits.connection_memory_bytes),
      MHD_OPTION_CONNECTION_TIMEOUT, static_cast<unsigned int>(limits.idle_timeout_seconds),
      MHD_OPTION_CONNECTION_LIMIT, static_cast<unsigned int>(limits.connections),
      MHD_OPTION_PER_IP_CONNECTION_LIMIT, static_cast<unsigned int>(limits.connections_per_ip),
      MHD_OPTION_NOTIFY_CONNECTION, &Callbacks::Notify, admin.get(), MHD_OPTION_NOTIFY_COMPLETED,
      &Callbacks::Completed, admin.get(), MHD_OPTION_END);
  if (admin->daemon_ == nullptr) {
    // fd is not closed here: MHD closes it on some of its failures.
    return absl::UnavailableError("--admin-listen: cannot serve on " + address +
                                  " (libmicrohttpd did not start)");
  }
  admin->watchdog_ = std::thread([a = admin.get()] { a->Watch(); });
  return admin;
}

}  // namespace server
}  // namespace attention
