// Parsing the Prometheus text exposition format lb serves on /metrics, so
// tests can assert on values instead of on substrings.
//
// Thread rules: plain values; no shared state.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "test/support/deadline.h"

namespace lb::test {

using Labels = std::map<std::string, std::string>;

struct MetricSample {
  std::string name;
  Labels labels;
  double value = 0;
};

class Metrics {
 public:
  // Parses exposition text; lines that are not valid samples or comments
  // are recorded in errors() (a test may assert there are none).
  static Metrics parse(const std::string& text);

  const std::vector<MetricSample>& samples() const { return samples_; }
  const std::vector<std::string>& errors() const { return errors_; }

  // The sample with exactly this name and label set.
  std::optional<double> value(const std::string& name, const Labels& labels = {}) const;
  // Sum over samples of `name` whose labels include every pair of `subset`;
  // std::nullopt when none matches.
  std::optional<double> sum(const std::string& name, const Labels& subset = {}) const;
  // Samples of `name` whose labels include `subset`.
  std::vector<MetricSample> find(const std::string& name, const Labels& subset = {}) const;
  // "# TYPE name T" seen, or at least one sample of `name`.
  bool has_family(const std::string& name) const;
  // The type from "# TYPE" ("counter", "gauge", ...).
  std::optional<std::string> type(const std::string& name) const;

 private:
  std::vector<MetricSample> samples_;
  std::map<std::string, std::string> types_;
  std::vector<std::string> errors_;
};

// A sample's series as the exposition writes it: name{k="v",...} (no braces
// without labels).
std::string series_name(const MetricSample& sample);

// A counter series (a sample of a family whose TYPE is counter) in two
// scrapes: its value in the first, and in the second (none: missing there).
struct CounterSeries {
  std::string series;
  double before = 0;
  std::optional<double> after;
};
// Every counter series of `before`, each with its value in `after`.
std::vector<CounterSeries> counters_across(const Metrics& before, const Metrics& after);
// "SERIES went from BEFORE to AFTER" ("... to missing"), for a message.
std::string to_string(const CounterSeries& counter);

// GET /metrics from an admin port and parse it; std::nullopt unless the
// answer is 200.
std::optional<Metrics> fetch_metrics(uint16_t admin_port, Deadline deadline = in(seconds(5)),
                                     const std::string& host = "127.0.0.1");

}  // namespace lb::test
