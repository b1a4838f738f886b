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

// Element types of the products' operands: bfloat16 A and B multiply with
// float32 accumulation (C float32 or bfloat16).
enum class Elem { kF32, kBF16 };

// A strided matrix: element (r, c) at base[r * row_stride + c * col_stride].
struct Mat {
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t row_stride = 0;
  int64_t col_stride = 1;
  Elem type = Elem::kF32;
};

// C[m, n] = scale * sum_k A[m, k] B[k, n] (+ bias[n]) (+ C[m, n] if accumulate).
// C must be row-major (col_stride 1). A and B have the same type; the bias
// is float32.
struct GemmShape {
  Mat a;
  Mat b;
  Mat c;
  float scale = 1.0f;
  bool bias = false;
  bool accumulate = false;
};

void Gemm(const GemmShape& shape, const void* a, const void* b, void* c, const float* bias);

// B of products whose B stays the same from call to call (a model's
// weights), reordered once into the blocked layout oneDNN's matmul kernel
// reads (else the kernel repacks B on every call). Keeps a pointer to the
// plain data it was made from, which must outlive it.
struct PackedMatrix;

// nullptr when B is fine as it is (the kernel reads the plain layout).
// `data` holds elements of b.type.
std::shared_ptr<const PackedMatrix> PackMatrix(const Mat& b, const void* data);

// Gemm(shape, a, b, c, bias) reading B from `packed` when it was made from
// this b (same data and layout) and this shape's kernel reads its layout;
// otherwise from b itself.
void GemmPacked(const GemmShape& shape, const void* a, const void* b, const PackedMatrix& packed,
                void* c, const float* bias);

// A strided tensor [batch dims..., rows, cols] for batched products; a batch
// dimension of size 1 in one operand broadcasts over the other's (give it a
// nonzero stride: oneDNN 2.6 takes stride 0 to its slow reference kernel).
struct BatchMat {
  std::vector<int64_t> dims;
  std::vector<int64_t> strides;
  Elem type = Elem::kF32;
};

// For every batch index: C = scale * A x B (the last two dims multiply). All
// three have the same rank (at most 12); A and B the same type.
void BatchedGemm(const BatchMat& a, const BatchMat& b, const BatchMat& c, float scale,
                 const void* a_data, const void* b_data, void* c_data);

// In place: each of `rows` rows of `cols` floats (row i at x + i * ld) becomes
// softmax(row). Rows must not be entirely -inf (the caller zeroes those).
void SoftmaxRows(int64_t rows, int64_t cols, int64_t ld, float* x);

// Whether this CPU multiplies bfloat16 natively (AVX-512 with bf16
// instructions, and oneDNN not capped below them by ONEDNN_MAX_CPU_ISA):
// learned once, by creating a small bfloat16 matmul. Elem::kBF16 products
// must only run when this is true. Never throws.
bool NativeBfloat16();

// Primitives created so far (for tests that check reuse).
int64_t CachedPrimitiveCount();

}  // namespace internal
}  // namespace attention

#endif  // CORE_ONEDNN_OPS_H_
