#include "client/load_streams.h"

#include <chrono>
#include <deque>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace attention {
namespace client {
namespace {

using Clock = std::chrono::steady_clock;

// How often streams are checked for a message older than --timeout.
constexpr std::chrono::milliseconds kStallCheckEvery(50);

// A stream message sent and not yet answered.
struct Pending {
  std::string id;
  size_t index;
  double sent_us;
};

// Settles the messages a finished stream left unanswered: lost after an
// order/id `violation` (or when the stream ended OK without answering them),
// else with the stream's `final_status`. A violation with nothing pending was
// a response too many.
void SettleUnanswered(const std::deque<Pending>& pending, const std::string& violation,
                      const grpc::Status& final_status, Clock::time_point start, Recorder& rec) {
  if (!violation.empty() && pending.empty()) rec.Unexpected(violation);
  for (const Pending& p : pending) {
    if (!violation.empty()) {
      rec.Lost(violation);
    } else if (final_status.ok()) {
      rec.Lost("stream ended without answering message '" + p.id + "'");
    } else {
      rec.Done(final_status, nullptr, p.index, {-1, p.sent_us, NowUs(start)});
    }
  }
}

// One stream and what it waits for. gRPC allows one read and one write (or
// WritesDone) outstanding at a time, and the start counts as a write; Finish
// is asked for once the read side has ended and no write is outstanding.
struct Stream {
  enum Op { kStart, kWrite, kRead, kWritesDone, kFinish, kOps };
  // A completion-queue tag: which operation of which stream completed.
  struct Tag {
    Stream* stream;
    Op op;
  };

  Stream(int worker, size_t channel) : worker(worker), channel(channel) {
    for (int op = 0; op < kOps; ++op) tags[op] = {this, static_cast<Op>(op)};
  }

  const int worker;      // which of the level's streams this is (ids: "worker.n")
  const size_t channel;  // its channel, kept by the streams that replace it
  Tag tags[kOps];
  grpc::ClientContext context;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> rw;  // after the context: goes first
  grpc::ByteBuffer out;                                      // the message being written
  grpc::ByteBuffer in;                                       // the response being read
  grpc::Status status;                                       // Finish's
  std::deque<Pending> pending;
  double opened_us = 0;
  int64_t written = 0;
  bool writing = true;        // the start, a Write or WritesDone outstanding
  bool write_closed = false;  // WritesDone sent, or a write failed
  bool read_closed = false;   // a read failed: the stream is over
  bool stalled = false;       // cancelled: the oldest message waited longer than --timeout
  std::string violation;      // the first order/id problem: the stream is abandoned
};

// The streams of one level and the completion queue they share.
class StreamLoop {
 public:
  StreamLoop(const Workload& w, Channels& ch, const RunSettings& s, Recorder& rec)
      : w_(w),
        ch_(ch),
        s_(s),
        rec_(rec),
        method_(absl::StrCat(
            "/", v1::AttentionService::service_full_name(),
            w.rpc == RpcKind::kAttention ? "/StreamAttention" : "/StreamSelfAttention")),
        streams_(static_cast<size_t>(s.level)) {}

  ~StreamLoop() {
    cq_.Shutdown();
    void* tag;
    bool ok;
    while (cq_.Next(&tag, &ok)) {
    }
  }

  void Run() {
    for (size_t i = 0; i < streams_.size(); ++i) Open(static_cast<int>(i), ch_.Pick());
    auto next_check = std::chrono::system_clock::now() + kStallCheckEvery;
    while (live_ > 0) {
      void* tag;
      bool ok;
      if (cq_.AsyncNext(&tag, &ok, next_check) == grpc::CompletionQueue::GOT_EVENT) {
        Handle(static_cast<Stream::Tag*>(tag), ok);
      }
      if (std::chrono::system_clock::now() >= next_check) {
        CancelStalled();
        next_check = std::chrono::system_clock::now() + kStallCheckEvery;
      }
    }
  }

 private:
  // Opens stream `worker` and reads at once; it writes once started.
  void Open(int worker, size_t channel) {
    auto st = std::make_unique<Stream>(worker, channel);
    st->opened_us = NowUs(start_);
    st->rw = ch_.generic[channel]->PrepareCall(&st->context, method_, &cq_);
    st->rw->StartCall(&st->tags[Stream::kStart]);
    st->rw->Read(&st->in, &st->tags[Stream::kRead]);
    streams_[static_cast<size_t>(worker)] = std::move(st);
    ++live_;
  }

  void Handle(Stream::Tag* tag, bool ok) {
    Stream* st = tag->stream;
    switch (tag->op) {
      case Stream::kStart:
      case Stream::kWrite:
        st->writing = false;
        if (!ok) st->write_closed = true;
        Pump(st);
        return MaybeFinish(st);
      case Stream::kWritesDone:
        st->writing = false;
        return MaybeFinish(st);
      case Stream::kRead:
        if (!ok) {
          st->read_closed = true;
          return MaybeFinish(st);
        }
        return Answered(st);
      case Stream::kFinish:
        return Close(st);
      case Stream::kOps:
        break;
    }
  }

  // Writes the next message when fewer than --in-flight are outstanding, or
  // closes the write side when the level is over.
  void Pump(Stream* st) {
    if (st->writing || st->write_closed || st->read_closed) return;
    if (static_cast<int>(st->pending.size()) >= s_.in_flight) return;
    const int64_t i = issued_++;
    st->writing = true;
    if (TimeUp(s_, start_, i)) {
      st->write_closed = true;
      st->rw->WritesDone(&st->tags[Stream::kWritesDone]);
      return;
    }
    const size_t index = static_cast<size_t>(i) % w_.size();
    const std::string id = absl::StrCat(st->worker, ".", st->written++);
    st->out = EncodedWithId(w_, index, id);
    st->pending.push_back({id, index, NowUs(start_)});
    rec_.Sent();
    st->rw->Write(st->out, &st->tags[Stream::kWrite]);
  }

  // A response has arrived: it must answer the oldest message outstanding.
  void Answered(Stream* st) {
    if (st->violation.empty()) {
      const ResponseHead head = ReadResponseHead(&st->in);
      if (!head.parsed || st->pending.empty() || st->pending.front().id != head.id) {
        st->violation =
            head.parsed
                ? absl::StrCat("stream response id '", head.id, "' out of order (expected '",
                               st->pending.empty() ? "" : st->pending.front().id, "')")
                : std::string("a stream response does not parse as an AttentionResponse");
        st->write_closed = true;
        st->context.TryCancel();
      } else {
        const Pending p = std::move(st->pending.front());
        st->pending.pop_front();
        rec_.DoneSerialized(grpc::Status::OK, &st->in, p.index, {-1, p.sent_us, NowUs(start_)});
        Pump(st);
      }
    }
    // After a violation, the responses still coming are read and dropped.
    st->rw->Read(&st->in, &st->tags[Stream::kRead]);
  }

  void MaybeFinish(Stream* st) {
    if (!st->read_closed || st->writing) return;
    st->writing = true;  // nothing more is written; Finish completes last
    st->rw->Finish(&st->status, &st->tags[Stream::kFinish]);
  }

  // The stream has ended: settles what it left and replaces it while the
  // level lasts.
  void Close(Stream* st) {
    grpc::Status final_status = st->status;
    if (st->stalled) {
      final_status = grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                                  "no stream response within --timeout; stream cancelled");
    }
    SettleUnanswered(st->pending, st->violation, final_status, start_, rec_);
    // A stream that failed before it sent anything counts as one request
    // failed with its status: a level against a failing server shows the
    // failures, and ends.
    if (st->written == 0 && !final_status.ok()) {
      const int64_t i = issued_++;
      if (!TimeUp(s_, start_, i)) {
        rec_.Sent();
        rec_.Done(final_status, nullptr, static_cast<size_t>(i) % w_.size(),
                  {-1, st->opened_us, NowUs(start_)});
      }
    }
    const int worker = st->worker;
    const size_t channel = st->channel;
    streams_[static_cast<size_t>(worker)].reset();
    --live_;
    if (!TimeUp(s_, start_, issued_)) Open(worker, channel);
  }

  void CancelStalled() {
    const double now_us = NowUs(start_);
    for (const std::unique_ptr<Stream>& st : streams_) {
      if (st == nullptr || st->stalled || st->pending.empty()) continue;
      if (now_us - st->pending.front().sent_us > s_.timeout * 1e6) {
        st->stalled = true;
        st->context.TryCancel();
      }
    }
  }

  const Workload& w_;
  Channels& ch_;
  const RunSettings& s_;
  Recorder& rec_;
  const std::string method_;
  const Clock::time_point start_ = Clock::now();
  grpc::CompletionQueue cq_;
  std::vector<std::unique_ptr<Stream>> streams_;  // by worker; null between streams
  int live_ = 0;
  int64_t issued_ = 0;
};

}  // namespace

void RunStreams(const Workload& w, Channels& ch, const RunSettings& s, Recorder& rec) {
  StreamLoop(w, ch, s, rec).Run();
}

}  // namespace client
}  // namespace attention
