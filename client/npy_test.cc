#include "client/npy.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace attention {
namespace client {
namespace {

using ::testing::HasSubstr;

TEST(Npy, RoundTripsEveryDType) {
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBool}) {
    NpyArray a{dtype, {2, 3}, std::string(6 * DTypeSize(dtype), '\x01')};
    absl::StatusOr<std::string> bytes = SerializeNpy(a);
    ASSERT_TRUE(bytes.ok());
    EXPECT_EQ(bytes->size() % 64, 6 * DTypeSize(dtype) % 64);  // header aligned to 64
    absl::StatusOr<NpyArray> b = ParseNpy(*bytes, "x.npy");
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ(b->dtype, dtype);
    EXPECT_EQ(b->shape, a.shape);
    EXPECT_EQ(b->data, a.data);
  }
  NpyArray v{DType::kFloat32, {5}, std::string(20, '\0')};
  absl::StatusOr<NpyArray> back = ParseNpy(*SerializeNpy(v), "v.npy");
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->shape, std::vector<int64_t>{5});
}

std::string Npy(const std::string& header, size_t data_bytes) {
  const std::string& h = header;
  std::string out = "\x93NUMPY";
  out += '\x01';
  out += '\x00';
  out += static_cast<char>(h.size() & 0xff);
  out += static_cast<char>(h.size() >> 8);
  return out + h + std::string(data_bytes, '\0');
}

TEST(Npy, ClearErrorsForWhatIsNotSupported) {
  EXPECT_THAT(std::string(ParseNpy("hello world", "a.npy").status().message()),
              HasSubstr("a.npy: not a .npy file"));
  EXPECT_THAT(
      std::string(
          ParseNpy(Npy("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", 16), "d.npy")
              .status()
              .message()),
      HasSubstr("dtype '<f8' is not supported"));
  EXPECT_THAT(
      std::string(
          ParseNpy(Npy("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", 16), "f.npy")
              .status()
              .message()),
      HasSubstr("Fortran-order"));
  EXPECT_THAT(
      std::string(
          ParseNpy(Npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 16), "s.npy")
              .status()
              .message()),
      HasSubstr("data has 16 bytes but shape (2, 3) needs 24"));
  EXPECT_EQ(ReadNpy("/nonexistent.npy").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace client
}  // namespace attention
