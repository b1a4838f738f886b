#include "server/prepared_call.h"

#include <cstring>

#include "core/test_util.h"
#include "gmock/gmock.h"
#include "grpcpp/support/proto_buffer_reader.h"
#include "gtest/gtest.h"
#include "server/response.h"

namespace attention {
namespace server {
namespace {

using ::testing::HasSubstr;

v1::Tensor FloatTensorProto(const std::vector<int64_t>& shape, float fill) {
  v1::Tensor t;
  int64_t n = 1;
  for (int64_t d : shape) {
    t.add_shape(d);
    n *= d;
  }
  std::vector<float> data(n, fill);
  t.set_data(data.data(), data.size() * 4);
  return t;
}

// What a client's protobuf parser makes of an encoded response.
v1::AttentionResponse Decode(const grpc::ByteBuffer& bytes) {
  grpc::ByteBuffer copy(bytes);
  grpc::ProtoBufferReader reader(&copy);
  v1::AttentionResponse r;
  EXPECT_TRUE(r.ParseFromZeroCopyStream(&reader));
  return r;
}

std::unique_ptr<ModelRegistry> Demo() {
  auto r =
      ModelRegistry::Load({"demo=" + attention::testing::SourcePath("models/demo.safetensors")});
  EXPECT_TRUE(r.ok()) << r.status();
  return std::move(*r);
}

TEST(PreparedCall, StatusesKeepCodeAndMessage) {
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  grpc::Status s = ToGrpcStatus(absl::NotFoundError("options.model: no model 'x'"));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(s.error_message(), "options.model: no model 'x'");
  EXPECT_EQ(ToGrpcStatus(absl::UnknownError("?")).error_code(), grpc::StatusCode::INTERNAL);
}

TEST(PreparedCall, RequestErrorsNameTheField) {
  std::unique_ptr<ModelRegistry> models = Demo();
  v1::SelfAttentionRequest r;
  PreparedCall call;
  EXPECT_THAT(std::string(PrepareCall(r, *models, &call).message()), HasSubstr("input: missing"));
  *r.mutable_input() = FloatTensorProto({1, 3, 64}, 0.5f);
  r.mutable_input()->set_dtype(static_cast<v1::DataType>(9));
  EXPECT_THAT(std::string(PrepareCall(r, *models, &call).message()),
              HasSubstr("input: unknown dtype 9"));
  r.mutable_input()->set_dtype(v1::FLOAT32);
  r.mutable_options()->set_model("nope");
  PreparedCall c2;
  absl::Status s = PrepareCall(r, *models, &c2);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(s.message()), HasSubstr("no model 'nope' on this server (it has: demo)"));
  r.mutable_options()->set_model("demo");
  r.mutable_options()->set_num_heads(8);
  PreparedCall c3;
  EXPECT_THAT(std::string(PrepareCall(r, *models, &c3).message()),
              HasSubstr("options.num_heads: 8 does not match model 'demo' (4 heads)"));
  r.mutable_options()->set_num_heads(0);
  *r.mutable_options()->mutable_projection()->mutable_out_proj_weight() =
      FloatTensorProto({64, 64}, 0);
  PreparedCall c4;
  EXPECT_THAT(std::string(PrepareCall(r, *models, &c4).message()), HasSubstr("not both"));
  v1::AttentionRequest a;
  *a.mutable_query() = FloatTensorProto({1, 3, 8}, 1);
  PreparedCall c5;
  EXPECT_THAT(std::string(PrepareCall(a, *models, &c5).message()), HasSubstr("key: missing"));
}

TEST(PreparedCall, HalfOutputComesBackAsHalfAndWeightsAsFloat) {
  std::unique_ptr<ModelRegistry> models = Demo();
  v1::SelfAttentionRequest r;
  v1::Tensor* in = r.mutable_input();
  in->set_dtype(v1::FLOAT16);
  in->add_shape(2);
  in->add_shape(8);
  std::string bytes;
  for (int i = 0; i < 16; ++i) {
    const uint16_t h = FloatToHalf(0.1f * i);
    bytes.append(reinterpret_cast<const char*>(&h), 2);
  }
  in->set_data(bytes);
  r.mutable_options()->set_num_heads(2);
  r.mutable_options()->set_weights(v1::WEIGHTS_PER_HEAD);
  PreparedCall call;
  ASSERT_TRUE(PrepareCall(r, *models, &call).ok());
  grpc::ByteBuffer encoded;
  ASSERT_TRUE(ComputeResponse(call, {}, "", &encoded).ok());
  VectorOutputs expected;  // the same call in float32
  ASSERT_TRUE(ComputeAttention(call.args, {}, &expected).ok());

  const v1::AttentionResponse response = Decode(encoded);
  EXPECT_EQ(response.output().dtype(), v1::FLOAT16);
  EXPECT_THAT(response.output().shape(), ::testing::ElementsAre(2, 8));
  ASSERT_EQ(response.output().data().size(), 16u * 2);
  std::vector<uint16_t> half(16);
  std::memcpy(half.data(), response.output().data().data(), 32);
  for (int i = 0; i < 16; ++i) {  // the float32 result rounded once to half
    EXPECT_EQ(half[i], FloatToHalf(expected.output.data[i])) << "element " << i;
  }
  EXPECT_EQ(response.weights().dtype(), v1::FLOAT32);
  EXPECT_THAT(response.weights().shape(), ::testing::ElementsAre(2, 2, 2));
  ASSERT_EQ(response.weights().data().size(), expected.weights.data.size() * 4);
  EXPECT_EQ(std::memcmp(response.weights().data().data(), expected.weights.data.data(),
                        response.weights().data().size()),
            0);
}

// The response is framed around the core's buffers instead of serialized: a
// protobuf parser must read back exactly what the core computed.
TEST(PreparedCall, EncodedResponseParsesToTheComputedTensors) {
  std::unique_ptr<ModelRegistry> models = Demo();
  v1::SelfAttentionRequest r;
  r.set_id("request-7");
  *r.mutable_input() = FloatTensorProto({3, 200, 64}, 0);  // 150 KiB out: > one varint byte
  float* x = reinterpret_cast<float*>(r.mutable_input()->mutable_data()->data());
  for (int i = 0; i < 3 * 200 * 64; ++i) x[i] = 0.01f * static_cast<float>(i % 97) - 0.4f;
  r.mutable_options()->set_model("demo");
  for (v1::WeightsMode mode : {v1::WEIGHTS_NONE, v1::WEIGHTS_AVERAGED}) {
    r.mutable_options()->set_weights(mode);
    PreparedCall call;
    ASSERT_TRUE(PrepareCall(r, *models, &call).ok());
    grpc::ByteBuffer bytes;
    ASSERT_TRUE(ComputeResponse(call, {}, r.id(), &bytes).ok());
    VectorOutputs expected;
    ASSERT_TRUE(ComputeAttention(call.args, {}, &expected).ok());

    const v1::AttentionResponse response = Decode(bytes);
    EXPECT_EQ(response.id(), "request-7");
    EXPECT_FALSE(response.has_error());
    EXPECT_EQ(response.output().dtype(), v1::FLOAT32);
    EXPECT_THAT(response.output().shape(), ::testing::ElementsAre(3, 200, 64));
    ASSERT_EQ(response.output().data().size(), expected.output.data.size() * 4);
    EXPECT_EQ(std::memcmp(response.output().data().data(), expected.output.data.data(),
                          response.output().data().size()),
              0);
    EXPECT_EQ(response.has_weights(), mode == v1::WEIGHTS_AVERAGED);
    if (mode == v1::WEIGHTS_AVERAGED) {
      EXPECT_THAT(response.weights().shape(), ::testing::ElementsAre(3, 200, 200));
      ASSERT_EQ(response.weights().data().size(), expected.weights.data.size() * 4);
      EXPECT_EQ(std::memcmp(response.weights().data().data(), expected.weights.data.data(),
                            response.weights().data().size()),
                0);
    }
    // Byte for byte what protobuf itself would have written.
    EXPECT_EQ(bytes.Length(), response.ByteSizeLong());
  }
}

TEST(PreparedCall, MalformedRequestBytesAreInvalidArgument) {
  const std::string junk = "\x0a\xff\xff\xff\xff\x0f";  // a field longer than the message
  grpc::Slice slice(junk);
  grpc::ByteBuffer bytes(&slice, 1);
  v1::AttentionRequest r;
  absl::Status s = ParseRequest(bytes, &r);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("request: not a valid attention.v1.AttentionRequest message"));
}

// A message that fails to parse after its id (here: an id that is not UTF-8)
// leaves nothing behind: a stream's answer to it echoed that id, and a
// client cannot parse a response whose id is not UTF-8.
TEST(PreparedCall, ARequestThatDoesNotParseLeavesNoId) {
  v1::SelfAttentionRequest valid;
  valid.set_id("abc");
  std::string bytes = valid.SerializeAsString();
  bytes[bytes.size() - 1] = '\xc2';  // the id's last byte: a lead byte without its follower
  bytes += "junk";
  grpc::Slice slice(bytes);
  grpc::ByteBuffer buffer(&slice, 1);
  v1::SelfAttentionRequest r;
  EXPECT_EQ(ParseRequest(buffer, &r).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r.id(), "");
  EXPECT_EQ(r.ByteSizeLong(), 0u);
  EXPECT_EQ(Decode(EncodeError(r.id(), absl::InvalidArgumentError("request: not valid"))).id(), "");
}

TEST(PreparedCall, ErrorResponsesCarryIdAndStatus) {
  const v1::AttentionResponse r =
      Decode(EncodeError("s-3", absl::InvalidArgumentError("input: missing")));
  EXPECT_EQ(r.id(), "s-3");
  EXPECT_EQ(r.error().code(), static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
  EXPECT_EQ(r.error().message(), "input: missing");
  EXPECT_FALSE(r.has_output());
}

TEST(PreparedCall, ModelSpecsAreChecked) {
  EXPECT_THAT(std::string(ModelRegistry::Load({"demo"}).status().message()),
              HasSubstr("expected NAME=PATH"));
  EXPECT_EQ(ModelRegistry::Load({"x=/nonexistent.safetensors"}).status().code(),
            absl::StatusCode::kNotFound);
}

// Wire bytes of a length-delimited field: tag, length, payload.
std::string Field(int number, const std::string& payload) {
  std::string out(1, static_cast<char>(number << 3 | 2));
  for (uint64_t n = payload.size();; n >>= 7) {
    out += static_cast<char>((n & 0x7f) | (n >= 0x80 ? 0x80 : 0));
    if (n < 0x80) break;
  }
  return out + payload;
}

grpc::ByteBuffer Bytes(const std::string& s) {
  grpc::Slice slice(s);
  return grpc::ByteBuffer(&slice, 1);
}

// A shape of millions of one-byte entries parses to eight bytes each: it is
// refused from the wire bytes, before the parse, naming the tensor.
TEST(PreparedCall, HugeShapeListsAreRefusedBeforeParsing) {
  v1::SelfAttentionRequest request;
  constexpr int64_t kEntries = 40 << 20;  // 40 MiB of varints: 320 MiB once parsed
  const std::string wire =
      Field(2, Field(2, std::string(kEntries, '\x01')));  // input { shape: [1, 1, ...] }
  const int64_t before = attention::testing::ProcStatusBytes(0, "VmHWM");
  const absl::Status s = ParseRequest(Bytes(wire), &request);
  const int64_t grown = attention::testing::ProcStatusBytes(0, "VmHWM") - before;
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "input.shape: more than 8 dimensions (rank at most 4)");
  if (!attention::testing::kAddressSanitizer) {
    EXPECT_LT(grown, int64_t{8} << 20) << "the parse ran";
  }

  // Nested tensors are named by their path; a field sent twice is merged,
  // so its shapes add up; unpacked shapes count as packed ones.
  v1::AttentionRequest cross;
  cross.mutable_options()->mutable_attn_mask()->add_shape(1);
  std::string twice;
  cross.SerializeToString(&twice);
  v1::AttentionOptions mask;
  for (int i = 0; i < 8; ++i) mask.mutable_attn_mask()->add_shape(2);
  twice += Field(5, mask.SerializeAsString());
  EXPECT_EQ(ParseRequest(Bytes(twice), &cross).message(),
            "options.attn_mask.shape: more than 8 dimensions (rank at most 4)");
  std::string unpacked;
  for (int i = 0; i < 9; ++i) unpacked += std::string("\x10\x03", 2);  // shape: 3, unpacked
  EXPECT_THAT(std::string(ParseRequest(Bytes(Field(2, unpacked)), &request).message()),
              HasSubstr("input.shape: more than 8"));

  // Eight dimensions still parse (the rank check names them later).
  for (int i = 0; i < 8; ++i) request.mutable_input()->add_shape(1);
  EXPECT_TRUE(ParseRequest(Bytes(request.SerializeAsString()), &request).ok());
}

// A request refused before it is parsed (its memory did not fit) is still
// answered with its id, read from the bytes: a stream's client matches
// answers to requests by id.
TEST(PreparedCall, TheIdIsReadWithoutParsing) {
  v1::SelfAttentionRequest request;
  request.set_id("stream-7.3");
  request.mutable_input()->add_shape(2);
  request.mutable_input()->set_data(std::string(4096, 'x'));
  EXPECT_EQ(PeekRequestId(Bytes(request.SerializeAsString())), "stream-7.3");
  v1::AttentionRequest cross;
  cross.mutable_query()->add_shape(1);
  cross.set_id("cross");
  EXPECT_EQ(PeekRequestId(Bytes(cross.SerializeAsString())), "cross");
  // What a parse would refuse, or what may not be echoed, gives no id.
  EXPECT_EQ(PeekRequestId(Bytes(Field(1, "\xff\xfe"))), "");
  EXPECT_EQ(PeekRequestId(Bytes(Field(1, std::string(1025, 'a')))), "");
  EXPECT_EQ(PeekRequestId(Bytes(Field(1, "ok") + "\x0f")), "");  // a bad wire type
  EXPECT_EQ(PeekRequestId(Bytes("")), "");
}

}  // namespace
}  // namespace server

}  // namespace attention
