#include "test/support/admin_config.h"

#include <fmt/format.h>

namespace lb::test {

std::string one_backend_config(const std::string& backend_address, const std::string& admin_extra,
                               const std::string& health_type, const std::string& backend_id) {
  return fmt::format(R"([global]
workers = 1
access_log = "off"

[admin]
listen = "127.0.0.1:0"
{}

[[listener]]
name = "web"
bind = "127.0.0.1:0"
pool = "web"

[[pool]]
name = "web"
[pool.health_check]
type = "{}"
interval = "500ms"
[[pool.backend]]
address = "{}"
id = "{}"
)",
                     admin_extra, health_type, backend_address, backend_id);
}

}  // namespace lb::test
