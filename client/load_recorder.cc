#include "client/load_recorder.h"

#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/wire_format_lite.h"
#include "grpcpp/impl/codegen/proto_buffer_reader.h"
#include "grpcpp/impl/codegen/proto_utils.h"

namespace attention {
namespace client {

void Recorder::Sent(const RequestTimes& t) {
  if (t.due_us >= 0 && t.sent_us - t.due_us > kBehindScheduleUs) {
    absl::MutexLock lock(&mu_);
    ++r_.behind_schedule;
  }
  sent_++;
}

ResponseHead ReadResponseHead(grpc::ByteBuffer* response) {
  using google::protobuf::internal::WireFormatLite;
  constexpr uint32_t kIdTag = WireFormatLite::MakeTag(v1::AttentionResponse::kIdFieldNumber,
                                                      WireFormatLite::WIRETYPE_LENGTH_DELIMITED);
  constexpr uint32_t kErrorTag = WireFormatLite::MakeTag(v1::AttentionResponse::kErrorFieldNumber,
                                                         WireFormatLite::WIRETYPE_LENGTH_DELIMITED);
  ResponseHead head;
  grpc::ProtoBufferReader bytes(response);
  if (!bytes.status().ok()) return head;
  google::protobuf::io::CodedInputStream in(&bytes);
  v1::Error error;
  bool has_error = false;
  while (const uint32_t tag = in.ReadTag()) {
    if (tag == kIdTag) {
      if (!WireFormatLite::ReadString(&in, &head.id)) return head;
    } else if (tag == kErrorTag) {
      uint32_t length;
      if (!in.ReadVarint32(&length) || length > INT32_MAX) return head;
      const auto limit = in.PushLimit(static_cast<int>(length));
      if (!error.MergeFromCodedStream(&in) || !in.ConsumedEntireMessage()) return head;
      in.PopLimit(limit);
      has_error = true;
    } else if (!WireFormatLite::SkipField(&in, tag)) {  // skips a tensor without copying it
      return head;
    }
  }
  head.parsed = in.ConsumedEntireMessage();
  if (has_error) {
    head.status = grpc::Status(static_cast<grpc::StatusCode>(error.code()), error.message());
  }
  return head;
}

bool Recorder::ShouldCheck() {
  if (w_.references.empty()) return false;
  const int64_t n = verify_counter_++;
  return std::floor((n + 1) * verify_) > std::floor(n * verify_);
}

void Recorder::Done(const grpc::Status& s, const v1::AttentionResponse* response, size_t index,
                    const RequestTimes& t) {
  grpc::Status status = s;
  if (s.ok() && response != nullptr && response->has_error()) {
    status = grpc::Status(static_cast<grpc::StatusCode>(response->error().code()),
                          response->error().message());
  }
  const bool has_body = status.ok() && response != nullptr && !response->has_error();
  const bool checked = has_body && ShouldCheck();
  std::optional<std::string> mismatch;
  if (checked) mismatch = Check(*response, w_.references[index]);
  Settle(status, has_body ? static_cast<double>(response->ByteSizeLong()) : 0, checked, mismatch,
         t);
}

v1::AttentionResponse FromModelInfer(const inference::ModelInferResponse& r) {
  v1::AttentionResponse a;
  a.set_id(r.id());
  for (int i = 0; i < r.outputs_size() && i < r.raw_output_contents_size(); ++i) {
    const auto& out = r.outputs(i);
    v1::Tensor* t = out.name() == "weights" ? a.mutable_weights() : a.mutable_output();
    t->set_dtype(out.datatype() == "FP16"   ? v1::FLOAT16
                 : out.datatype() == "BF16" ? v1::BFLOAT16
                                            : v1::FLOAT32);
    t->mutable_shape()->CopyFrom(out.shape());
    t->set_data(r.raw_output_contents(i));
  }
  return a;
}

void Recorder::DoneSerialized(const grpc::Status& s, grpc::ByteBuffer* response, size_t index,
                              const RequestTimes& t) {
  if (!s.ok() || response == nullptr) return Settle(s, 0, false, std::nullopt, t);
  const double bytes = static_cast<double>(response->Length());
  if (w_.rpc == RpcKind::kModelInfer) {  // errors come as the call's status: nothing in band
    const bool checked = ShouldCheck();
    std::optional<std::string> mismatch;
    if (checked) {
      inference::ModelInferResponse parsed;
      if (grpc::Status read = grpc::SerializationTraits<inference::ModelInferResponse>::Deserialize(
              response, &parsed);
          !read.ok()) {
        mismatch = "the response does not parse: " + read.error_message();
      } else {
        mismatch = Check(FromModelInfer(parsed), w_.references[index]);
      }
    }
    return Settle(s, bytes, checked, mismatch, t);
  }
  const ResponseHead head = ReadResponseHead(response);
  const grpc::Status status =
      head.parsed ? head.status
                  : grpc::Status(grpc::StatusCode::INTERNAL,
                                 "the response does not parse as an AttentionResponse");
  const bool checked = status.ok() && ShouldCheck();
  std::optional<std::string> mismatch;
  if (checked) {
    v1::AttentionResponse parsed;
    if (grpc::Status read =
            grpc::SerializationTraits<v1::AttentionResponse>::Deserialize(response, &parsed);
        !read.ok()) {
      mismatch = "the response does not parse: " + read.error_message();
    } else {
      mismatch = Check(parsed, w_.references[index]);
    }
  }
  Settle(status, status.ok() ? bytes : 0, checked, mismatch, t);
}

void Recorder::Settle(const grpc::Status& status, double response_bytes, bool checked,
                      const std::optional<std::string>& mismatch, const RequestTimes& t) {
  absl::MutexLock lock(&mu_);
  r_.latency.Record(t.done_us - t.sent_us);
  if (t.due_us >= 0) r_.corrected.Record(t.done_us - t.due_us);
  if (status.ok()) {
    ++r_.ok;
    r_.response_bytes += response_bytes;
  } else {
    const std::string code = StatusCodeName(status.error_code());
    if (r_.errors[code]++ == 0) r_.first_error[code] = status.error_message();
  }
  if (checked) {
    ++r_.checked;
    if (mismatch) {
      if (r_.mismatches++ == 0) r_.first_mismatch = *mismatch;
    }
  }
}

void Recorder::Retried(int64_t count) {
  if (count == 0) return;
  absl::MutexLock lock(&mu_);
  r_.retries += count;
}

void Recorder::Lost(const std::string& why, int64_t count) {
  absl::MutexLock lock(&mu_);
  r_.lost += count;
  if (r_.first_lost.empty()) r_.first_lost = why;
  const std::string code = "LOST";
  r_.errors[code] += count;
  if (r_.first_error[code].empty()) r_.first_error[code] = why;
}

void Recorder::Unexpected(const std::string& why) {
  absl::MutexLock lock(&mu_);
  if (r_.unexpected++ == 0 && r_.first_lost.empty()) r_.first_lost = why;
}

LoadResult Recorder::Snapshot() {
  absl::MutexLock lock(&mu_);
  LoadResult r = r_;
  r.sent = sent_.load();
  return r;
}

std::optional<std::string> Recorder::Check(const v1::AttentionResponse& r,
                                           const ReferenceResult& want) {
  absl::StatusOr<FloatTensor> out = ToFloat(r.output(), "output");
  if (!out.ok()) return std::string(out.status().message());
  if (out->shape != want.output_shape) {
    return absl::StrCat("output shape ", ShapeString(out->shape),
                        " != ", ShapeString(want.output_shape));
  }
  const double e = RelativeMaxError(out->data.data(), want.output);
  if (e > w_.tolerance) {
    return absl::StrCat("output differs from the reference: relative max error ", e,
                        " > tolerance ", w_.tolerance);
  }
  if (!want.weights.empty()) {
    absl::StatusOr<FloatTensor> wt = ToFloat(r.weights(), "weights");
    if (!wt.ok() || wt->shape != want.weights_shape) return std::string("weights shape differs");
    const double ew = RelativeMaxError(wt->data.data(), want.weights);
    if (ew > w_.tolerance) {
      return absl::StrCat("weights differ from the reference: relative max error ", ew);
    }
  }
  return std::nullopt;
}

}  // namespace client
}  // namespace attention
