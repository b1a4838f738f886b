// attention-client load: the closed loop over streams (--stream). N
// bidirectional streams each keep --in-flight messages outstanding, all of
// them on one completion queue that the calling thread drives: no thread per
// stream, and no hop between threads per message. A message is its pool
// entry's bytes, serialized once, with its id appended (EncodedWithId: the
// tensors are not copied); a response is read without copying its tensors
// unless --verify checks it.
//
// Responses are checked for order and ids: a violation abandons the stream
// and counts its unanswered messages as lost. A stream whose oldest message
// waits longer than --timeout is cancelled (its messages end
// DEADLINE_EXCEEDED). A stream that ends before the level does is replaced,
// so that the concurrency holds.
//
//   RunStreams(workload, channels, settings, recorder);  // s.level streams
#ifndef CLIENT_LOAD_STREAMS_H_
#define CLIENT_LOAD_STREAMS_H_

#include "client/load_calls.h"
#include "client/load_drivers.h"
#include "client/load_recorder.h"
#include "client/load_workload.h"

namespace attention {
namespace client {

// Runs one level of `w` over s.level streams of `ch`, settling every message
// sent in `rec`. Blocks until every stream has ended.
void RunStreams(const Workload& w, Channels& ch, const RunSettings& s, Recorder& rec);

}  // namespace client
}  // namespace attention

#endif  // CLIENT_LOAD_STREAMS_H_
