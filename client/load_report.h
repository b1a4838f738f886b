// The load tester's figures and their reports: terminal summary, JSON, CSV,
// and an HTML page with an inline-SVG latency-percentile plot.
#ifndef CLIENT_LOAD_REPORT_H_
#define CLIENT_LOAD_REPORT_H_

#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "client/histogram.h"
#include "grpcpp/support/status.h"

namespace attention {
namespace client {

// The figures of one level of a run.
struct LoadResult {
  bool open_loop = false;
  double level = 0;  // concurrency or rate (req/s)
  int64_t sent = 0;
  int64_t ok = 0;
  std::map<std::string, int64_t> errors;           // status code name -> count
  std::map<std::string, std::string> first_error;  // status code name -> its first message
  int64_t lost = 0;                                // never answered, out of order, wrong id
  int64_t unexpected = 0;                          // stream responses nobody asked for
  int64_t retries = 0;  // attempts after the first, of requests counted once above
  std::string first_lost;
  double duration_s = 0;
  LatencyHistogram latency;    // us, from the actual send
  LatencyHistogram corrected;  // us, from the scheduled time (open loop)
  int64_t behind_schedule = 0;
  int64_t checked = 0;
  int64_t mismatches = 0;
  std::string first_mismatch;
  double request_bytes = 0;
  double response_bytes = 0;  // summed over OK responses
  double flops_per_request = 0;

  int64_t error_count() const;
  double rps() const;  // completed (ok + errors) per second
};

struct LoadReport {
  std::string target;
  std::string workload;
  std::string settings;
  double request_bytes = 0;
  double flops_per_request = 0;
  std::vector<LoadResult> results;
};

// "RESOURCE_EXHAUSTED" etc.
std::string StatusCodeName(grpc::StatusCode code);

void PrintResult(const LoadResult& r, FILE* out);
void PrintSweepTable(const LoadReport& report, FILE* out);
// A list of objects for a sweep, one object for a single level.
absl::Status WriteJson(const LoadReport& report, const std::string& path);
absl::Status WriteCsv(const LoadReport& report, const std::string& path);
absl::Status WriteHtml(const LoadReport& report, const std::string& path);

}  // namespace client
}  // namespace attention

#endif  // CLIENT_LOAD_REPORT_H_
