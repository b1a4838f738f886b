#include "server/prepared_call.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/guard.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/wire_format_lite.h"
#include "grpcpp/support/proto_buffer_reader.h"
#include "proto/convert.h"
#include "proto/infer_convert.h"
#include "server/response.h"

namespace attention {
namespace server {
namespace {

// Resolves options.model (NotFound when unknown) after convert::FromWire filled
// everything else.
absl::Status ResolveModel(const v1::AttentionOptions& o, const ModelRegistry& models,
                          PreparedCall* call) {
  AttentionArgs& args = call->args;
  if (o.model().empty()) return absl::OkStatus();
  if (o.has_projection()) {
    return absl::InvalidArgumentError("options: give a model or projection weights, not both");
  }
  std::shared_ptr<const Model> m = models.Find(o.model());
  if (m == nullptr) {
    return absl::NotFoundError(absl::StrCat("options.model: no model '", o.model(),
                                            "' on this server (it has: ", models.Names(), ")"));
  }
  if (args.num_heads == 0) {
    args.num_heads = m->info().num_heads;
  } else if (args.num_heads != m->info().num_heads) {
    return absl::InvalidArgumentError(
        absl::StrCat("options.num_heads: ", args.num_heads, " does not match model '", o.model(),
                     "' (", m->info().num_heads, " heads); send 0 or ", m->info().num_heads));
  }
  args.projection = &m->weights();
  call->model = std::move(m);  // this version, for as long as the call lives
  return absl::OkStatus();
}

// Bounds on the strings of a request: `id` is echoed in the response,
// the model's name in errors and logs.
constexpr size_t kMaxIdBytes = 1024;
constexpr size_t kMaxModelNameBytes = 256;

template <typename Request>
absl::Status Prepare(const Request& r, const ModelRegistry& models, PreparedCall* call) {
  if (r.id().size() > kMaxIdBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("id: ", r.id().size(), " bytes; at most ", kMaxIdBytes));
  }
  if (r.options().model().size() > kMaxModelNameBytes) {
    return absl::InvalidArgumentError(absl::StrCat("options.model: a name of ",
                                                   r.options().model().size(), " bytes; at most ",
                                                   kMaxModelNameBytes));
  }
  if (absl::Status s = convert::FromWire(r, &call->args, &call->projection); !s.ok()) return s;
  call->output_dtype = call->args.query.dtype;
  return ResolveModel(r.options(), models, call);
}

std::string MiB(double bytes) { return absl::StrCat(std::ceil(bytes / (1 << 20))); }

// The memory a prepared call's computation and response take (see PlanCall).
absl::StatusOr<int64_t> PlanPrepared(const PreparedCall& call, const ComputeOptions& options,
                                     size_t id_bytes, int64_t max_message_bytes) {
  absl::StatusOr<AttentionPlanInfo> plan = PlanAttention(call.args, options);
  if (!plan.ok()) return plan.status();
  const double output = ShapeProduct<double>(plan->output_shape);
  const double weights =
      plan->weights_shape.empty() ? 0 : ShapeProduct<double>(plan->weights_shape);
  // The tensors and the framing around them (id, dtypes, shapes).
  const double message =
      output * DTypeSize(call.output_dtype) + 4 * weights + static_cast<double>(id_bytes) + 256;
  if (message > static_cast<double>(max_message_bytes)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "response would be ", MiB(message), " MiB (output ", ShapeString(plan->output_shape),
        weights > 0 ? absl::StrCat(", weights ", ShapeString(plan->weights_shape)) : "",
        "), over --max-message-mb ", MiB(static_cast<double>(max_message_bytes)),
        "; ask for fewer weights or send smaller requests"));
  }
  // The plan counts a float32 output; a half-precision one is staged in
  // float32 and converted into a buffer of its own.
  const double wire_output = call.output_dtype == DType::kFloat32 ? 0 : output * 2;
  return plan->memory_bytes + static_cast<int64_t>(wire_output);
}

template <typename Request>
absl::StatusOr<int64_t> Plan(const Request& r, const ModelRegistry& models,
                             const ComputeOptions& options, int64_t max_message_bytes) {
  PreparedCall call;
  if (absl::Status s = Prepare(r, models, &call); !s.ok()) return s;
  return PlanPrepared(call, options, r.id().size(), max_message_bytes);
}

// The core's and attention.v1's field names in an error about an Open
// Inference Protocol request, as the protocol names them: self-attention's
// `input` is the request's `query`, the options are inputs or parameters.
absl::Status InProtocolTerms(const absl::Status& s) {
  if (s.ok()) return s;
  static constexpr std::pair<absl::string_view, absl::string_view> kNames[] = {
      {"input", "query"},
      {"options.attn_mask", "attn_mask"},
      {"options.key_padding_mask", "key_padding_mask"},
      {"options.num_heads", "parameter num_heads"},
      {"options.num_kv_heads", "parameter num_kv_heads"},
      {"options.scale", "parameter scale"},
      {"options.weights", "parameter weights"},
      {"options.precision", "parameter precision"},
  };
  const absl::string_view m = s.message();
  for (const auto& [from, to] : kNames) {
    if (absl::StartsWith(m, from) && m.size() > from.size() &&
        (m[from.size()] == ':' || m[from.size()] == '.' || m[from.size()] == ' ')) {
      return absl::Status(s.code(), absl::StrCat(to, m.substr(from.size())));
    }
  }
  return s;
}

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::internal::WireFormatLite;
using google::protobuf::io::CodedInputStream;

// Dimensions of each tensor's shape seen so far, by field path ("input",
// "options.attn_mask"): a message field that appears twice is merged, so its
// shapes add up.
using ShapeCounts = std::vector<std::pair<std::string, int64_t>>;

absl::Status TooManyDims(const std::string& path) {
  return absl::InvalidArgumentError(absl::StrCat(path, ".shape: more than ", convert::kMaxWireRank,
                                                 " dimensions (rank at most 4)"));
}

// Adds `n` dimensions to the shape at `path`; InvalidArgument over the most
// a wire tensor may have.
absl::Status CountDims(const std::string& path, int64_t n, ShapeCounts* counts) {
  for (auto& [p, count] : *counts) {
    if (p != path) continue;
    count += n;
    return count > convert::kMaxWireRank ? TooManyDims(path) : absl::OkStatus();
  }
  counts->emplace_back(path, n);
  return n > convert::kMaxWireRank ? TooManyDims(path) : absl::OkStatus();
}

// A packed `shape` of `length` bytes: its varints counted (at most
// kMaxWireRank of them fit in 10 bytes each, so a longer one is refused
// unread).
absl::Status ScanPackedShape(CodedInputStream* in, uint32_t length, const std::string& path,
                             ShapeCounts* counts) {
  if (length > 10 * convert::kMaxWireRank) return TooManyDims(path);
  std::string bytes;
  if (!in->ReadString(&bytes, static_cast<int>(length))) return absl::OkStatus();  // truncated
  int64_t n = 0;
  for (char c : bytes) n += (static_cast<uint8_t>(c) & 0x80) == 0;
  return CountDims(path, n, counts);
}

// Entries of a repeated message field (inputs, outputs, parameters) a
// request may carry: more are refused before they are parsed.
constexpr int kMaxRepeatedMessages = 64;

// Walks the wire bytes of a message of type `type` without parsing them:
// every Tensor.shape on the way is counted (packed or not), so that a shape
// of millions of entries, which a parse would expand eightfold into memory,
// is refused first. Malformed bytes are left for the parser to refuse.
absl::Status ScanShapes(CodedInputStream* in, const Descriptor* type, const std::string& path,
                        ShapeCounts* counts) {
  const bool tensor = type == v1::Tensor::descriptor() ||
                      type == inference::ModelInferRequest::InferInputTensor::descriptor();
  // Each element of a repeated message field is a tensor of its own; a
  // singular field that appears twice is merged (its shapes add up).
  std::vector<std::pair<int, int>> repeats;  // field number, elements seen
  while (const uint32_t tag = in->ReadTag()) {
    const FieldDescriptor* field = type->FindFieldByNumber(static_cast<int>(tag >> 3));
    const bool shape = tensor && field != nullptr && field->name() == "shape";
    uint64_t varint = 0;
    uint32_t length = 0;
    switch (WireFormatLite::GetTagWireType(tag)) {
      case WireFormatLite::WIRETYPE_VARINT:
        if (!in->ReadVarint64(&varint)) return absl::OkStatus();
        if (shape) {
          if (absl::Status s = CountDims(path, 1, counts); !s.ok()) return s;
        }
        break;
      case WireFormatLite::WIRETYPE_FIXED64:
        if (!in->Skip(8)) return absl::OkStatus();
        break;
      case WireFormatLite::WIRETYPE_FIXED32:
        if (!in->Skip(4)) return absl::OkStatus();
        break;
      case WireFormatLite::WIRETYPE_LENGTH_DELIMITED: {
        if (!in->ReadVarint32(&length)) return absl::OkStatus();
        if (shape) {
          if (absl::Status s = ScanPackedShape(in, length, path, counts); !s.ok()) return s;
        } else if (field != nullptr && field->type() == FieldDescriptor::TYPE_MESSAGE) {
          const CodedInputStream::Limit limit = in->PushLimit(static_cast<int>(length));
          std::string inner = path.empty() ? field->name() : path + "." + field->name();
          if (field->is_repeated()) {
            auto seen = std::find_if(repeats.begin(), repeats.end(),
                                     [&](const auto& r) { return r.first == field->number(); });
            if (seen == repeats.end()) seen = repeats.insert(repeats.end(), {field->number(), 0});
            if (seen->second == kMaxRepeatedMessages) {
              return absl::InvalidArgumentError(absl::StrCat(
                  inner, ": more than ", kMaxRepeatedMessages, " entries (a model has 5 inputs)"));
            }
            absl::StrAppend(&inner, "[", seen->second++, "]");
          }
          if (absl::Status s = ScanShapes(in, field->message_type(), inner, counts); !s.ok()) {
            return s;
          }
          in->PopLimit(limit);
        } else if (!in->Skip(static_cast<int>(length))) {
          return absl::OkStatus();
        }
        break;
      }
      default:  // groups and invalid wire types: the parser refuses them
        return absl::OkStatus();
    }
  }
  return absl::OkStatus();
}

template <typename Request>
absl::Status Parse(const grpc::ByteBuffer& bytes, Request* request) {
  {
    grpc::ByteBuffer shared(bytes);  // the same slices, not a copy
    grpc::ProtoBufferReader reader(&shared);
    CodedInputStream in(&reader);
    ShapeCounts counts;
    if (absl::Status s = ScanShapes(&in, Request::descriptor(), "", &counts); !s.ok()) {
      return s;
    }
  }
  grpc::ByteBuffer shared(bytes);
  grpc::ProtoBufferReader reader(&shared);
  if (!reader.status().ok() || !request->ParseFromZeroCopyStream(&reader)) {
    // Parsing stops at the first bad field: what came before it (an `id` of
    // any length, even invalid UTF-8) is not the caller's to echo.
    request->Clear();
    return absl::InvalidArgumentError(
        absl::StrCat("request: not a valid ", Request::descriptor()->full_name(), " message"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status PrepareCall(const v1::AttentionRequest& r, const ModelRegistry& models,
                         PreparedCall* call) {
  return Prepare(r, models, call);
}

absl::Status PrepareCall(const v1::SelfAttentionRequest& r, const ModelRegistry& models,
                         PreparedCall* call) {
  return Prepare(r, models, call);
}

absl::Status PrepareCall(const v1::DecodeRequest& r, const ModelRegistry& models,
                         PreparedCall* call) {
  if (r.options().has_projection()) {
    return absl::InvalidArgumentError(
        "options.projection: StreamDecode takes a model loaded on the server (--model), not "
        "weights sent in the message");
  }
  if (r.sequence().size() > kMaxIdBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("sequence: ", r.sequence().size(), " bytes; at most ", kMaxIdBytes));
  }
  if (r.position() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("position: must not be negative (got ", r.position(), ")"));
  }
  if (!r.has_input() && !r.has_query() && !r.has_key() && !r.has_value() && r.end()) {
    // Only ends the sequence: the options are still checked.
    if (r.id().size() > kMaxIdBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("id: ", r.id().size(), " bytes; at most ", kMaxIdBytes));
    }
    return absl::OkStatus();
  }
  return Prepare(r, models, call);
}

absl::Status PrepareCall(const inference::ModelInferRequest& r, const ModelRegistry& models,
                         PreparedCall* call) {
  if (r.id().size() > kMaxIdBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("id: ", r.id().size(), " bytes; at most ", kMaxIdBytes));
  }
  if (r.model_name().size() > kMaxModelNameBytes) {
    return absl::InvalidArgumentError(absl::StrCat("model_name: a name of ", r.model_name().size(),
                                                   " bytes; at most ", kMaxModelNameBytes));
  }
  ModelRegistry::Entry entry = models.FindEntry(r.model_name());
  std::shared_ptr<const Model> m = std::move(entry.model);
  const bool builtin = m == nullptr && r.model_name() == kBuiltinModel;
  const std::string version = builtin ? "1" : absl::StrCat(entry.version);
  if (m == nullptr && !builtin) {
    return absl::NotFoundError(absl::StrCat("model_name: no model '", r.model_name(),
                                            "' on this server (it has: ", models.Names(),
                                            ", and the built-in '", kBuiltinModel, "')"));
  }
  if (!r.model_version().empty() && r.model_version() != version) {
    return absl::NotFoundError(absl::StrCat("model_version: '", r.model_version().substr(0, 64),
                                            "' of model '", r.model_name(),
                                            "' is not served (its version now: ", version, ")"));
  }
  convert::InferCall infer;
  if (absl::Status s = convert::FromInfer(r, builtin, &infer); !s.ok()) return s;
  call->args = infer.args;
  call->output_dtype = call->args.query.dtype;
  if (m != nullptr) {
    call->args.num_heads = m->info().num_heads;
    call->args.projection = &m->weights();
    call->model = std::move(m);
  }
  call->infer =
      InferFraming{r.model_name(), version, r.id(), infer.send_output, infer.send_weights};
  return absl::OkStatus();
}

absl::StatusOr<int64_t> PlanCall(const inference::ModelInferRequest& request,
                                 const ModelRegistry& models, const ComputeOptions& options,
                                 int64_t max_message_bytes) {
  PreparedCall call;
  if (absl::Status s = PrepareCall(request, models, &call); !s.ok()) return s;
  absl::StatusOr<int64_t> planned = PlanPrepared(
      call, options, request.id().size() + request.model_name().size(), max_message_bytes);
  if (!planned.ok()) return InProtocolTerms(planned.status());
  return planned;
}

absl::StatusOr<int64_t> PlanCall(const v1::AttentionRequest& request, const ModelRegistry& models,
                                 const ComputeOptions& options, int64_t max_message_bytes) {
  return Plan(request, models, options, max_message_bytes);
}

absl::StatusOr<int64_t> PlanCall(const v1::SelfAttentionRequest& request,
                                 const ModelRegistry& models, const ComputeOptions& options,
                                 int64_t max_message_bytes) {
  return Plan(request, models, options, max_message_bytes);
}

absl::Status ParseRequest(const grpc::ByteBuffer& bytes, v1::AttentionRequest* request) {
  return Parse(bytes, request);
}

absl::Status ParseRequest(const grpc::ByteBuffer& bytes, v1::SelfAttentionRequest* request) {
  return Parse(bytes, request);
}

absl::Status ParseRequest(const grpc::ByteBuffer& bytes, v1::DecodeRequest* request) {
  return Parse(bytes, request);
}

absl::Status ParseRequest(const grpc::ByteBuffer& bytes, inference::ModelInferRequest* request) {
  return Parse(bytes, request);
}

std::string PeekRequestId(const grpc::ByteBuffer& bytes, int id_field) {
  grpc::ByteBuffer shared(bytes);  // the same slices, not a copy
  grpc::ProtoBufferReader reader(&shared);
  CodedInputStream in(&reader);
  std::string id;
  // The last occurrence of the id field wins, as in a parse.
  while (const uint32_t tag = in.ReadTag()) {
    const int wire_type = WireFormatLite::GetTagWireType(tag);
    uint32_t length = 0;
    uint64_t varint = 0;
    if (wire_type == WireFormatLite::WIRETYPE_LENGTH_DELIMITED) {
      if (!in.ReadVarint32(&length)) return "";
      if (tag >> 3 == static_cast<uint32_t>(id_field)) {
        if (length > kMaxIdBytes || !in.ReadString(&id, static_cast<int>(length))) return "";
      } else if (!in.Skip(static_cast<int>(length))) {
        return "";
      }
    } else if (wire_type == WireFormatLite::WIRETYPE_VARINT) {
      if (!in.ReadVarint64(&varint)) return "";
    } else if (wire_type == WireFormatLite::WIRETYPE_FIXED64) {
      if (!in.Skip(8)) return "";
    } else if (wire_type == WireFormatLite::WIRETYPE_FIXED32) {
      if (!in.Skip(4)) return "";
    } else {
      return "";
    }
  }
  return google::protobuf::internal::IsStructurallyValidUTF8(id.data(), static_cast<int>(id.size()))
             ? id
             : "";
}

absl::Status ComputeResponse(const PreparedCall& call, const ComputeOptions& options,
                             const std::string& id, grpc::ByteBuffer* response) {
  ResponseOutputs outputs(call.output_dtype);
  if (absl::Status s = ComputeAttention(call.args, options, &outputs); !s.ok()) {
    return call.infer ? InProtocolTerms(s) : s;
  }
  if (options.check) {  // before converting and framing the results
    if (absl::Status s = options.check(); !s.ok()) return s;
  }
  return Encode(&outputs, call, id, response);
}

absl::Status Encode(ResponseOutputs* outputs, const PreparedCall& call, const std::string& id,
                    grpc::ByteBuffer* response) {
  if (!call.infer) return Encode(outputs, id, EffectivePrecision(call.args.precision), response);
  return GuardStatus(
      [&] {
        *response = outputs->EncodeInfer(*call.infer);
        return absl::OkStatus();
      },
      "out of memory encoding the response");
}

grpc::ByteBuffer StreamAnswer(const v1::AttentionRequest& request, const absl::Status& status,
                              const grpc::ByteBuffer& response) {
  return status.ok() ? response : EncodeError(request.id(), status);
}

grpc::ByteBuffer StreamAnswer(const v1::SelfAttentionRequest& request, const absl::Status& status,
                              const grpc::ByteBuffer& response) {
  return status.ok() ? response : EncodeError(request.id(), status);
}

grpc::ByteBuffer StreamAnswer(const inference::ModelInferRequest& request,
                              const absl::Status& status, const grpc::ByteBuffer& response) {
  return status.ok() ? WrapStreamInfer(response)
                     : EncodeStreamInferError(request.id(), request.model_name(), status);
}

absl::Status Encode(ResponseOutputs* outputs, const std::string& id, Precision precision,
                    grpc::ByteBuffer* response) {
  return GuardStatus(
      [&] {
        *response = outputs->Encode(id, precision);
        return absl::OkStatus();
      },
      "out of memory encoding the response");
}

}  // namespace server
}  // namespace attention
