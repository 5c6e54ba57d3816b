#include "test/support/metrics.h"

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "test/support/http_client.h"

namespace lb::test {

namespace {

bool name_char(char c, bool first) {
  return std::isalpha(static_cast<unsigned char>(c)) || c == '_' || c == ':' ||
         (!first && std::isdigit(static_cast<unsigned char>(c)));
}

bool includes(const Labels& labels, const Labels& subset) {
  for (const auto& [k, v] : subset) {
    auto it = labels.find(k);
    if (it == labels.end() || it->second != v) return false;
  }
  return true;
}

// Parses `name{k="v",...} value [timestamp]`; false when malformed.
bool parse_sample(const std::string& line, MetricSample* out) {
  size_t i = 0;
  while (i < line.size() && name_char(line[i], i == 0)) ++i;
  if (i == 0) return false;
  out->name = line.substr(0, i);
  if (i < line.size() && line[i] == '{') {
    ++i;
    for (;;) {
      while (i < line.size() && line[i] == ' ') ++i;
      if (i < line.size() && line[i] == '}') {
        ++i;
        break;
      }
      size_t k = i;
      while (i < line.size() && name_char(line[i], i == k)) ++i;
      if (i == k || i + 1 >= line.size() || line[i] != '=' || line[i + 1] != '"') return false;
      std::string key = line.substr(k, i - k);
      i += 2;
      std::string value;
      for (;;) {
        if (i >= line.size()) return false;
        char c = line[i++];
        if (c == '"') break;
        if (c == '\\') {
          if (i >= line.size()) return false;
          char e = line[i++];
          value.push_back(e == 'n' ? '\n' : e);
        } else {
          value.push_back(c);
        }
      }
      if (out->labels.count(key)) return false;  // duplicate label
      out->labels[key] = value;
      if (i < line.size() && line[i] == ',') ++i;
    }
  }
  if (i >= line.size() || line[i] != ' ') return false;
  while (i < line.size() && line[i] == ' ') ++i;
  std::string rest = line.substr(i);
  std::string value = rest.substr(0, rest.find(' '));
  if (value == "+Inf") {
    out->value = HUGE_VAL;
  } else if (value == "-Inf") {
    out->value = -HUGE_VAL;
  } else if (value == "NaN") {
    out->value = std::strtod("nan", nullptr);
  } else {
    char* end = nullptr;
    out->value = std::strtod(value.c_str(), &end);
    if (value.empty() || *end != '\0') return false;
  }
  return true;
}

}  // namespace

Metrics Metrics::parse(const std::string& text) {
  Metrics m;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    if (line[0] == '#') {
      std::istringstream words(line);
      std::string hash, kind, name, type;
      words >> hash >> kind >> name >> type;
      if (kind == "TYPE") m.types_[name] = type;
      continue;
    }
    MetricSample s;
    if (parse_sample(line, &s)) {
      m.samples_.push_back(std::move(s));
    } else {
      m.errors_.push_back(line);
    }
  }
  return m;
}

std::optional<double> Metrics::value(const std::string& name, const Labels& labels) const {
  for (const auto& s : samples_) {
    if (s.name == name && s.labels == labels) return s.value;
  }
  return std::nullopt;
}

std::optional<double> Metrics::sum(const std::string& name, const Labels& subset) const {
  std::optional<double> total;
  for (const auto& s : samples_) {
    if (s.name == name && includes(s.labels, subset)) total = total.value_or(0) + s.value;
  }
  return total;
}

std::vector<MetricSample> Metrics::find(const std::string& name, const Labels& subset) const {
  std::vector<MetricSample> out;
  for (const auto& s : samples_) {
    if (s.name == name && includes(s.labels, subset)) out.push_back(s);
  }
  return out;
}

bool Metrics::has_family(const std::string& name) const {
  if (types_.count(name)) return true;
  for (const auto& s : samples_) {
    if (s.name == name) return true;
  }
  return false;
}

std::optional<std::string> Metrics::type(const std::string& name) const {
  auto it = types_.find(name);
  if (it == types_.end()) return std::nullopt;
  return it->second;
}

std::string series_name(const MetricSample& sample) {
  if (sample.labels.empty()) return sample.name;
  std::string out = sample.name + "{";
  for (const auto& [k, v] : sample.labels) out += (out.back() == '{' ? "" : ",") + k + "=\"" + v + "\"";
  return out + "}";
}

std::vector<CounterSeries> counters_across(const Metrics& before, const Metrics& after) {
  std::vector<CounterSeries> out;
  for (const auto& s : before.samples()) {
    if (before.type(s.name) != "counter") continue;
    out.push_back({series_name(s), s.value, after.value(s.name, s.labels)});
  }
  return out;
}

std::string to_string(const CounterSeries& counter) {
  std::ostringstream out;
  out << counter.series << " went from " << counter.before << " to ";
  if (counter.after)
    out << *counter.after;
  else
    out << "missing";
  return out.str();
}

std::optional<Metrics> fetch_metrics(uint16_t admin_port, Deadline deadline, const std::string& host) {
  HttpResponse r = http_get(admin_port, "/metrics", deadline, host);
  if (r.status != 200) return std::nullopt;
  return Metrics::parse(r.body);
}

}  // namespace lb::test
