// Internal: the oneDNN primitives the core runs (strided 2-D matmul with
// optional bias, scale and accumulation; row softmax), created once per shape
// and kept in a process-wide cache. Not part of the public API.
//
// Thread-safety: every function may be called from many threads at once,
// including from inside an OpenMP parallel region (where oneDNN runs a
// primitive on the calling thread only). Each thread executes on its own
// stream with its own scratchpad (scratchpad_mode::user), so one primitive can
// run on several threads at the same time.
//
// Errors: these functions throw dnnl::error; the caller (attention.cc) turns
// that into an absl::Status at the core's boundary.
#ifndef CORE_ONEDNN_OPS_H_
#define CORE_ONEDNN_OPS_H_

#include <cstdint>
#include <memory>
#include <vector>

namespace attention {
namespace internal {

// A strided matrix: element (r, c) at base[r * row_stride + c * col_stride].
struct Mat {
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t row_stride = 0;
  int64_t col_stride = 1;
};

// C[m, n] = scale * sum_k A[m, k] B[k, n] (+ bias[n]) (+ C[m, n] if accumulate).
// C must be row-major (col_stride 1).
struct GemmShape {
  Mat a;
  Mat b;
  Mat c;
  float scale = 1.0f;
  bool bias = false;
  bool accumulate = false;
};

void Gemm(const GemmShape& shape, const float* a, const float* b, float* c, const float* bias);

// B of products whose B stays the same from call to call (a model's
// weights), reordered once into the blocked layout oneDNN's matmul kernel
// reads (else the kernel repacks B on every call). Keeps a pointer to the
// plain data it was made from, which must outlive it.
struct PackedMatrix;

// nullptr when B is fine as it is (the kernel reads the plain layout).
std::shared_ptr<const PackedMatrix> PackMatrix(const Mat& b, const float* data);

// Gemm(shape, a, b, c, bias) reading B from `packed` when it was made from
// this b (same data and layout) and this shape's kernel reads its layout;
// otherwise from b itself.
void GemmPacked(const GemmShape& shape, const float* a, const float* b, const PackedMatrix& packed,
                float* c, const float* bias);

// A strided tensor [batch dims..., rows, cols] for batched products; a batch
// dimension of size 1 in one operand broadcasts over the other's (give it a
// nonzero stride: oneDNN 2.6 takes stride 0 to its slow reference kernel).
struct BatchMat {
  std::vector<int64_t> dims;
  std::vector<int64_t> strides;
};

// For every batch index: C = scale * A x B (the last two dims multiply). All
// three have the same rank (at most 12).
void BatchedGemm(const BatchMat& a, const BatchMat& b, const BatchMat& c, float scale,
                 const float* a_data, const float* b_data, float* c_data);

// In place: each of `rows` rows of `cols` floats (row i at x + i * ld) becomes
// softmax(row). Rows must not be entirely -inf (the caller zeroes those).
void SoftmaxRows(int64_t rows, int64_t cols, int64_t ld, float* x);

// Primitives created so far (for tests that check reuse).
int64_t CachedPrimitiveCount();

}  // namespace internal
}  // namespace attention

#endif  // CORE_ONEDNN_OPS_H_
