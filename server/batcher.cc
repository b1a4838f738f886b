#include "server/batcher.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/time/time.h"
#include "core/guard.h"

namespace attention {
namespace server {
namespace {

bool SameBeyondBatch(const TensorView& a, const TensorView& b) {
  return a.dtype == b.dtype && a.shape.size() == b.shape.size() && !a.shape.empty() &&
         std::equal(a.shape.begin() + 1, a.shape.end(), b.shape.begin() + 1);
}

bool SameOptional(const std::optional<TensorView>& a, const std::optional<TensorView>& b) {
  return a.has_value() == b.has_value() && (!a.has_value() || SameBeyondBatch(*a, *b));
}

// `part` of each member, concatenated along the batch dimension into
// `storage`: a view of the whole.
TensorView Concatenate(const std::vector<const AttentionArgs*>& members,
                       const TensorView& (*part)(const AttentionArgs&),
                       std::vector<char>* storage) {
  size_t bytes = 0;
  int64_t batch = 0;
  for (const AttentionArgs* m : members) {
    bytes += part(*m).byte_size;
    batch += part(*m).shape[0];
  }
  storage->resize(bytes);
  size_t at = 0;
  for (const AttentionArgs* m : members) {
    const TensorView& v = part(*m);
    if (v.byte_size > 0) std::memcpy(storage->data() + at, v.data, v.byte_size);
    at += v.byte_size;
  }
  TensorView whole = part(*members[0]);
  whole.shape[0] = batch;
  whole.data = storage->data();
  whole.byte_size = bytes;
  return whole;
}

// Copies rows [first, first + rows) of `whole` (batch dimension first) into
// the buffer `get` returns for the member's shape. Internal when it gives none.
absl::Status Split(const FloatTensor& whole, int64_t first, int64_t rows,
                   const std::function<float*(const std::vector<int64_t>&)>& get) {
  std::vector<int64_t> shape = whole.shape;
  const int64_t per_row = static_cast<int64_t>(whole.data.size()) / shape[0];
  shape[0] = rows;
  float* out = get(shape);
  if (out == nullptr) return absl::InternalError("no buffer for a batched request's result");
  std::memcpy(out, whole.data.data() + first * per_row, rows * per_row * sizeof(float));
  return absl::OkStatus();
}

}  // namespace

Batcher::Batcher(Executor* executor, Options options)
    : executor_(executor), options_(std::move(options)) {}

bool Batcher::Batchable(const AttentionArgs& args, const ProjectionWeights* inline_projection) {
  const auto rank3 = [](const std::optional<TensorView>& v) {
    return !v.has_value() || v->shape.size() == 3;
  };
  return args.query.shape.size() == 3 && rank3(args.key) && rank3(args.value) && !args.attn_mask &&
         (!args.key_padding_mask || args.key_padding_mask->shape.size() == 2) &&
         (args.projection == nullptr || args.projection != inline_projection);
}

bool Batcher::Compatible(const AttentionArgs& args, const AttentionArgs& b) {
  return args.self_attention == b.self_attention && SameBeyondBatch(args.query, b.query) &&
         SameOptional(args.key, b.key) && SameOptional(args.value, b.value) &&
         SameOptional(args.attn_mask, b.attn_mask) &&
         SameOptional(args.key_padding_mask, b.key_padding_mask) && args.num_heads == b.num_heads &&
         args.num_kv_heads == b.num_kv_heads && args.scale == b.scale && args.causal == b.causal &&
         args.weights == b.weights && args.projection == b.projection &&
         args.precision == b.precision;
}

absl::Status Batcher::ComputeMerged(const std::vector<const AttentionArgs*>& members,
                                    const ComputeOptions& options,
                                    const std::vector<OutputBuffers*>& outputs,
                                    MemoryBudget* budget) {
  Reservation copies(budget);
  if (budget != nullptr) {
    int64_t bytes = 0;  // the concatenated inputs and the whole results
    for (const AttentionArgs* m : members) {
      for (const std::optional<TensorView>& t :
           {std::optional<TensorView>(m->query), m->key, m->value, m->key_padding_mask}) {
        if (t) bytes += static_cast<int64_t>(t->byte_size);
      }
      absl::StatusOr<AttentionPlanInfo> info = PlanAttention(*m, options);
      if (!info.ok()) return info.status();
      bytes += 4 * ShapeProduct(info->output_shape);
      if (!info->weights_shape.empty()) bytes += 4 * ShapeProduct(info->weights_shape);
    }
    if (absl::Status s = copies.Add(bytes); !s.ok()) return s;
  }
  AttentionArgs merged = *members[0];
  std::vector<char> query, key, value, padding;
  merged.query = Concatenate(
      members, [](const AttentionArgs& args) -> const TensorView& { return args.query; }, &query);
  if (merged.key) {
    merged.key = Concatenate(
        members, [](const AttentionArgs& args) -> const TensorView& { return *args.key; }, &key);
    merged.value = Concatenate(
        members, [](const AttentionArgs& args) -> const TensorView& { return *args.value; },
        &value);
  }
  if (merged.key_padding_mask) {
    merged.key_padding_mask = Concatenate(
        members,
        [](const AttentionArgs& args) -> const TensorView& { return *args.key_padding_mask; },
        &padding);
  }
  VectorOutputs whole;
  if (absl::Status s = ComputeAttention(merged, options, &whole); !s.ok()) return s;
  int64_t first = 0;
  for (size_t i = 0; i < members.size(); ++i) {
    const int64_t rows = members[i]->query.shape[0];
    OutputBuffers* out = outputs[i];
    if (absl::Status s =
            Split(whole.output, first, rows,
                  [out](const std::vector<int64_t>& shape) { return out->Output(shape); });
        !s.ok()) {
      return s;
    }
    if (merged.weights != WeightsMode::kNone) {
      if (absl::Status s =
              Split(whole.weights, first, rows,
                    [out](const std::vector<int64_t>& shape) { return out->Weights(shape); });
          !s.ok()) {
        return s;
      }
    }
    first += rows;
  }
  return absl::OkStatus();
}

bool Batcher::Joins(const Group& group, const Request& request) {
  if (group.decode || request.sequence != nullptr) {
    return group.decode && request.sequence != nullptr &&
           group.key.projection == request.args->projection;
  }
  return Compatible(group.key, *request.args);
}

bool Batcher::Submit(Request request) {
  auto pending = std::make_shared<Pending>();
  pending->request = std::move(request);
  pending->arrived = Clock::now();
  {
    absl::MutexLock lock(&mu_);
    const AttentionArgs& args = *pending->request.args;
    auto group = std::find_if(groups_.begin(), groups_.end(),
                              [&](const auto& g) { return Joins(*g, pending->request); });
    if (group == groups_.end()) {
      // Kinds nobody waits for go before a new one is added, so a stream of
      // ever different shapes does not grow the list.
      groups_.erase(
          std::remove_if(groups_.begin(), groups_.end(),
                         [](const auto& g) { return g->pending.empty() && g->waiting == 0; }),
          groups_.end());
      groups_.push_back(std::make_unique<Group>());
      groups_.back()->key = args;
      groups_.back()->decode = pending->request.sequence != nullptr;
      group = groups_.end() - 1;
    }
    (*group)->pending.push_back(pending);
  }
  if (!executor_->TrySubmit([this, pending] { Run(pending); }, answered_queued())) {
    absl::MutexLock lock(&mu_);
    if (!pending->taken) {
      pending->taken = true;  // another worker's batch may have taken it meanwhile
      for (auto& g : groups_) {
        g->pending.erase(std::remove(g->pending.begin(), g->pending.end(), pending),
                         g->pending.end());
      }
      return false;
    }
    // Taken by a batch already: it is answered there, and has no task.
    --answered_queued_;
  }
  arrived_.SignalAll();
  return true;
}

void Batcher::Take(Group* group, std::vector<std::shared_ptr<Pending>>* batch) const {
  const size_t max = static_cast<size_t>(std::max(1, options_.max_size));
  for (const auto& p : group->pending) {
    if (batch->size() >= max) break;
    if (p->taken) continue;
    p->taken = true;  // another's batch: its own task, queued, is a no-op now
    ++answered_queued_;
    batch->push_back(p);
  }
  auto& v = group->pending;
  v.erase(std::remove_if(v.begin(), v.end(), [](const auto& p) { return p->taken; }), v.end());
}

// Answered requests stay referenced by their own executor tasks (no-ops now)
// until a worker pops them: what they hold (the parsed request, its output
// buffers, through `done`) goes now, not then.
void Batcher::Forget(const std::vector<std::shared_ptr<Pending>>& batch) {
  for (const auto& p : batch) p->request = Request{};
}

void Batcher::Run(const std::shared_ptr<Pending>& own) {
  std::vector<std::shared_ptr<Pending>> batch;
  {
    absl::ReleasableMutexLock lock(&mu_);
    if (own->taken) {  // answered by an earlier batch
      --answered_queued_;
      return;
    }
    Group* group = nullptr;
    for (auto& g : groups_) {
      if (std::find(g->pending.begin(), g->pending.end(), own) != g->pending.end()) {
        group = g.get();
      }
    }
    own->taken = true;
    batch.push_back(own);
    if (group == nullptr) {  // cannot happen: every pending request is in a group
      lock.Release();
      ComputeBatch(batch);
      Forget(batch);
      return;
    }
    Take(group, &batch);
    // Concurrent traffic (the last batch had company): wait for the rest of
    // it, up to the delay counted from the oldest arrival; never while
    // requests of another kind are ready to compute.
    const bool others_ready = std::any_of(groups_.begin(), groups_.end(), [group](const auto& g) {
      return g.get() != group && !g->pending.empty();
    });
    if (!others_ready && group->last_batch > 1 &&
        batch.size() < static_cast<size_t>(options_.max_size)) {
      Clock::time_point oldest = own->arrived;
      for (const auto& p : batch) oldest = std::min(oldest, p->arrived);
      const auto deadline = oldest + std::chrono::microseconds(options_.delay_us);
      ++group->waiting;
      while (batch.size() < static_cast<size_t>(options_.max_size)) {
        arrived_.WaitWithTimeout(&mu_, absl::FromChrono(deadline - Clock::now()));
        // Timed out once the deadline has passed on the steady clock,
        // whatever ended the wait (a signal, or absl's timeout, which counts
        // on the wall clock).
        const bool timeout = Clock::now() >= deadline;
        Take(group, &batch);
        if (timeout) break;
      }
      --group->waiting;
    }
    group->last_batch = static_cast<int>(batch.size());
  }
  ComputeBatch(batch);
  Forget(batch);
}

std::function<absl::Status()> Batcher::AnyAlive(const std::vector<Request*>& live) {
  return [&live] {
    absl::Status last;
    for (Request* r : live) {
      last = r->check ? r->check() : absl::OkStatus();
      if (last.ok()) return last;
    }
    return last;
  };
}

void Batcher::ComputeBatch(const std::vector<std::shared_ptr<Pending>>& batch) const {
  const Clock::time_point start = Clock::now();
  if (options_.on_batch) options_.on_batch(static_cast<int>(batch.size()));
  std::vector<Request*> live;
  for (const auto& p : batch) {
    if (options_.on_wait) {
      options_.on_wait(std::chrono::duration<double>(start - p->arrived).count());
    }
    Request& r = p->request;
    if (r.started) r.started();
    const absl::Status alive = r.check ? r.check() : absl::OkStatus();
    if (alive.ok()) {
      live.push_back(&r);
    } else {
      r.done(alive);  // its caller is gone: not computed, not waited for
    }
  }
  if (live.empty()) return;
  if (live[0]->sequence != nullptr) {
    ComputeSteps(live);
    return;
  }
  ComputeOptions options;
  options.max_threads = options_.max_threads;
  const auto alone = [this](Request* r) {
    ComputeOptions own;
    own.max_threads = options_.max_threads;
    own.max_memory_bytes = options_.max_request_memory_bytes;
    own.check = r->check;
    return GuardStatus([&] { return ComputeAttention(*r->args, own, r->outputs); },
                       "out of memory computing the request");
  };
  if (live.size() == 1) {
    live[0]->done(alone(live[0]));
    return;
  }
  std::vector<const AttentionArgs*> args;
  std::vector<OutputBuffers*> outputs;
  for (Request* r : live) {
    args.push_back(r->args);
    outputs.push_back(r->outputs);
  }
  const int64_t n = static_cast<int64_t>(live.size());
  options.max_memory_bytes =
      options_.max_request_memory_bytes > std::numeric_limits<int64_t>::max() / n
          ? std::numeric_limits<int64_t>::max()
          : options_.max_request_memory_bytes * n;
  options.check = AnyAlive(live);
  const absl::Status merged = GuardStatus(
      [&] { return ComputeMerged(args, options, outputs, options_.budget); }, "out of memory");
  for (Request* r : live) {
    if (!merged.ok()) {
      r->done(alone(r));  // each on its own: one request never fails another
    } else {
      const absl::Status alive = r->check ? r->check() : absl::OkStatus();
      r->done(alive);
    }
  }
}

void Batcher::ComputeSteps(const std::vector<Request*>& live) const {
  ComputeOptions options;
  options.max_threads = options_.max_threads;
  options.max_memory_bytes = options_.max_request_memory_bytes;  // each member's, as alone
  options.check = AnyAlive(live);
  std::vector<DecodeMember> members;
  members.reserve(live.size());
  for (Request* r : live) members.push_back({r->args, r->sequence, r->outputs});
  std::vector<absl::Status> status(live.size());
  const absl::Status guarded = GuardStatus(
      [&] {
        status = DecodeSteps(members, options);
        return absl::OkStatus();
      },
      "out of memory computing the message");
  for (size_t i = 0; i < live.size(); ++i) live[i]->done(guarded.ok() ? status[i] : guarded);
}

}  // namespace server
}  // namespace attention
