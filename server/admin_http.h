// The admin endpoint: plain HTTP on a port of its own, for probes and
// scrapers (so they work whatever TLS or tokens the gRPC port requires).
//   GET /metrics  the Prometheus text exposition format
//   GET /healthz  200 while the process is alive
//   GET /readyz   200 when serving; 503 with the reason while starting or draining
//
//   AdminServer::Handlers handlers;
//   handlers.metrics = [&] { return registry.Exposition(); };
//   handlers.not_ready = [&] { return ready ? "" : "starting"; };
//   absl::StatusOr<std::unique_ptr<AdminServer>> admin =
//       AdminServer::Start("0.0.0.0:9090", handlers);
//   (*admin)->port();   // the port bound (useful with port 0)
//
// Requests are served by a few threads of cpp-httplib's own, never by the
// gRPC or compute threads. Destroying the server stops it.
#ifndef SERVER_ADMIN_HTTP_H_
#define SERVER_ADMIN_HTTP_H_

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace httplib {
class Server;
}

namespace attention {
namespace server {

class AdminServer {
 public:
  struct Handlers {
    std::function<std::string()> metrics;    // the exposition text
    std::function<std::string()> not_ready;  // "" when ready, else why not ("draining")
  };

  // Listens on HOST:PORT (port 0 picks a free one; HOST may be a name, an
  // IPv4 address or a bracketed IPv6 one). InvalidArgument for an address
  // that is not HOST:PORT; Unavailable when it cannot be bound (in use).
  // The handlers are called from the server's threads and must be
  // thread-safe; they must outlive the server.
  static absl::StatusOr<std::unique_ptr<AdminServer>> Start(const std::string& address,
                                                            Handlers handlers);
  ~AdminServer();  // stops listening, finishes the requests in progress
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

  int port() const { return port_; }

 private:
  AdminServer();

  std::unique_ptr<httplib::Server> http_;
  Handlers handlers_;
  int port_ = 0;
  std::thread thread_;
};

}  // namespace server
}  // namespace attention

#endif  // SERVER_ADMIN_HTTP_H_
