#include "server/grpc_status.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace attention {
namespace server {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  auto code = static_cast<grpc::StatusCode>(status.code());
  if (status.code() == absl::StatusCode::kUnknown) code = grpc::StatusCode::INTERNAL;
  absl::string_view message = status.message();
  if (message.size() > kMaxStatusMessageBytes) {
    size_t end = kMaxStatusMessageBytes - 3;
    while (end > 0 && (static_cast<unsigned char>(message[end]) & 0xC0) == 0x80) --end;  // UTF-8
    return grpc::Status(code, absl::StrCat(message.substr(0, end), "..."));
  }
  return grpc::Status(code, std::string(message));
}

}  // namespace server
}  // namespace attention
