#include "client/load_report.h"

#include <algorithm>
#include <cmath>
#include <ctime>
#include <fstream>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace attention {
namespace client {
namespace {

std::string LevelName(const LoadResult& r) {
  return r.open_loop ? absl::StrCat("rate ", r.level, "/s") : absl::StrCat("concurrency ", r.level);
}

double MbPerS(const LoadResult& r) {
  const double bytes = r.request_bytes * (r.ok + r.error_count()) + r.response_bytes;
  return r.duration_s > 0 ? bytes / r.duration_s / 1e6 : 0;
}

double Gflops(const LoadResult& r) {
  return r.duration_s > 0 ? r.ok * r.flops_per_request / r.duration_s / 1e9 : 0;
}

nlohmann::json Latencies(const LatencyHistogram& h) {
  return {{"p50", h.Percentile(50) / 1e3},
          {"p90", h.Percentile(90) / 1e3},
          {"p99", h.Percentile(99) / 1e3},
          {"p999", h.Percentile(99.9) / 1e3},
          {"max", h.max() / 1e3},
          {"mean", h.mean() / 1e3},
          {"count", h.count()}};
}

nlohmann::json ToJson(const LoadReport& report, const LoadResult& r) {
  nlohmann::json j = {
      {"target", report.target},
      {"workload", report.workload},
      {"mode", r.open_loop ? "open" : "closed"},
      {r.open_loop ? "rate" : "concurrency", r.level},
      {"sent", r.sent},
      {"ok", r.ok},
      {"errors", r.errors},
      {"first_errors", r.first_error},
      {"lost", r.lost},
      {"unexpected_responses", r.unexpected},
      {"retries", r.retries},
      {"duration_s", r.duration_s},
      {"rps", r.rps()},
      {"mb_per_s", MbPerS(r)},
      {"gflops", Gflops(r)},
      {"latency_ms", Latencies(r.latency)},
      {"verify",
       {{"checked", r.checked},
        {"mismatches", r.mismatches},
        {"first_mismatch", r.first_mismatch}}},
  };
  if (r.open_loop) {
    j["corrected_latency_ms"] = Latencies(r.corrected);
    j["behind_schedule"] = r.behind_schedule;
  }
  return j;
}

absl::Status WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  if (!out) return absl::PermissionDeniedError(absl::StrCat(path, ": cannot write"));
  return absl::OkStatus();
}

std::string Escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '&':
        out += "&amp;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// The latency-percentile plot: x is the percentile on a log scale of
// 1 / (1 - p) (50, 90, 99, 99.9, 99.99), y is latency in ms.
std::string PercentilePlot(const LoadReport& report) {
  const double W = 760, H = 360, left = 60, right = 170, top = 20, bottom = 40;
  const std::vector<double> ps = {0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99};
  auto x_of = [&](double p) {
    const double x = std::log10(1.0 / (1.0 - p / 100.0));  // 0 .. 4
    return left + (W - left - right) * x / 4.0;
  };
  // y: latency on a log scale (distributions of several levels differ by
  // orders of magnitude), from the decade below the smallest to above the largest.
  double ymin = 1e300, ymax = 0;
  for (const LoadResult& r : report.results) {
    for (int corrected = 0; corrected < (r.open_loop ? 2 : 1); ++corrected) {
      const LatencyHistogram& h = corrected ? r.corrected : r.latency;
      if (h.count() == 0) continue;
      ymin = std::min(ymin, std::max(h.Percentile(0) / 1e3, 1e-3));
      ymax = std::max(ymax, h.max() / 1e3);
    }
  }
  if (ymax <= 0) ymin = 0.1, ymax = 1;
  const double lo = std::floor(std::log10(ymin)),
               hi = std::max(lo + 1, std::ceil(std::log10(ymax)));
  auto y_of = [&](double ms) {
    const double v = (std::log10(std::max(ms, 1e-3)) - lo) / (hi - lo);
    return top + (H - top - bottom) * (1 - v);
  };
  std::string svg = absl::StrFormat(
      "<svg xmlns='http://www.w3.org/2000/svg' width='%.0f' height='%.0f' "
      "font-family='sans-serif' font-size='11'>\n<rect width='100%%' height='100%%' "
      "fill='white'/>\n",
      W, H);
  for (double p : {50.0, 90.0, 99.0, 99.9, 99.99}) {
    absl::StrAppendFormat(&svg,
                          "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#ddd'/>"
                          "<text x='%.1f' y='%.1f' text-anchor='middle'>p%g</text>\n",
                          x_of(p), top, x_of(p), H - bottom, x_of(p), H - bottom + 15, p);
  }
  for (double decade = lo; decade <= hi; ++decade) {
    for (double m : {1.0, 2.0, 5.0}) {
      const double ms = m * std::pow(10.0, decade);
      if (std::log10(ms) > hi + 1e-9) break;
      absl::StrAppendFormat(&svg,
                            "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='%s'/>"
                            "<text x='%.1f' y='%.1f' text-anchor='end'>%g</text>\n",
                            left, y_of(ms), W - right, y_of(ms), m == 1 ? "#ccc" : "#eee", left - 5,
                            y_of(ms) + 4, ms);
    }
  }
  absl::StrAppendFormat(&svg,
                        "<text x='15' y='%.1f' transform='rotate(-90 15 %.1f)' "
                        "text-anchor='middle'>latency (ms, log scale)</text>\n"
                        "<text x='%.1f' y='%.1f' text-anchor='middle'>percentile</text>\n",
                        H / 2, H / 2, (left + W - right) / 2, H - 5);
  const char* colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
                          "#9467bd", "#8c564b", "#e377c2", "#17becf"};
  int series = 0;
  for (const LoadResult& r : report.results) {
    const char* color = colors[series % 8];
    for (int corrected = 0; corrected < (r.open_loop ? 2 : 1); ++corrected) {
      const LatencyHistogram& h = corrected ? r.corrected : r.latency;
      std::vector<std::string> points;
      for (double p : ps) {
        points.push_back(absl::StrFormat("%.1f,%.1f", x_of(p), y_of(h.Percentile(p) / 1e3)));
      }
      absl::StrAppendFormat(
          &svg, "<polyline fill='none' stroke='%s' stroke-width='2' %s points='%s'/>\n", color,
          corrected ? "stroke-dasharray='6,4'" : "", absl::StrJoin(points, " "));
      const double ly = top + 14 + 16 * (series * (r.open_loop ? 2 : 1) + corrected);
      absl::StrAppendFormat(&svg,
                            "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='%s' "
                            "stroke-width='2' %s/><text x='%.1f' y='%.1f'>%s</text>\n",
                            W - right + 10, ly - 4, W - right + 35, ly - 4, color,
                            corrected ? "stroke-dasharray='6,4'" : "", W - right + 40, ly,
                            Escape(LevelName(r) + (corrected ? " corrected" : "")));
    }
    ++series;
  }
  svg += "</svg>\n";
  return svg;
}

}  // namespace

int64_t LoadResult::error_count() const {
  int64_t n = 0;
  for (const auto& [code, count] : errors) n += count;
  return n;
}

double LoadResult::rps() const { return duration_s > 0 ? (ok + error_count()) / duration_s : 0; }

std::string StatusCodeName(grpc::StatusCode code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

void PrintResult(const LoadResult& r, FILE* out) {
  std::fprintf(out, "\n%s: %.1f s\n", LevelName(r).c_str(), r.duration_s);
  std::fprintf(out, "  sent %lld  ok %lld  errors %lld%s\n", static_cast<long long>(r.sent),
               static_cast<long long>(r.ok), static_cast<long long>(r.error_count()),
               r.sent == r.ok + r.error_count() ? "" : "  (COUNTS DO NOT BALANCE)");
  if (r.retries > 0) {
    std::fprintf(out, "  retries %lld (after UNAVAILABLE; each request counted once above)\n",
                 static_cast<long long>(r.retries));
  }
  for (const auto& [code, n] : r.errors) {
    auto first = r.first_error.find(code);
    std::fprintf(out, "    %s x%lld: %s\n", code.c_str(), static_cast<long long>(n),
                 first == r.first_error.end() ? "" : first->second.c_str());
  }
  std::fprintf(out, "  throughput  %.1f req/s  %.1f MB/s  %.2f GFLOP/s\n", r.rps(), MbPerS(r),
               Gflops(r));
  auto line = [&](const char* name, const LatencyHistogram& h) {
    std::fprintf(out, "  %-10s ms  p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f\n", name,
                 h.Percentile(50) / 1e3, h.Percentile(90) / 1e3, h.Percentile(99) / 1e3,
                 h.Percentile(99.9) / 1e3, h.max() / 1e3);
  };
  line("latency", r.latency);
  if (r.open_loop) {
    line("corrected", r.corrected);
    std::fprintf(
        out, "  behind schedule: %lld sends left more than 1 ms late%s\n",
        static_cast<long long>(r.behind_schedule),
        r.behind_schedule > 0 ? " (the client could not keep the rate: see corrected)" : "");
  }
  if (r.checked > 0 || r.mismatches > 0) {
    std::fprintf(out, "  verify: %lld checked, %lld mismatches%s%s\n",
                 static_cast<long long>(r.checked), static_cast<long long>(r.mismatches),
                 r.mismatches ? ": " : "", r.first_mismatch.c_str());
  }
  if (r.lost > 0 || r.unexpected > 0) {
    std::fprintf(out, "  LOST %lld responses, %lld unexpected: %s\n",
                 static_cast<long long>(r.lost), static_cast<long long>(r.unexpected),
                 r.first_lost.c_str());
  }
  std::fflush(out);
}

void PrintSweepTable(const LoadReport& report, FILE* out) {
  std::fprintf(out, "\n%-18s %8s %8s %10s %9s %9s %9s %9s %9s\n", "level", "ok", "errors", "req/s",
               "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms");
  for (const LoadResult& r : report.results) {
    const LatencyHistogram& h = r.open_loop ? r.corrected : r.latency;
    std::fprintf(out, "%-18s %8lld %8lld %10.1f %9.3f %9.3f %9.3f %9.3f %9.3f\n",
                 LevelName(r).c_str(), static_cast<long long>(r.ok),
                 static_cast<long long>(r.error_count()), r.rps(), h.Percentile(50) / 1e3,
                 h.Percentile(90) / 1e3, h.Percentile(99) / 1e3, h.Percentile(99.9) / 1e3,
                 h.max() / 1e3);
  }
  if (!report.results.empty() && report.results[0].open_loop) {
    std::fprintf(out, "(open loop: latencies from the scheduled send time)\n");
  }
}

absl::Status WriteJson(const LoadReport& report, const std::string& path) {
  nlohmann::json j;
  if (report.results.size() == 1) {
    j = ToJson(report, report.results[0]);
  } else {
    j = nlohmann::json::array();
    for (const LoadResult& r : report.results) j.push_back(ToJson(report, r));
  }
  return WriteFile(path, j.dump(2) + "\n");
}

absl::Status WriteCsv(const LoadReport& report, const std::string& path) {
  std::string csv =
      "mode,level,sent,ok,errors,lost,duration_s,rps,mb_per_s,gflops,p50_ms,p90_ms,p99_ms,"
      "p999_ms,max_ms,corrected_p50_ms,corrected_p99_ms,corrected_p999_ms,behind_schedule,"
      "checked,mismatches,retries\n";
  for (const LoadResult& r : report.results) {
    const LatencyHistogram& l = r.latency;
    const LatencyHistogram& c = r.corrected;
    absl::StrAppendFormat(
        &csv,
        "%s,%g,%d,%d,%d,%d,%.3f,%.3f,%.3f,%.3f,%.4f,%.4f,%.4f,%.4f,%.4f,%s,%s,%s,%s,%d,%d,%d\n",
        r.open_loop ? "open" : "closed", r.level, r.sent, r.ok, r.error_count(), r.lost,
        r.duration_s, r.rps(), MbPerS(r), Gflops(r), l.Percentile(50) / 1e3, l.Percentile(90) / 1e3,
        l.Percentile(99) / 1e3, l.Percentile(99.9) / 1e3, l.max() / 1e3,
        r.open_loop ? absl::StrFormat("%.4f", c.Percentile(50) / 1e3) : "",
        r.open_loop ? absl::StrFormat("%.4f", c.Percentile(99) / 1e3) : "",
        r.open_loop ? absl::StrFormat("%.4f", c.Percentile(99.9) / 1e3) : "",
        r.open_loop ? absl::StrCat(r.behind_schedule) : "", r.checked, r.mismatches, r.retries);
  }
  return WriteFile(path, csv);
}

absl::Status WriteHtml(const LoadReport& report, const std::string& path) {
  char date[64];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S UTC", std::gmtime(&now));
  std::string html = absl::StrCat(
      "<!doctype html>\n<html><head><meta charset='utf-8'><title>attention-client load</title>\n"
      "<style>body{font-family:sans-serif;margin:2em;max-width:1000px}"
      "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
      "text-align:right}th{background:#f4f4f4}td.l,th.l{text-align:left}"
      ".bad{color:#b00;font-weight:bold}</style></head><body>\n"
      "<h1>Load test</h1>\n<table>\n"
      "<tr><th class='l'>target</th><td class='l'>",
      Escape(report.target),
      "</td></tr>\n"
      "<tr><th class='l'>requests</th><td class='l'>",
      Escape(report.workload),
      "</td></tr>\n"
      "<tr><th class='l'>load</th><td class='l'>",
      Escape(report.settings),
      "</td></tr>\n"
      "<tr><th class='l'>request size</th><td class='l'>",
      absl::StrFormat("%.1f KiB", report.request_bytes / 1024),
      "</td></tr>\n"
      "<tr><th class='l'>date</th><td class='l'>",
      date, "</td></tr>\n</table>\n");
  html +=
      "<h2>Results</h2>\n<table><tr><th class='l'>level</th><th>sent</th><th>ok</th>"
      "<th>errors</th><th>req/s</th><th>MB/s</th><th>GFLOP/s</th><th>p50 ms</th>"
      "<th>p90 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>max ms</th><th>verify</th></tr>\n";
  for (const LoadResult& r : report.results) {
    for (int corrected = 0; corrected < (r.open_loop ? 2 : 1); ++corrected) {
      const LatencyHistogram& h = corrected ? r.corrected : r.latency;
      const bool first = corrected == 0;
      absl::StrAppendFormat(
          &html,
          "<tr><td class='l'>%s%s</td><td>%s</td><td>%s</td><td%s>%s</td><td>%s</td><td>%s</td>"
          "<td>%s</td><td>%.3f</td><td>%.3f</td><td>%.3f</td><td>%.3f</td><td>%.3f</td>"
          "<td%s>%s</td></tr>\n",
          Escape(LevelName(r)), corrected ? " (corrected: from the scheduled time)" : "",
          first ? absl::StrCat(r.sent) : "", first ? absl::StrCat(r.ok) : "",
          first && r.error_count() ? " class='bad'" : "",
          first ? absl::StrCat(r.error_count()) : "", first ? absl::StrFormat("%.1f", r.rps()) : "",
          first ? absl::StrFormat("%.1f", MbPerS(r)) : "",
          first ? absl::StrFormat("%.2f", Gflops(r)) : "", h.Percentile(50) / 1e3,
          h.Percentile(90) / 1e3, h.Percentile(99) / 1e3, h.Percentile(99.9) / 1e3, h.max() / 1e3,
          first && (r.mismatches || r.lost) ? " class='bad'" : "",
          first ? (r.checked || r.mismatches
                       ? absl::StrCat(r.checked, " checked, ", r.mismatches, " mismatches")
                       : std::string("-"))
                : "");
    }
  }
  html += "</table>\n";
  for (const LoadResult& r : report.results) {
    for (const auto& [code, n] : r.errors) {
      auto first = r.first_error.find(code);
      absl::StrAppend(&html, "<p class='bad'>", Escape(LevelName(r)), ": ", Escape(code), " x", n,
                      ": ", Escape(first == r.first_error.end() ? "" : first->second), "</p>\n");
    }
    if (r.behind_schedule > 0) {
      absl::StrAppend(&html, "<p>", Escape(LevelName(r)), ": ", r.behind_schedule,
                      " sends left more than 1 ms after their scheduled time.</p>\n");
    }
    if (!r.first_mismatch.empty()) {
      absl::StrAppend(&html, "<p class='bad'>", Escape(LevelName(r)),
                      ": first mismatch: ", Escape(r.first_mismatch), "</p>\n");
    }
  }
  html += "<h2>Latency by percentile</h2>\n" + PercentilePlot(report) +
          "<p>Solid: latency from the actual send. Dashed (open loop): from the time the request "
          "was due, which counts the time a late send waited (no coordinated omission).</p>\n"
          "</body></html>\n";
  return WriteFile(path, html);
}

}  // namespace client
}  // namespace attention
