#include "client/load_recorder.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace attention {
namespace client {

void Recorder::Sent(const RequestTimes& t) {
  if (t.due_us >= 0 && t.sent_us - t.due_us > kBehindScheduleUs) {
    std::lock_guard<std::mutex> lock(mu_);
    ++r_.behind_schedule;
  }
  sent_++;
}

void Recorder::Done(const grpc::Status& s, const v1::AttentionResponse* response, size_t index,
                    const RequestTimes& t) {
  std::optional<std::string> mismatch;
  bool checked = false;
  if (s.ok() && response != nullptr && !w_.references.empty() && !(response->has_error())) {
    // Checks spread evenly: the n-th response is checked when it crosses a
    // multiple of 1 / verify_.
    const int64_t n = verify_counter_++;
    if (std::floor((n + 1) * verify_) > std::floor(n * verify_)) {
      checked = true;
      mismatch = Check(*response, w_.references[index]);
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  r_.latency.Record(t.done_us - t.sent_us);
  if (t.due_us >= 0) r_.corrected.Record(t.done_us - t.due_us);
  const grpc::Status* status = &s;
  grpc::Status stream_error;
  if (s.ok() && response != nullptr && response->has_error()) {
    stream_error = grpc::Status(static_cast<grpc::StatusCode>(response->error().code()),
                                response->error().message());
    status = &stream_error;
  }
  if (status->ok()) {
    ++r_.ok;
    if (response != nullptr) r_.response_bytes += static_cast<double>(response->ByteSizeLong());
  } else {
    const std::string code = StatusCodeName(status->error_code());
    if (r_.errors[code]++ == 0) r_.first_error[code] = status->error_message();
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
  std::lock_guard<std::mutex> lock(mu_);
  r_.retries += count;
}

void Recorder::Lost(const std::string& why, int64_t count) {
  std::lock_guard<std::mutex> lock(mu_);
  r_.lost += count;
  if (r_.first_lost.empty()) r_.first_lost = why;
  const std::string code = "LOST";
  r_.errors[code] += count;
  if (r_.first_error[code].empty()) r_.first_error[code] = why;
}

void Recorder::Unexpected(const std::string& why) {
  std::lock_guard<std::mutex> lock(mu_);
  if (r_.unexpected++ == 0 && r_.first_lost.empty()) r_.first_lost = why;
}

LoadResult Recorder::Snapshot() {
  std::lock_guard<std::mutex> lock(mu_);
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
