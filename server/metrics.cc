#include "server/metrics.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <sstream>

namespace attention {
namespace server {
namespace {

// Backslash and newline as \\ and \n; double quotes as \" too when `quotes`.
std::string Escape(const std::string& text, bool quotes) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '"' && quotes) {
      out += "\\\"";
    } else {
      out += c;
    }
  }
  return out;
}

void AtomicAdd(std::atomic<double>* value, double by) {
  double old = value->load();
  while (!value->compare_exchange_weak(old, old + by)) {
  }
}

void WriteSample(const std::string& name, const std::string& labels, double value,
                 std::string* out) {
  out->append(name).append(labels).append(" ").append(FormatValue(value)).append("\n");
}

// The labels of a child with one more label appended (a histogram's "le").
std::string WithLabel(const std::string& labels, const std::string& name,
                      const std::string& value) {
  const std::string pair = name + "=\"" + EscapeLabelValue(value) + "\"";
  if (labels.empty()) return "{" + pair + "}";
  return labels.substr(0, labels.size() - 1) + "," + pair + "}";
}

// A metric without labels whose value is read at each exposition.
class ValueFamily final : public FamilyBase {
 public:
  ValueFamily(std::string name, std::string help, const char* type, std::function<double()> read)
      : FamilyBase(std::move(name), std::move(help), type, {}), read_(std::move(read)) {}

 private:
  void WriteSamples(std::string* out) const override { WriteSample(name_, "", read_(), out); }
  const std::function<double()> read_;
};

// Fields of /proc/self/stat after the command name (field 3 onwards), which
// may itself hold spaces and parentheses.
std::vector<std::string> ProcSelfStat() {
  std::ifstream in("/proc/self/stat");
  const std::string line((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t close = line.rfind(')');
  std::vector<std::string> fields;
  if (close == std::string::npos) return fields;
  std::istringstream rest(line.substr(close + 1));
  for (std::string f; rest >> f;) fields.push_back(f);
  return fields;
}

// Field `n` of /proc/self/stat as man proc numbers them (n >= 3), or 0.
double StatField(int n) {
  const std::vector<std::string> fields = ProcSelfStat();
  const size_t i = static_cast<size_t>(n - 3);
  return i < fields.size() ? std::strtod(fields[i].c_str(), nullptr) : 0;
}

double BootTimeSeconds() {
  std::ifstream in("/proc/stat");
  for (std::string key; in >> key;) {
    if (key == "btime") {
      double t = 0;
      in >> t;
      return t;
    }
    in.ignore(1 << 20, '\n');
  }
  return 0;
}

double OpenFds() {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return 0;
  int n = 0;
  while (const dirent* e = readdir(dir)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(dir);
  return n - 1;  // the directory's own descriptor
}

}  // namespace

void SampleValue::Inc(double by) { AtomicAdd(&value_, by); }
void SampleValue::Write(const std::string& name, const std::string& labels,
                        std::string* out) const {
  WriteSample(name, labels, value(), out);
}

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::Observe(double value) {
  // The first bound >= value: buckets are "less than or equal".
  const size_t bucket = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  absl::MutexLock lock(&mu_);
  ++counts_[bucket];
  sum_ += value;
}

Histogram::Snapshot Histogram::Read() const {
  absl::MutexLock lock(&mu_);
  Snapshot snapshot;
  uint64_t total = 0;
  for (uint64_t c : counts_) snapshot.cumulative.push_back(total += c);
  snapshot.sum = sum_;
  return snapshot;
}

void Histogram::Write(const std::string& name, const std::string& labels, std::string* out) const {
  const Snapshot snapshot = Read();
  const std::vector<uint64_t>& cumulative = snapshot.cumulative;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    WriteSample(name + "_bucket", WithLabel(labels, "le", FormatValue(bounds_[i])),
                static_cast<double>(cumulative[i]), out);
  }
  WriteSample(name + "_bucket", WithLabel(labels, "le", "+Inf"),
              static_cast<double>(cumulative.back()), out);
  WriteSample(name + "_sum", labels, snapshot.sum, out);
  WriteSample(name + "_count", labels, static_cast<double>(cumulative.back()), out);
}

std::vector<double> LatencyBuckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
          0.1,    0.25,    0.5,    1,     2.5,    5,     10,   30,    60};
}

std::string EscapeLabelValue(const std::string& value) { return Escape(value, true); }
std::string EscapeHelp(const std::string& help) { return Escape(help, false); }

std::string FormatValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char buf[32];
  if (value == std::floor(value) && std::fabs(value) < 1e15) {
    std::snprintf(buf, sizeof(buf), "%.0f", value);
  } else {
    std::snprintf(buf, sizeof(buf), "%.17g", value);
    // The shortest spelling that reads back as the same double (0.1, not 0.10000000000000001).
    for (int digits = 1; digits < 17; ++digits) {
      char shorter[32];
      std::snprintf(shorter, sizeof(shorter), "%.*g", digits, value);
      if (std::strtod(shorter, nullptr) == value) return shorter;
    }
  }
  return buf;
}

FamilyBase::FamilyBase(std::string name, std::string help, const char* type,
                       std::vector<std::string> label_names)
    : name_(std::move(name)),
      help_(std::move(help)),
      type_(type),
      label_names_(std::move(label_names)) {}

void FamilyBase::Write(std::string* out) const {
  out->append("# HELP ").append(name_).append(" ").append(EscapeHelp(help_)).append("\n");
  out->append("# TYPE ").append(name_).append(" ").append(type_).append("\n");
  WriteSamples(out);
}

std::string FamilyBase::LabelString(const std::vector<std::string>& values) const {
  if (label_names_.empty()) return "";
  std::string out = "{";
  for (size_t i = 0; i < label_names_.size(); ++i) {
    if (i > 0) out += ",";
    out += label_names_[i] + "=\"" + EscapeLabelValue(i < values.size() ? values[i] : "") + "\"";
  }
  return out + "}";
}

template <typename Metric>
Family<Metric>& Registry::Add(const std::string& name, const std::string& help, const char* type,
                              std::vector<std::string> labels,
                              std::function<std::unique_ptr<Metric>()> make) {
  auto family =
      std::make_unique<Family<Metric>>(name, help, type, std::move(labels), std::move(make));
  Family<Metric>& ref = *family;
  absl::MutexLock lock(&mu_);
  families_.push_back(std::move(family));
  return ref;
}

Family<Counter>& Registry::AddCounter(const std::string& name, const std::string& help,
                                      std::vector<std::string> labels) {
  return Add<Counter>(name, help, "counter", std::move(labels),
                      [] { return std::make_unique<Counter>(); });
}

Family<Gauge>& Registry::AddGauge(const std::string& name, const std::string& help,
                                  std::vector<std::string> labels) {
  return Add<Gauge>(name, help, "gauge", std::move(labels),
                    [] { return std::make_unique<Gauge>(); });
}

Family<Histogram>& Registry::AddHistogram(const std::string& name, const std::string& help,
                                          std::vector<std::string> labels,
                                          std::vector<double> bounds) {
  return Add<Histogram>(name, help, "histogram", std::move(labels), [bounds = std::move(bounds)] {
    return std::make_unique<Histogram>(bounds);
  });
}

void Registry::AddCallback(const std::string& name, const std::string& help, const char* type,
                           std::function<double()> read) {
  absl::MutexLock lock(&mu_);
  families_.push_back(std::make_unique<ValueFamily>(name, help, type, std::move(read)));
}

std::string Registry::Exposition() const {
  absl::MutexLock lock(&mu_);
  std::string out;
  for (const auto& family : families_) family->Write(&out);
  return out;
}

void AddProcessMetrics(Registry* registry) {
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  // man proc: utime 14, stime 15, starttime 22 (ticks since boot), vsize 23, rss 24 (pages).
  registry->AddCallback("process_cpu_seconds_total",
                        "Total user and system CPU time spent in seconds.", "counter",
                        [ticks] { return (StatField(14) + StatField(15)) / ticks; });
  registry->AddCallback("process_resident_memory_bytes", "Resident memory size in bytes.", "gauge",
                        [page] { return StatField(24) * page; });
  registry->AddCallback("process_virtual_memory_bytes", "Virtual memory size in bytes.", "gauge",
                        [] { return StatField(23); });
  const double start = BootTimeSeconds() + StatField(22) / ticks;
  registry->AddCallback("process_start_time_seconds",
                        "Start time of the process since unix epoch in seconds.", "gauge",
                        [start] { return start; });
  registry->AddCallback("process_open_fds", "Number of open file descriptors.", "gauge", OpenFds);
  registry->AddCallback("process_max_fds", "Maximum number of open file descriptors.", "gauge", [] {
    rlimit limit{};
    getrlimit(RLIMIT_NOFILE, &limit);
    return limit.rlim_cur == RLIM_INFINITY ? -1.0 : static_cast<double>(limit.rlim_cur);
  });
}

}  // namespace server
}  // namespace attention
