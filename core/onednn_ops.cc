#include "core/onednn_ops.h"

#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
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

const dnnl::engine& Engine() {
  static const dnnl::engine* engine = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *engine;
}

dnnl::stream& ThreadStream() {
  thread_local dnnl::stream stream(Engine());
  return stream;
}

// Grows this thread's scratchpad to `bytes` and wraps it.
dnnl::memory Scratchpad(const dnnl::memory::desc& md) {
  thread_local std::vector<char> buffer;
  if (buffer.size() < md.get_size()) buffer.resize(md.get_size());
  return dnnl::memory(md, Engine(), buffer.data());
}

dnnl::memory::desc MatMd(const Mat& m) {
  return dnnl::memory::desc({m.rows, m.cols}, dt::f32, {m.row_stride, m.col_stride});
}

struct Cached {
  dnnl::primitive primitive;
  dnnl::memory::desc a, b, c, bias, scratchpad;
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

}  // namespace

void Gemm(const GemmShape& s, const float* a, const float* b, float* c, const float* bias) {
  const Key key = {0,        s.a.rows,       s.a.cols,       s.a.row_stride, s.a.col_stride,
                   s.b.cols, s.b.row_stride, s.b.col_stride, s.c.row_stride, FloatBits(s.scale),
                   s.bias,   s.accumulate};
  std::shared_ptr<const Cached> p = Cache().Get(key, [&] {
    Cached e;
    e.a = MatMd(s.a);
    e.b = MatMd(s.b);
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
    dnnl::matmul::primitive_desc pd(desc, attr, Engine());
    e.scratchpad = pd.scratchpad_desc();
    e.primitive = dnnl::matmul(pd);
    return e;
  });
  const dnnl::engine& eng = Engine();
  std::unordered_map<int, dnnl::memory> args = {
      {DNNL_ARG_SRC, dnnl::memory(p->a, eng, const_cast<float*>(a))},
      {DNNL_ARG_WEIGHTS, dnnl::memory(p->b, eng, const_cast<float*>(b))},
      {DNNL_ARG_DST, dnnl::memory(p->c, eng, c)},
      {DNNL_ARG_SCRATCHPAD, Scratchpad(p->scratchpad)}};
  if (s.bias) args.emplace(DNNL_ARG_BIAS, dnnl::memory(p->bias, eng, const_cast<float*>(bias)));
  p->primitive.execute(ThreadStream(), args);
  ThreadStream().wait();
}

void BatchedGemm(const BatchMat& a, const BatchMat& b, const BatchMat& c, float scale,
                 const float* a_data, const float* b_data, float* c_data) {
  Key key = {2, FloatBits(scale)};
  for (const BatchMat* m : {&a, &b, &c}) {
    key.push_back(static_cast<int64_t>(m->dims.size()));
    key.insert(key.end(), m->dims.begin(), m->dims.end());
    key.insert(key.end(), m->strides.begin(), m->strides.end());
  }
  auto md = [](const BatchMat& m) { return dnnl::memory::desc(m.dims, dt::f32, m.strides); };
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
  const dnnl::engine& eng = Engine();
  p->primitive.execute(ThreadStream(),
                       {{DNNL_ARG_SRC, dnnl::memory(p->a, eng, const_cast<float*>(a_data))},
                        {DNNL_ARG_WEIGHTS, dnnl::memory(p->b, eng, const_cast<float*>(b_data))},
                        {DNNL_ARG_DST, dnnl::memory(p->c, eng, c_data)},
                        {DNNL_ARG_SCRATCHPAD, Scratchpad(p->scratchpad)}});
  ThreadStream().wait();
}

void SoftmaxRows(int64_t rows, int64_t cols, int64_t ld, float* x) {
  const Key key = {1, rows, cols, ld};
  std::shared_ptr<const Cached> p = Cache().Get(key, [&] {
    Cached e;
    e.a = dnnl::memory::desc({rows, cols}, dt::f32, {ld, 1});
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    dnnl::softmax_forward::desc desc(dnnl::prop_kind::forward_inference, e.a, 1);
    dnnl::softmax_forward::primitive_desc pd(desc, attr, Engine());
    e.scratchpad = pd.scratchpad_desc();
    e.primitive = dnnl::softmax_forward(pd);
    return e;
  });
  dnnl::memory m(p->a, Engine(), x);
  p->primitive.execute(
      ThreadStream(),
      {{DNNL_ARG_SRC, m}, {DNNL_ARG_DST, m}, {DNNL_ARG_SCRATCHPAD, Scratchpad(p->scratchpad)}});
  ThreadStream().wait();
}

int64_t CachedPrimitiveCount() { return Cache().size(); }

}  // namespace internal
}  // namespace attention
