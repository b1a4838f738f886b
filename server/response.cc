#include "server/response.h"

#include <algorithm>
#include <cstdlib>
#include <new>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "attention/v1/attention.pb.h"
#include "inference/grpc_service.pb.h"
#include "proto/convert.h"
#include "proto/infer_convert.h"
#include "server/grpc_status.h"

namespace attention {
namespace server {
namespace {

// Protobuf's wire format, for framing responses around tensor bytes that are
// not copied into a message: varints and length-delimited fields.
void AppendVarint(uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

uint64_t VarintSize(uint64_t v) {
  uint64_t n = 1;
  for (; v >= 0x80; v >>= 7) ++n;
  return n;
}

void AppendFieldHeader(int field, uint64_t length, std::string* out) {
  AppendVarint((static_cast<uint64_t>(field) << 3) | 2, out);  // wire type 2: length-delimited
  AppendVarint(length, out);
}

int64_t Elements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // the core validated the shape
  return n;
}

}  // namespace

char* SliceTensor::Allocate(DType d, const std::vector<int64_t>& s, size_t size) {
  dtype = d;
  shape = s;
  present = true;
  alignas(64) static char empty[64];
  if (size == 0) return empty;  // nothing is written; not null (null means "no buffer")
  void* p = std::aligned_alloc(64, (size + 63) / 64 * 64);
  if (p == nullptr) throw std::bad_alloc();
  bytes = grpc::Slice(p, size, [](void* q) { std::free(q); });
  data = static_cast<char*>(p);
  return data;
}

void SliceTensor::Encode(int field, std::string* head, std::vector<grpc::Slice>* slices) const {
  v1::Tensor meta;
  meta.set_dtype(convert::ToWire(dtype));
  meta.mutable_shape()->Assign(shape.begin(), shape.end());
  const std::string m = meta.SerializeAsString();
  const uint64_t n = bytes.size();
  const uint64_t data_field =
      n == 0 ? 0 : VarintSize((v1::Tensor::kDataFieldNumber << 3) | 2) + VarintSize(n) + n;
  AppendFieldHeader(field, m.size() + data_field, head);
  head->append(m);
  if (n == 0) return;
  AppendFieldHeader(v1::Tensor::kDataFieldNumber, n, head);
  slices->emplace_back(*head);
  head->clear();
  slices->push_back(bytes);  // a reference to the core's buffer
}

float* ResponseOutputs::Output(const std::vector<int64_t>& shape) {
  const int64_t n = Elements(shape);
  char* bytes = output_.Allocate(dtype_, shape, n * DTypeSize(dtype_));
  if (dtype_ == DType::kFloat32) return reinterpret_cast<float*>(bytes);
  staging_.resize(std::max<int64_t>(n, 1));  // not null when empty
  return staging_.data();
}

float* ResponseOutputs::Weights(const std::vector<int64_t>& shape) {
  const int64_t n = Elements(shape);
  return reinterpret_cast<float*>(weights_.Allocate(DType::kFloat32, shape, n * sizeof(float)));
}

grpc::ByteBuffer ResponseOutputs::Encode(const std::string& id, Precision precision,
                                         int64_t sequence_length) {
  if (output_.bytes.size() > 0 && !staging_.empty()) {
    ConvertFromFloat32(staging_.data(), output_.bytes.size() / DTypeSize(dtype_), dtype_,
                       output_.data);
  }
  std::string head;
  std::vector<grpc::Slice> slices;
  if (!id.empty()) {
    AppendFieldHeader(v1::AttentionResponse::kIdFieldNumber, id.size(), &head);
    head.append(id);
  }
  if (output_.present) output_.Encode(v1::AttentionResponse::kOutputFieldNumber, &head, &slices);
  if (weights_.present) {
    weights_.Encode(v1::AttentionResponse::kWeightsFieldNumber, &head, &slices);
  }
  if (const v1::Precision p = convert::ToWire(precision); p != v1::PRECISION_FLOAT32) {
    AppendVarint(v1::AttentionResponse::kPrecisionFieldNumber << 3, &head);  // wire type 0
    AppendVarint(p, &head);
  }
  if (sequence_length > 0) {
    AppendVarint(v1::AttentionResponse::kSequenceLengthFieldNumber << 3, &head);
    AppendVarint(static_cast<uint64_t>(sequence_length), &head);
  }
  if (!head.empty() || slices.empty()) slices.emplace_back(head);
  return grpc::ByteBuffer(slices.data(), slices.size());
}

grpc::ByteBuffer ResponseOutputs::EncodeInfer(const InferFraming& framing) {
  using Response = inference::ModelInferResponse;
  if (output_.bytes.size() > 0 && !staging_.empty()) {
    ConvertFromFloat32(staging_.data(), output_.bytes.size() / DTypeSize(dtype_), dtype_,
                       output_.data);
  }
  // The head: the names and shapes (a small message serialized as usual);
  // then each output's bytes as a raw_output_contents field of its own slice.
  Response head;
  head.set_model_name(framing.model_name);
  head.set_model_version(framing.model_version);
  head.set_id(framing.id);
  std::vector<const SliceTensor*> sent;
  for (const auto& [name, wanted, tensor] :
       {std::tuple<const char*, bool, const SliceTensor*>{"output", framing.output, &output_},
        {"weights", framing.weights, &weights_}}) {
    if (!wanted || !tensor->present) continue;
    Response::InferOutputTensor* o = head.add_outputs();
    o->set_name(name);
    o->set_datatype(convert::ToDatatype(tensor->dtype));
    o->mutable_shape()->Assign(tensor->shape.begin(), tensor->shape.end());
    sent.push_back(tensor);
  }
  std::string bytes = head.SerializeAsString();
  std::vector<grpc::Slice> slices;
  for (const SliceTensor* t : sent) {
    AppendFieldHeader(Response::kRawOutputContentsFieldNumber, t->bytes.size(), &bytes);
    slices.emplace_back(bytes);
    bytes.clear();
    if (t->bytes.size() > 0) slices.push_back(t->bytes);
  }
  if (!bytes.empty() || slices.empty()) slices.emplace_back(bytes);
  return grpc::ByteBuffer(slices.data(), slices.size());
}

grpc::ByteBuffer WrapStreamInfer(const grpc::ByteBuffer& response) {
  std::vector<grpc::Slice> slices;
  std::string head;
  AppendFieldHeader(inference::ModelStreamInferResponse::kInferResponseFieldNumber,
                    response.Length(), &head);
  slices.emplace_back(head);
  std::vector<grpc::Slice> body;
  (void)response.Dump(&body);  // references to the same slices
  slices.insert(slices.end(), body.begin(), body.end());
  return grpc::ByteBuffer(slices.data(), slices.size());
}

grpc::ByteBuffer EncodeStreamInferError(const std::string& id, const std::string& model,
                                        const absl::Status& status) {
  inference::ModelStreamInferResponse r;
  const grpc::Status g = ToGrpcStatus(status);
  r.set_error_message(
      absl::StrCat(absl::StatusCodeToString(status.code()), ": ", g.error_message()));
  r.mutable_infer_response()->set_id(id);
  r.mutable_infer_response()->set_model_name(model);
  grpc::Slice bytes(r.SerializeAsString());
  return grpc::ByteBuffer(&bytes, 1);
}

grpc::ByteBuffer EncodeError(const std::string& id, const absl::Status& status) {
  v1::AttentionResponse r;
  r.set_id(id);
  const grpc::Status g = ToGrpcStatus(status);
  r.mutable_error()->set_code(g.error_code());
  r.mutable_error()->set_message(g.error_message());
  grpc::Slice bytes(r.SerializeAsString());
  return grpc::ByteBuffer(&bytes, 1);
}

}  // namespace server
}  // namespace attention
