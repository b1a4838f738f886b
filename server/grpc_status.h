// The one place where an absl::Status (the core's and the server's errors)
// becomes a grpc::Status, for unary calls and stream messages alike.
#ifndef SERVER_GRPC_STATUS_H_
#define SERVER_GRPC_STATUS_H_

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace attention {
namespace server {

// The longest message sent, in bytes: messages travel in the grpc-message
// trailer, and a client whose received metadata exceeds its limit (8 KiB by
// default) reports RESOURCE_EXHAUSTED instead of the real status.
inline constexpr size_t kMaxStatusMessageBytes = 512;

// Same code, same message (cut to kMaxStatusMessageBytes with "..."). Codes
// the service never means to send (UNKNOWN) become INTERNAL.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace server
}  // namespace attention

#endif  // SERVER_GRPC_STATUS_H_
