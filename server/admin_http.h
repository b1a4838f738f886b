// The admin endpoint: plain HTTP on a port of its own, for probes and
// scrapers (so they work whatever TLS or tokens the gRPC port requires).
//   GET /metrics  the Prometheus text exposition format
//   GET /healthz  200 while the process is alive
//   GET /readyz   200 when serving; 503 with the reason while starting or draining
// HEAD too; 405 for other methods on those paths, 404 elsewhere. No ranges:
// a Range header is ignored and the whole body sent once.
//
//   AdminServer::Handlers handlers;
//   handlers.metrics = [&] { return registry.Exposition(); };
//   handlers.not_ready = [&] { return ready ? "" : "starting"; };
//   absl::StatusOr<std::unique_ptr<AdminServer>> admin =
//       AdminServer::Start("0.0.0.0:9090", handlers);
//   (*admin)->port();   // the port bound (useful with port 0)
//
// Served by GNU libmicrohttpd on one event-loop thread of its own (epoll),
// never by the gRPC or compute threads, so a slow client holds a connection
// but never a thread. Every connection is bounded (see Limits): its memory
// (request heads larger are refused with 431), its idle time, and the time
// from its start, or its previous response, to the next response, however
// slowly it trickles; and so are the connections at once, in all and from
// one address. Destroying the server stops it.
#ifndef SERVER_ADMIN_HTTP_H_
#define SERVER_ADMIN_HTTP_H_

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>

#include "absl/status/statusor.h"

struct MHD_Daemon;
struct MHD_Connection;

namespace attention {
namespace server {

class AdminServer {
 public:
  struct Handlers {
    std::function<std::string()> metrics;    // the exposition text
    std::function<std::string()> not_ready;  // "" when ready, else why not ("draining")
  };

  // What one client, or many, may hold. The defaults serve probes and
  // scrapers (a request head of a few hundred bytes, answered at once) with
  // room to spare.
  struct Limits {
    // A connection's memory (request head and response head): a request
    // head larger is refused (431) and its connection closed.
    size_t connection_memory_bytes = 32 * 1024;
    // Closed after this long without a byte received or sent.
    unsigned idle_timeout_seconds = 10;
    // Closed when no response completes this long after the connection
    // opened or after its previous response, however slowly it trickles
    // bytes (which the idle timeout alone would allow forever).
    std::chrono::milliseconds request_deadline{10'000};
    unsigned connections = 256;        // open at once (then new ones wait in the backlog)
    unsigned connections_per_ip = 32;  // open at once from one address (then refused)
  };

  // Listens on HOST:PORT (port 0 picks a free one; HOST may be a name, an
  // IPv4 address or a bracketed IPv6 one). InvalidArgument for an address
  // that is not HOST:PORT; Unavailable when it cannot be bound (in use).
  // The handlers are called from the server's thread and must be
  // thread-safe; they must outlive the server.
  static absl::StatusOr<std::unique_ptr<AdminServer>> Start(const std::string& address,
                                                            Handlers handlers);
  static absl::StatusOr<std::unique_ptr<AdminServer>> Start(const std::string& address,
                                                            Handlers handlers, Limits limits);
  ~AdminServer();  // stops listening, closes the connections
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

  int port() const { return port_; }

 private:
  struct Connection {
    int fd;
    std::chrono::steady_clock::time_point since;  // opened, or its last response completed
  };

  AdminServer() = default;
  void Watch();  // closes the connections past their deadline, until stopping_

  struct Callbacks;  // libmicrohttpd's (admin_http.cc)

  Handlers handlers_;
  Limits limits_;
  int port_ = 0;
  MHD_Daemon* daemon_ = nullptr;

  std::mutex mu_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::unordered_map<const MHD_Connection*, Connection> connections_;  // guarded by mu_
  std::thread watchdog_;
};

}  // namespace server
}  // namespace attention

#endif  // SERVER_ADMIN_HTTP_H_
