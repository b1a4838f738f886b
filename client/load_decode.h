// attention-client load --rpc decode: many sequences of a model decoded at
// once over StreamDecode, as a server that generates text for many users
// sees them.
//
// Each of --sequences K sequences has a stream of its own (the streams
// spread round robin over --connections channels); it is prefilled with
// --context N tokens in one message, and once every sequence is prefilled the
// measured level begins: --steps M one-token steps per sequence, each sent
// when the sequence's previous step is answered (a closed loop per sequence,
// K in all). Every step is one request in the Recorder's ledger (sent = ok +
// errors); the prefills are not measured. A step that fails ends its
// sequence (its later steps are not sent). With --retries R the streams are
// client::DecodeStream's that survive a replica (reopened, sequences
// rebuilt, the step sent again): the step counts once, its reopenings as
// retries. --verify P checks P% of the steps against the naive reference of
// the causal forward over the sequence's tokens.
//
//   absl::StatusOr<Workload> w = MakeDecodeWorkload(args, probe, /*verify_percent=*/10);
//   LoadResult r = RunDecodeLevel(*w, channels, settings, /*verify_percent=*/10);
#ifndef CLIENT_LOAD_DECODE_H_
#define CLIENT_LOAD_DECODE_H_

#include "absl/status/statusor.h"
#include "client/args.h"
#include "client/client.h"
#include "client/load_calls.h"
#include "client/load_drivers.h"
#include "client/load_report.h"
#include "client/load_workload.h"

namespace attention {
namespace client {

// The decode workload of `args` (--model, --context, --sequences, --steps,
// --wire-dtype, --precision): a pool of token sequences (at most 4 distinct
// ones; sequence k decodes entry k % 4) and, with verify_percent > 0, the
// reference output of every step (the model's weights read from
// --model-file). Errors as MakeWorkload's.
absl::StatusOr<Workload> MakeDecodeWorkload(const CliArgs& args, AttentionClient& probe,
                                            double verify_percent);

// Runs the level of `w` (see the file comment) over `ch` with s.timeout per
// stream and ch.retries; blocks until every sequence is done.
LoadResult RunDecodeLevel(const Workload& w, Channels& ch, const RunSettings& s,
                          double verify_percent);

}  // namespace client
}  // namespace attention

#endif  // CLIENT_LOAD_DECODE_H_
