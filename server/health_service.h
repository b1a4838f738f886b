// grpc.health.v1.Health on gRPC's callback API, in place of gRPC's default
// health service, whose Watch streams have no limit: unauthenticated
// clients (health is exempt from tokens so that probes work) could open tens
// of thousands and hold memory outside the server's budget (40,000 held
// 750 MiB).
//
// Check answers SERVING or NOT_SERVING for "" and each service named at
// construction, NOT_FOUND for any other name. Watch sends the current status
// at once and then every change (SERVICE_UNKNOWN for an unknown name, and
// stays open), until the client cancels or Shutdown; a name longer than
// kMaxWatchedNameBytes is refused (INVALID_ARGUMENT: gRPC keeps the request
// for as long as the stream lasts). At most `max_watchers`
// Watch streams are open at once (a probe or a load balancer needs a handful;
// each costs gRPC's call, about 17 KB); over it a new one is finished at once
// with RESOURCE_EXHAUSTED. Shutdown finishes every Watch stream (CANCELLED,
// after the last status written), so that they do not hold up the server's
// own shutdown.
#ifndef SERVER_HEALTH_SERVICE_H_
#define SERVER_HEALTH_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <cstddef>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace attention {
namespace server {

class HealthService final : public grpc::health::v1::Health::CallbackService {
 public:
  // The longest service name a Watch may ask for.
  static constexpr size_t kMaxWatchedNameBytes = 1024;

  struct Options {
    // Watch streams open at once in the whole server.
    int max_watchers = 1000;
  };

  // `services`: the names that are SERVING or NOT_SERVING besides "" (all
  // together, as SetServing says). They start NOT_SERVING.
  explicit HealthService(std::vector<std::string> services, Options options);
  explicit HealthService(std::vector<std::string> services)
      : HealthService(std::move(services), Options()) {}
  HealthService(const HealthService&) = delete;
  HealthService& operator=(const HealthService&) = delete;
  // The grpc::Server it is registered with must be shut down first (every
  // Watch stream done).
  ~HealthService() override = default;

  grpc::ServerUnaryReactor* Check(grpc::CallbackServerContext* context,
                                  const grpc::health::v1::HealthCheckRequest* request,
                                  grpc::health::v1::HealthCheckResponse* response) override;
  grpc::ServerWriteReactor<grpc::health::v1::HealthCheckResponse>* Watch(
      grpc::CallbackServerContext* context,
      const grpc::health::v1::HealthCheckRequest* request) override;

  // Sets every registered service's status (and ""'s); the Watch streams
  // are sent the change (those being finished by Shutdown are not).
  void SetServing(bool serving) ABSL_LOCKS_EXCLUDED(mu_);

  // Finishes every Watch stream (CANCELLED, once the status being written,
  // if any, is), and any opened later as soon as it has been sent the
  // current status. Check keeps answering. Call before the grpc::Server's
  // Shutdown, which would otherwise wait for the streams until its deadline.
  void Shutdown() ABSL_LOCKS_EXCLUDED(mu_);

  // Watch streams open: from their start until gRPC is done with them.
  int watchers() const ABSL_LOCKS_EXCLUDED(mu_);
  int max_watchers() const { return max_watchers_; }

 private:
  class WatchReactor;

  // The status of a registered service (null: an unknown one) now.
  grpc::health::v1::HealthCheckResponse::ServingStatus StatusLocked(
      const std::string* service) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // `name` among services_, or null.
  const std::string* Find(const std::string& name) const;
  // From WatchReactor::OnDone.
  void Unregister(WatchReactor* watcher) ABSL_LOCKS_EXCLUDED(mu_);

  const std::unordered_set<std::string> services_;  // "" among them
  const int max_watchers_;

  mutable absl::Mutex mu_;
  bool serving_ ABSL_GUARDED_BY(mu_) = false;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  // Every Watch stream accepted and not yet done. Lock order: mu_, then a
  // reactor's own mutex.
  std::unordered_set<WatchReactor*> watchers_ ABSL_GUARDED_BY(mu_);
};

}  // namespace server
}  // namespace attention

#endif  // SERVER_HEALTH_SERVICE_H_
