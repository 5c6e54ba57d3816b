// `lb ctl status`: the API's status JSON as tables for people.
//
// Thread: pure functions.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

namespace lb::app::ctl {

using json = nlohmann::ordered_json;

// The listeners table, then one table per pool. `prev` (an earlier sample,
// `seconds` before, or null) adds per-second rate columns.
std::string render_status(const json& doc, const json* prev, double seconds);

// obj[key] as an unsigned integer; 0 when missing or not one.
uint64_t json_u64(const json& obj, const char* key);

}  // namespace lb::app::ctl
