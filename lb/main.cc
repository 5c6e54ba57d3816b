// lb: command line, then hand over to Server.
#include <fcntl.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <string>
#include <vector>

#include "conf/load.h"
#include "core/handover/state.h"
#include "core/log.h"
#include "core/tls/settings.h"
#include "lb/ctl.h"
#include "lb/server.h"

#ifndef LB_BUILD_NOTE
#define LB_BUILD_NOTE ""  // lb_alt (a test build) says what it is
#endif

namespace {

constexpr const char* kDefaultConfig = "/etc/lb/lb.toml";

void usage(FILE* out) {
  std::fprintf(out,
               "usage: lb [--config PATH] [--check]\n"
               "       lb ctl [-c PATH] [--admin ADDR] [--token-file PATH] COMMAND   (lb ctl --help)\n"
               "       lb --version | --help\n"
               "\n"
               "  -c, --config PATH   configuration file (default %s)\n"
               "      --check         validate the configuration and exit\n"
               "      --version       print the version and exit\n"
               "  -h, --help          this text\n"
               "\n"
               "signals: SIGHUP reload, SIGTERM/SIGINT graceful stop, SIGUSR1 reopen the access log,\n"
               "         SIGUSR2 upgrade in place to the program now on disk (docs/upgrade.md)\n",
               kDefaultConfig);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && std::strcmp(argv[1], "ctl") == 0)
    return lb::app::run_ctl(std::vector<std::string>(argv + 2, argv + argc));
  std::string path = kDefaultConfig;
  bool check = false;
  int handover_fd = -1;  // --handover-fd N: taking over from a running lb (docs/upgrade.md)
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--config" || a == "-c") {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "lb: %s needs a path\n", a.c_str());
        usage(stderr);
        return 2;
      }
      path = argv[++i];
    } else if (a.rfind("--config=", 0) == 0) {
      path = a.substr(9);
    } else if (a == "--check") {
      check = true;
    } else if (a == "--handover-version") {
      // Hidden: asked by a running lb before it upgrades to this program.
      std::printf("%s\n", lb::core::handover::version_line().c_str());
      return 0;
    } else if (a == "--handover-fd") {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "lb: %s needs a descriptor number\n", a.c_str());
        return 2;
      }
      handover_fd = std::atoi(argv[++i]);
      if (handover_fd < 3) {
        std::fprintf(stderr, "lb: --handover-fd: not a descriptor above 2\n");
        return 2;
      }
    } else if (a == "--version") {
      std::printf("lb %s%s\n", LB_VERSION, LB_BUILD_NOTE);
      return 0;
    } else if (a == "--help" || a == "-h") {
      usage(stdout);
      return 0;
    } else {
      std::fprintf(stderr, "lb: unknown argument '%s'\n", a.c_str());
      usage(stderr);
      return 2;
    }
  }

  if (handover_fd >= 0) ::fcntl(handover_fd, F_SETFD, FD_CLOEXEC);  // nothing lb starts inherits it
  auto res = lb::conf::load_file(path);
  if (!res.ok()) {
    for (const auto& d : res.errors) std::fprintf(stderr, "%s\n", d.str().c_str());
    return 1;
  }
  if (check) {
    // Certificates, keys and CA files are read as a reload would read them.
    lb::tls::Contexts contexts;
    std::vector<std::string> errors;
    if (!lb::tls::load_contexts(*res.config, std::make_shared<lb::tls::TicketKeyStore>(), &contexts,
                                &errors)) {
      for (const auto& e : errors) std::fprintf(stderr, "%s: error: %s\n", path.c_str(), e.c_str());
      return 1;
    }
    bool failed = false;
    for (const auto& f :
         lb::tls::check_contexts(*res.config, contexts, static_cast<int64_t>(std::time(nullptr)))) {
      std::fprintf(stderr, "%s: %s: %s\n", path.c_str(), f.error ? "error" : "warning", f.message.c_str());
      failed = failed || f.error;
    }
    if (failed) return 1;
    std::printf("%s: configuration OK\n", path.c_str());
    return 0;
  }
  lb::app::Server server(std::move(*res.config));
  if (handover_fd >= 0) server.set_handover_fd(handover_fd);
#ifdef LB_ABORT_AFTER_TAKEOVER
  server.abort_after_takeover();  // lb_crash, a test build
#endif
  return server.run();
}
