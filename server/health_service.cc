#include "server/health_service.h"

#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"

namespace attention {
namespace server {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;
using ServingStatus = HealthCheckResponse::ServingStatus;

namespace {

std::unordered_set<std::string> WithDefault(std::vector<std::string> services) {
  std::unordered_set<std::string> all(std::make_move_iterator(services.begin()),
                                      std::make_move_iterator(services.end()));
  all.insert("");
  return all;
}

// A Watch refused at once (over the limit, or a name too long): the
// reactor gRPC needs, finished in its constructor.
class RefusedWatch final : public grpc::ServerWriteReactor<HealthCheckResponse> {
 public:
  explicit RefusedWatch(grpc::Status status) { Finish(std::move(status)); }
  void OnDone() override { delete this; }
};

}  // namespace

// One accepted Watch stream. At most one write is in flight; a status that
// changes meanwhile waits in `pending_` (only the latest), written from
// OnWriteDone. The service calls Send and End under its own mutex (lock
// order: the service's, then the reactor's); OnDone, which must take the
// service's mutex to unregister, therefore never runs while they do.
class HealthService::WatchReactor final : public grpc::ServerWriteReactor<HealthCheckResponse> {
 public:
  // `service`: a registered name in the service's set, or null (unknown).
  WatchReactor(HealthService* health, const std::string* service)
      : health_(health), service_(service) {}

  const std::string* service() const { return service_; }

  // Sends `status` if it differs from the last one written, now or once the
  // write in flight is done. Ignored once the stream is being finished.
  void Send(ServingStatus status) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (end_status_.has_value()) return;
    if (writing_) {
      pending_ = status;
      return;
    }
    WriteLocked(status);
  }

  // Finishes the stream with `status` once what is being written, and the
  // status pending, have been sent.
  void End(grpc::Status status) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (!end_status_.has_value()) end_status_ = std::move(status);
    MaybeFinishLocked();
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {
      // The stream is broken (cancelled, or the connection closed): nothing
      // more can be written.
      AbortLocked();
      return;
    }
    if (pending_.has_value()) {
      const ServingStatus status = *pending_;
      pending_.reset();
      WriteLocked(status);
    }
    MaybeFinishLocked();
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    AbortLocked();
  }

  void OnDone() override {
    health_->Unregister(this);
    delete this;
  }

 private:
  void WriteLocked(ServingStatus status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (last_written_.has_value() && *last_written_ == status) return;
    last_written_ = status;
    response_.set_status(status);
    writing_ = true;
    StartWrite(&response_);
  }

  // Drops what is pending and finishes as soon as no write is in flight.
  void AbortLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    pending_.reset();
    if (!end_status_.has_value()) {
      end_status_ = grpc::Status(grpc::StatusCode::CANCELLED, "the health Watch stream was closed");
    }
    MaybeFinishLocked();
  }

  void MaybeFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_ || !end_status_.has_value() || writing_ || pending_.has_value()) return;
    finished_ = true;
    Finish(*end_status_);
  }

  HealthService* const health_;
  const std::string* const service_;
  absl::Mutex mu_;
  HealthCheckResponse response_ ABSL_GUARDED_BY(mu_);  // the write in flight
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<ServingStatus> last_written_ ABSL_GUARDED_BY(mu_);
  std::optional<ServingStatus> pending_ ABSL_GUARDED_BY(mu_);
  std::optional<grpc::Status> end_status_ ABSL_GUARDED_BY(mu_);  // set: finish
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

HealthService::HealthService(std::vector<std::string> services, Options options)
    : services_(WithDefault(std::move(services))), max_watchers_(options.max_watchers) {}

const std::string* HealthService::Find(const std::string& name) const {
  auto it = services_.find(name);
  return it == services_.end() ? nullptr : &*it;
}

ServingStatus HealthService::StatusLocked(const std::string* service) const {
  if (service == nullptr) return HealthCheckResponse::SERVICE_UNKNOWN;
  return serving_ ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING;
}

grpc::ServerUnaryReactor* HealthService::Check(grpc::CallbackServerContext* context,
                                               const HealthCheckRequest* request,
                                               HealthCheckResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const std::string* service = Find(request->service());
  if (service == nullptr) {
    // As gRPC's default health service answers.
    reactor->Finish(grpc::Status(grpc::StatusCode::NOT_FOUND, "service name unknown"));
    return reactor;
  }
  {
    absl::MutexLock lock(&mu_);
    response->set_status(StatusLocked(service));
  }
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerWriteReactor<HealthCheckResponse>* HealthService::Watch(
    grpc::CallbackServerContext* /*context*/, const HealthCheckRequest* request) {
  if (request->service().size() > kMaxWatchedNameBytes) {
    return new RefusedWatch(
        grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                     absl::StrCat("service name longer than ", kMaxWatchedNameBytes, " bytes")));
  }
  size_t open = 0;
  {
    absl::MutexLock lock(&mu_);
    open = watchers_.size();
    if (open < static_cast<size_t>(max_watchers_)) {
      auto* watcher = new WatchReactor(this, Find(request->service()));
      watchers_.insert(watcher);
      watcher->Send(StatusLocked(watcher->service()));
      if (shut_down_) {
        watcher->End(grpc::Status(grpc::StatusCode::CANCELLED, "the server is shutting down"));
      }
      return watcher;
    }
  }
  return new RefusedWatch(
      grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                   absl::StrCat("too many health Watch streams (", open, " open); use Check")));
}

void HealthService::SetServing(bool serving) {
  absl::MutexLock lock(&mu_);
  if (serving_ == serving) return;
  serving_ = serving;
  for (WatchReactor* watcher : watchers_) watcher->Send(StatusLocked(watcher->service()));
}

void HealthService::Shutdown() {
  absl::MutexLock lock(&mu_);
  shut_down_ = true;
  for (WatchReactor* watcher : watchers_) {
    watcher->End(grpc::Status(grpc::StatusCode::CANCELLED, "the server is shutting down"));
  }
}

int HealthService::watchers() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(watchers_.size());
}

void HealthService::Unregister(WatchReactor* watcher) {
  absl::MutexLock lock(&mu_);
  watchers_.erase(watcher);
}

}  // namespace server
}  // namespace attention
