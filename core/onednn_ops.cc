#include "core/onednn_ops.h"

#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"

namespace attention {
namespace internal {
namespace {

using dt = dnnl::memory::data_type;

// Beyond this many cached primitives the cache starts over (a bound on memory
// for servers that see endless new shapes; refilling costs ~0.1 ms a shape).
constexpr size_t kMaxCachedPrimitives = 4096;
// Beyond this many primitives with arguments bound on a thread, that
// thread's bindings start over.
constexpr size_t kMaxBoundPerThread = 512;

const dnnl::engine& Engine() {
  static const dnnl::engine* engine = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *engine;
}

dnnl::stream& ThreadStream() {
  thread_local dnnl::stream stream(Engine());
  return stream;
}

// This thread's scratchpad, grown to `bytes` (never null).
void* ScratchpadBuffer(size_t bytes) {
  thread_local std::vector<char> buffer(64);
  if (buffer.size() < bytes) buffer.resize(bytes);
  return buffer.data();
}

dt DataType(Elem e) { return e == Elem::kBF16 ? dt::bf16 : dt::f32; }

dnnl::memory::desc MatMd(const Mat& m) {
  return dnnl::memory::desc({m.rows, m.cols}, DataType(m.type), {m.row_stride, m.col_stride});
}

struct Cached {
  dnnl::primitive primitive;
  dnnl::memory::desc a, b, c, bias, scratchpad;
  bool usable = true;  // GemmPacked: false when the kernel wants another layout of B
};

using Key = std::vector<int64_t>;

class PrimitiveCache {
 public:
  template <typename Make>
  std::shared_ptr<const Cached> Get(const Key& key, Make make) {
    {
      std::shared_lock<std::shared_mutex> lock(mu_);
      auto it = map_.find(key);
      if (it != map_.end()) return it->second;
    }
    auto created = std::make_shared<const Cached>(make());  // outside the lock
    std::unique_lock<std::shared_mutex> lock(mu_);
    if (map_.size() >= kMaxCachedPrimitives) map_.clear();
    return map_.emplace(key, std::move(created)).first->second;
  }

  int64_t size() {
    std::shared_lock<std::shared_mutex> lock(mu_);
    return static_cast<int64_t>(map_.size());
  }

 private:
  std::shared_mutex mu_;
  std::map<Key, std::shared_ptr<const Cached>> map_;
};

PrimitiveCache& Cache() {
  static PrimitiveCache* cache = new PrimitiveCache;
  return *cache;
}

int32_t FloatBits(float f) {
  int32_t i;
  static_assert(sizeof(i) == sizeof(f));
  __builtin_memcpy(&i, &f, sizeof(f));
  return i;
}

Key GemmKey(int64_t kind, const GemmShape& s) {
  return {kind,
          s.a.rows,
          s.a.cols,
          s.a.row_stride,
          s.a.col_stride,
          s.b.cols,
          s.b.row_stride,
          s.b.col_stride,
          s.c.row_stride,
          FloatBits(s.scale),
          s.bias,
          s.accumulate,
          static_cast<int64_t>(s.a.type) * 2 + static_cast<int64_t>(s.c.type)};
}

// The matmul of `s`, with B described by `b` (its plain layout, a packed one,
// or format any to learn the kernel's layout).
dnnl::matmul::primitive_desc GemmPd(const GemmShape& s, const dnnl::memory::desc& b, Cached& e) {
  e.a = MatMd(s.a);
  e.b = b;
  e.c = MatMd(s.c);
  if (s.bias) e.bias = dnnl::memory::desc({1, s.b.cols}, dt::f32, {s.b.cols, 1});
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (s.scale != 1.0f) attr.set_output_scales(0, {s.scale});
  if (s.accumulate) {
    dnnl::post_ops ops;
    ops.append_sum(1.0f);
    attr.set_post_ops(ops);
  }
  dnnl::matmul::desc desc =
      s.bias ? dnnl::matmul::desc(e.a, e.b, e.bias, e.c) : dnnl::matmul::desc(e.a, e.b, e.c);
  return dnnl::matmul::primitive_desc(desc, attr, Engine());
}

// The arguments of a primitive as this thread runs it: memory objects made
// on its first run here, whose data handles each run sets (making them anew
// cost ~1.5 us a run, more than a small product takes). Holding the
// primitive keeps its address, the key, from being reused.
struct Bound {
  std::shared_ptr<const Cached> primitive;
  std::unordered_map<int, dnnl::memory> args;
};

constexpr int kArgs[] = {DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_BIAS, DNNL_ARG_DST};

// Runs `p` on this thread's stream with its arguments' data: data[i] for
// kArgs[i], described by the primitive's a, b, bias and c (an argument whose
// descriptor is empty is not the primitive's, and its data is ignored).
void Run(const std::shared_ptr<const Cached>& p, const void* const (&data)[4]) {
  thread_local std::unordered_map<const Cached*, Bound> bound;
  auto it = bound.find(p.get());
  if (it == bound.end()) {
    if (bound.size() >= kMaxBoundPerThread) bound.clear();
    Bound b{p, {}};
    const dnnl::memory::desc* descs[] = {&p->a, &p->b, &p->bias, &p->c};
    for (int i = 0; i < 4; ++i) {
      if (!descs[i]->is_zero())
        b.args.emplace(kArgs[i], dnnl::memory(*descs[i], Engine(), nullptr));
    }
    b.args.emplace(DNNL_ARG_SCRATCHPAD, dnnl::memory(p->scratchpad, Engine(), nullptr));
    it = bound.emplace(p.get(), std::move(b)).first;
  }
  std::unordered_map<int, dnnl::memory>& args = it->second.args;
  for (int i = 0; i < 4; ++i) {
    auto arg = args.find(kArgs[i]);
    if (arg != args.end()) arg->second.set_data_handle(const_cast<void*>(data[i]));
  }
  args.at(DNNL_ARG_SCRATCHPAD).set_data_handle(ScratchpadBuffer(p->scratchpad.get_size()));
  p->primitive.execute(ThreadStream(), args);
  ThreadStream().wait();
}

void RunGemm(const std::shared_ptr<const Cached>& p, bool bias, const void* a, const void* b,
             void* c, const float* bias_data) {
  Run(p, {a, b, bias ? bias_data : nullptr, c});
}

// Rows of A the packed layout is chosen for (the kernel's blocking of B does
// not depend on them; GemmPacked checks that it matches).
constexpr int64_t kPackRows = 256;

}  // namespace

struct PackedMatrix {
  Mat plain;
  const void* plain_data = nullptr;
  dnnl::memory packed;  // owns its buffer
};

void Gemm(const GemmShape& s, const void* a, const void* b, void* c, const float* bias) {
  std::shared_ptr<const Cached> p = Cache().Get(GemmKey(0, s), [&] {
    Cached e;
    dnnl::matmul::primitive_desc pd = GemmPd(s, MatMd(s.b), e);
    e.scratchpad = pd.scratchpad_desc();
    e.primitive = dnnl::matmul(pd);
    return e;
  });
  RunGemm(p, s.bias, a, b, c, bias);
}

std::shared_ptr<const PackedMatrix> PackMatrix(const Mat& b, const void* data) {
  GemmShape s;
  s.a = Mat{kPackRows, b.rows, b.rows, 1, b.type};
  s.b = b;
  s.c = Mat{kPackRows, b.cols, b.cols, 1};
  Cached unused;
  const dnnl::memory::desc any({b.rows, b.cols}, DataType(b.type), dnnl::memory::format_tag::any);
  const dnnl::memory::desc want = GemmPd(s, any, unused).weights_desc();
  if (want == MatMd(b)) return nullptr;
  auto m = std::make_shared<PackedMatrix>();
  m->plain = b;
  m->plain_data = data;
  m->packed = dnnl::memory(want, Engine());
  dnnl::memory src(MatMd(b), Engine(), const_cast<void*>(data));
  dnnl::reorder(src, m->packed).execute(ThreadStream(), src, m->packed);
  ThreadStream().wait();
  return m;
}

void GemmPacked(const GemmShape& s, const void* a, const void* b_plain, const PackedMatrix& b,
                void* c, const float* bias) {
  const Mat& m = b.plain;
  if (b_plain != b.plain_data || m.rows != s.b.rows || m.cols != s.b.cols ||
      m.row_stride != s.b.row_stride || m.col_stride != s.b.col_stride || m.type != s.b.type) {
    return Gemm(s, a, b_plain, c, bias);
  }
  std::shared_ptr<const Cached> p = Cache().Get(GemmKey(3, s), [&] {
    Cached e;
    const dnnl::memory::desc any({s.b.rows, s.b.cols}, DataType(s.b.type),
                                 dnnl::memory::format_tag::any);
    e.usable = GemmPd(s, any, e).weights_desc() == b.packed.get_desc();
    if (e.usable) {
      dnnl::matmul::primitive_desc pd = GemmPd(s, b.packed.get_desc(), e);
      e.scratchpad = pd.scratchpad_desc();
      e.primitive = dnnl::matmul(pd);
    }
    return e;
  });
  // The primitive was made for the first packed B of this shape; another
  // (say, packed under other settings) must match its layout to be read.
  if (!p->usable || p->b != b.packed.get_desc()) return Gemm(s, a, b_plain, c, bias);
  RunGemm(p, s.bias, a, b.packed.get_data_handle(), c, bias);
}

void BatchedGemm(const BatchMat& a, const BatchMat& b, const BatchMat& c, float scale,
                 const void* a_data, const void* b_data, void* c_data) {
  Key key = {2, FloatBits(scale)};
  for (const BatchMat* m : {&a, &b, &c}) {
    key.push_back(static_cast<int64_t>(m->dims.size()) * 2 + static_cast<int64_t>(m->type));
    key.insert(key.end(), m->dims.begin(), m->dims.end());
    key.insert(key.end(), m->strides.begin(), m->strides.end());
  }
  auto md = [](const BatchMat& m) {
    return dnnl::memory::desc(m.dims, DataType(m.type), m.strides);
  };
  std::shared_ptr<const Cached> p = Cache().Get(key, [&] {
    Cached e;
    e.a = md(a);
    e.b = md(b);
    e.c = md(c);
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    if (scale != 1.0f) attr.set_output_scales(0, {scale});
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(e.a, e.b, e.c), attr, Engine());
    e.scratchpad = pd.scratchpad_desc();
    e.primitive = dnnl::matmul(pd);
    return e;
  });
  Run(p, {a_data, b_data, nullptr, c_data});
}

void SoftmaxRows(int64_t rows, int64_t cols, int64_t ld, float* x) {
  const Key key = {1, rows, cols, ld};
  std::shared_ptr<const Cached> p = Cache().Get(key, [&] {
    Cached e;
    e.a = e.c = dnnl::memory::desc({rows, cols}, dt::f32, {ld, 1});
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    dnnl::softmax_forward::desc desc(dnnl::prop_kind::forward_inference, e.a, 1);
    dnnl::softmax_forward::primitive_desc pd(desc, attr, Engine());
    e.scratchpad = pd.scratchpad_desc();
    e.primitive = dnnl::softmax_forward(pd);
    return e;
  });
  Run(p, {x, nullptr, nullptr, x});
}

bool NativeBfloat16() {
  static const bool native = [] {
    try {
      const dnnl::cpu_isa isa = dnnl::get_effective_cpu_isa();
      const auto bits = static_cast<unsigned>(dnnl::cpu_isa::avx512_core_bf16);
      if ((static_cast<unsigned>(isa) & bits) != bits) return false;
      // The ISA says yes; the library must also have a kernel for it.
      GemmShape s;
      s.a = Mat{16, 32, 32, 1, Elem::kBF16};
      s.b = Mat{32, 16, 16, 1, Elem::kBF16};
      s.c = Mat{16, 16, 16, 1};
      Cached unused;
      dnnl::matmul::primitive_desc pd = GemmPd(s, MatMd(s.b), unused);
      const char* impl = pd.impl_info_str();
      return impl != nullptr && std::string(impl).find("ref") == std::string::npos;
    } catch (const dnnl::error&) {
      return false;
    }
  }();
  return native;
}

int64_t CachedPrimitiveCount() { return Cache().size(); }

}  // namespace internal
}  // namespace attention
