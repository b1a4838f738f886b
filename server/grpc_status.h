// The one place where an absl::Status (the core's and the server's errors)
// becomes a grpc::Status, for unary calls and stream messages alike.
#ifndef SERVER_GRPC_STATUS_H_
#define SERVER_GRPC_STATUS_H_

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace attention {
namespace server {

// Same code, same message. Codes the service never means to send (UNKNOWN)
// become INTERNAL.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace server
}  // namespace attention

#endif  // SERVER_GRPC_STATUS_H_
