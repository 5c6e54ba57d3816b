#include "test/support/admin_config.h"

#include "test/support/config_builder.h"

namespace lb::test {

std::string one_backend_config(const std::string& backend_address, const std::string& admin_extra,
                               const std::string& health_type, const std::string& backend_id) {
  return ConfigBuilder()
      .global(1, true, admin_extra)
      .listener("web", "web")
      .pool("web", health_type, "", R"(interval = "500ms")")
      .backend(backend_address, backend_id);
}

}  // namespace lb::test
