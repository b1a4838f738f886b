// Framing of attention.v1.AttentionResponse messages around result tensors
// that are never copied: the core writes its results into buffers that
// become the message's bytes fields as they are, and gRPC sends them from
// there (protobuf serialization would copy every tensor once more).
//
// Usage:
//
//   ResponseOutputs outputs(DType::kFloat16);        // the output's wire dtype
//   absl::Status s = ComputeAttention(args, options, &outputs);
//   if (s.ok()) *response = outputs.Encode(id, precision);  // grpc::ByteBuffer
//   else *response = EncodeError(id, s);           // stream messages
//
// Contracts:
// - Output and Weights allocate 64-byte aligned, uninitialized buffers (the
//   core writes every element); they throw std::bad_alloc when memory runs out.
// - float16/bfloat16 output is computed in float32 into one staging buffer and
//   converted into the wire buffer once, by Encode.
// - One ResponseOutputs serves one call from one thread at a time; the
//   buffers live until gRPC drops its last reference to the encoded bytes.
#ifndef SERVER_RESPONSE_H_
#define SERVER_RESPONSE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/attention.h"
#include "core/tensor.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/slice.h"

namespace attention {
namespace server {

// A result tensor whose bytes gRPC sends as they are, owned by a slice.
struct SliceTensor {
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  grpc::Slice bytes;
  char* data = nullptr;
  bool present = false;

  // `size` bytes for a tensor of `shape`; never null (empty tensors get a
  // static buffer nobody writes).
  char* Allocate(DType d, const std::vector<int64_t>& s, size_t size);
  // Appends this tensor as message field `field` (a v1::Tensor): its dtype
  // and shape to `head`, then its bytes as a slice of their own.
  void Encode(int field, std::string* head, std::vector<grpc::Slice>* slices) const;
};

// How an Open Inference Protocol answer is framed: an
// inference.ModelInferResponse naming the model and echoing the id, with the
// outputs asked for (`output`, `weights`) as raw_output_contents.
struct InferFraming {
  std::string model_name, model_version, id;
  bool output = true, weights = false;
};

// The core's OutputBuffers for one response.
class ResponseOutputs final : public OutputBuffers {
 public:
  explicit ResponseOutputs(DType output_dtype) : dtype_(output_dtype) {}

  float* Output(const std::vector<int64_t>& shape) override;
  float* Weights(const std::vector<int64_t>& shape) override;

  // Converts a staged half-precision output, then frames an AttentionResponse
  // in field order (id, output, weights, precision: the one the call computed
  // in). Throws std::bad_alloc when memory runs out.
  // `sequence_length` (StreamDecode: the keys its sequence holds after the
  // message) is framed when not negative.
  grpc::ByteBuffer Encode(const std::string& id, Precision precision = Precision::kFloat32,
                          int64_t sequence_length = -1);
  // The same results as an inference.ModelInferResponse (the output in its
  // wire dtype, the weights FP32), the tensors as raw_output_contents slices.
  grpc::ByteBuffer EncodeInfer(const InferFraming& framing);

 private:
  DType dtype_;
  SliceTensor output_;
  SliceTensor weights_;
  std::vector<float> staging_;
};

// An AttentionResponse carrying only `id` and `status` as its error (stream
// messages that failed); the code and message as ToGrpcStatus gives them.
grpc::ByteBuffer EncodeError(const std::string& id, const absl::Status& status);

// An inference.ModelStreamInferResponse: `response` (a ModelInferResponse's
// bytes) wrapped as its infer_response, not copied.
grpc::ByteBuffer WrapStreamInfer(const grpc::ByteBuffer& response);
// An inference.ModelStreamInferResponse for a refused request: error_message
// "CODE: message", and infer_response with the id and model (to match it).
grpc::ByteBuffer EncodeStreamInferError(const std::string& id, const std::string& model,
                                        const absl::Status& status);

}  // namespace server
}  // namespace attention

#endif  // SERVER_RESPONSE_H_
