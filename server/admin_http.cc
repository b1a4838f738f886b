#include "server/admin_http.h"

#include <httplib.h>

#include <chrono>
#include <cstdlib>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"

namespace attention {
namespace server {
namespace {

// Scrapes, probes and an operator's curl at once; a kept-alive idle
// connection holds one thread for at most kKeepAliveSeconds.
constexpr size_t kThreads = 4;
constexpr time_t kKeepAliveSeconds = 2;

}  // namespace

AdminServer::AdminServer() : http_(std::make_unique<httplib::Server>()) {}

AdminServer::~AdminServer() {
  if (thread_.joinable()) {
    // stop() only takes effect once the listening loop runs (it starts on
    // thread_ right after Start returns).
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (!http_->is_running() && std::chrono::steady_clock::now() < end) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    http_->stop();
    thread_.join();
  }
}

absl::StatusOr<std::unique_ptr<AdminServer>> AdminServer::Start(const std::string& address,
                                                                Handlers handlers) {
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

  std::unique_ptr<AdminServer> admin(new AdminServer());
  admin->handlers_ = std::move(handlers);
  httplib::Server& http = *admin->http_;
  http.new_task_queue = [] { return new httplib::ThreadPool(kThreads); };
  http.set_keep_alive_timeout(kKeepAliveSeconds);
  http.set_payload_max_length(1 << 16);  // GETs only: no request needs a body
  const Handlers* h = &admin->handlers_;
  http.Get("/metrics", [h](const httplib::Request&, httplib::Response& res) {
    res.set_content(h->metrics(), "text/plain; version=0.0.4; charset=utf-8");
  });
  http.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain; charset=utf-8");
  });
  http.Get("/readyz", [h](const httplib::Request&, httplib::Response& res) {
    const std::string reason = h->not_ready();
    res.status = reason.empty() ? 200 : 503;
    res.set_content(reason.empty() ? "ready\n" : "not ready: " + reason + "\n",
                    "text/plain; charset=utf-8");
  });

  if (port == 0) {
    port = http.bind_to_any_port(host);
    if (port <= 0) port = -1;
  } else if (!http.bind_to_port(host, port)) {
    port = -1;
  }
  if (port < 0) {
    return absl::UnavailableError("--admin-listen: cannot listen on " + address +
                                  " (address in use, or no such host)");
  }
  admin->port_ = port;
  admin->thread_ = std::thread([&http] { http.listen_after_bind(); });
  return admin;
}

}  // namespace server
}  // namespace attention
