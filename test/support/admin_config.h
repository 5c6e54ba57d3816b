// A small lb configuration for admin API tests: one TCP listener "web" in
// front of pool "web" with one backend, and an [admin] table on 127.0.0.1:0.
//
// Thread rules: a pure function.
#pragma once

#include <string>

namespace lb::test {

// `admin_extra` is appended to the [admin] table (allow, api_token_file),
// `health_type` is the pool's health_check type, `backend_id` the backend's id.
std::string one_backend_config(const std::string& backend_address, const std::string& admin_extra = "",
                               const std::string& health_type = "none", const std::string& backend_id = "b");

}  // namespace lb::test
