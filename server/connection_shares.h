// Fairness between client connections: how many requests each connection
// has in the server (admitted and not yet answered). While the compute queue
// is busy, a connection that already holds its share is refused
// (RESOURCE_EXHAUSTED) and the others are still admitted, so one client with
// many streams or calls in flight cannot take the whole queue; while the
// queue is not busy, any connection may use all of it.
//
//   ConnectionShares shares(16);
//   ConnectionShares::Ticket ticket;
//   absl::Status s = shares.Enter(context->peer(), /*busy=*/4 * queued >= 3 * max_queue, &ticket);
//   // ... ~Ticket (the response written) lets the connection's count go down
//
// A connection is gRPC's peer string (one per TCP connection). Behind a
// proxy every client shares the proxy's connections, so fairness between
// them is the proxy's. Thread-safe.
#ifndef SERVER_CONNECTION_SHARES_H_
#define SERVER_CONNECTION_SHARES_H_

#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

namespace attention {
namespace server {

class ConnectionShares {
 public:
  // A connection's place in the server; leaves it when destroyed or Reset.
  // Move-only; a default-constructed one holds nothing. One thread at a time.
  class Ticket {
   public:
    Ticket() = default;
    ~Ticket() { Reset(); }
    Ticket(Ticket&& other) noexcept;
    Ticket& operator=(Ticket&& other) noexcept;
    void Reset();

   private:
    friend class ConnectionShares;
    ConnectionShares* shares_ = nullptr;
    std::string peer_;
  };

  // `share` >= 1: the requests one connection may hold while the queue is busy.
  explicit ConnectionShares(int share) : share_(share) {}
  ConnectionShares(const ConnectionShares&) = delete;
  ConnectionShares& operator=(const ConnectionShares&) = delete;

  // Counts one more request of `peer` into `ticket` (which must hold
  // nothing), unless `busy` and `peer` already holds `share` requests:
  // then ResourceExhausted "connection share: ...", and nothing is counted.
  absl::Status Enter(const std::string& peer, bool busy, Ticket* ticket);

  // Requests `peer` holds now.
  int held(const std::string& peer) const;
  int share() const { return share_; }

 private:
  void Leave(const std::string& peer);

  const int share_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, int> held_ ABSL_GUARDED_BY(mu_);
};

}  // namespace server
}  // namespace attention

#endif  // SERVER_CONNECTION_SHARES_H_
