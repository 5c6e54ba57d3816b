#include "lb/ctl_status.h"

#include <fmt/format.h>

#include <vector>

namespace lb::app::ctl {

namespace {

// Columns padded to their widest cell; the last column is not padded.
std::string table(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  for (const auto& row : rows)
    for (size_t i = 0; i < row.size(); ++i) {
      if (width.size() <= i) width.push_back(0);
      width[i] = std::max(width[i], row[i].size());
    }
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line += std::string(width[i] - row[i].size() + 2, ' ');
    }
    out += line + "\n";
  }
  return out;
}

// obj[key], or null (const operator[] on a missing key is undefined).
const json& field(const json& obj, const char* key) {
  static const json kNull;
  if (!obj.is_object()) return kNull;
  auto it = obj.find(key);
  return it == obj.end() ? kNull : *it;
}

std::string num(const json& v) {
  if (v.is_null()) return "-";
  if (v.is_string()) return v.get<std::string>();
  return v.dump();
}

std::string rate(uint64_t before, uint64_t after, double seconds) {
  if (after < before || seconds <= 0) return "-";
  return fmt::format("{:.1f}", static_cast<double>(after - before) / seconds);
}

std::string human_bytes_rate(uint64_t before, uint64_t after, double seconds) {
  if (after < before || seconds <= 0) return "-";
  double v = static_cast<double>(after - before) / seconds;
  const char* units[] = {"B", "KiB", "MiB", "GiB"};
  int u = 0;
  while (v >= 1024 && u < 3) {
    v /= 1024;
    ++u;
  }
  return fmt::format("{:.1f} {}/s", v, units[u]);
}

std::string last_check_text(const json& b) {
  const json& c = field(b, "last_check");
  if (!field(c, "result").is_string()) return "-";
  std::string out = field(c, "result").get<std::string>();
  if (field(c, "age_ms").is_number())
    out += fmt::format(" {:.1f}s ago", field(c, "age_ms").get<double>() / 1000.0);
  if (field(c, "detail").is_string() && out.rfind("fail", 0) == 0)
    out += " (" + field(c, "detail").get<std::string>() + ")";
  return out;
}

}  // namespace

std::string render_status(const json& doc, const json* prev, double seconds) {
  std::string out;
  out += fmt::format("lb {}  generation {}\n\n", num(doc.value("version", json())),
                     num(doc.value("generation", json())));

  auto find_by = [](const json& arr, const char* key, const json& val) -> const json* {
    if (!arr.is_array()) return nullptr;
    for (const auto& e : arr)
      if (e.is_object() && e.contains(key) && e[key] == val) return &e;
    return nullptr;
  };

  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> head = {"LISTENER", "PROTO", "BIND", "POOL", "ACTIVE", "TOTAL", "REJECTED"};
  if (prev) head.push_back("CONN/S");
  rows.push_back(head);
  for (const auto& l : doc.value("listeners", json::array())) {
    std::string binds;
    for (const auto& b : l.value("bind", json::array())) binds += (binds.empty() ? "" : ",") + num(b);
    uint64_t rejected = 0;
    if (field(l, "rejected").is_object())
      for (const auto& [k, v] : field(l, "rejected").items())
        rejected += v.is_number_unsigned() ? v.get<uint64_t>() : 0;
    std::vector<std::string> row = {
        num(l.value("name", json())), num(l.value("protocol", json())), binds,
        num(l.value("pool", json())), num(l.value("active", json())),   num(l.value("total", json())),
        std::to_string(rejected)};
    if (prev) {
      const json* pl = find_by(field(*prev, "listeners"), "name", field(l, "name"));
      row.push_back(pl ? rate(json_u64(*pl, "total"), json_u64(l, "total"), seconds) : "-");
    }
    rows.push_back(std::move(row));
  }
  out += table(rows);

  for (const auto& p : doc.value("pools", json::array())) {
    out += fmt::format("\npool {} ({}", num(p.value("name", json())), num(p.value("selector", json())));
    if (field(p, "table_digest").is_string()) out += ", table " + field(p, "table_digest").get<std::string>();
    out += ")\n";
    rows.clear();
    head = {"BACKEND", "ADDRESS", "HEALTH", "ADMIN", "WEIGHT", "ACTIVE", "TOTAL", "FAILED", "LAST CHECK"};
    if (prev) {
      head.insert(head.end() - 1, "CONN/S");
      head.insert(head.end() - 1, "BYTES/S");
    }
    rows.push_back(head);
    const json* pp = prev ? find_by(field(*prev, "pools"), "name", field(p, "name")) : nullptr;
    for (const auto& b : p.value("backends", json::array())) {
      std::string weight = num(b.value("weight", json()));
      // During slow start the weight in force is lower than the configured one.
      if (b.contains("effective_weight") && field(b, "effective_weight") != field(b, "weight"))
        weight += " (now " + num(field(b, "effective_weight")) + ")";
      std::string health = num(b.value("health", json()));
      if (b.value("backup", false)) health += " (backup)";
      std::vector<std::string> row = {num(b.value("id", json())),
                                      num(b.value("address", json())),
                                      health,
                                      num(b.value("admin_state", json())),
                                      weight,
                                      num(b.value("active", json())),
                                      num(b.value("total", json())),
                                      num(b.value("connect_failures", json()))};
      if (prev) {
        const json* pb = pp ? find_by(field(*pp, "backends"), "id", field(b, "id")) : nullptr;
        row.push_back(pb ? rate(json_u64(*pb, "total"), json_u64(b, "total"), seconds) : "-");
        row.push_back(
            pb ? human_bytes_rate(json_u64(*pb, "bytes_to_backend") + json_u64(*pb, "bytes_to_client"),
                                  json_u64(b, "bytes_to_backend") + json_u64(b, "bytes_to_client"), seconds)
               : "-");
      }
      row.push_back(last_check_text(b));
      rows.push_back(std::move(row));
    }
    out += table(rows);
  }
  return out;
}

uint64_t json_u64(const json& obj, const char* key) {
  const json& v = field(obj, key);
  return v.is_number_unsigned() ? v.get<uint64_t>() : 0;
}

}  // namespace lb::app::ctl
