// process_* metrics read from /proc/self: values a scrape can trust.
#include "lb/process_stats.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <vector>

using lb::app::read_process_stats;

TEST_CASE("process stats: sane values that follow the process", "[process]") {
  auto before = read_process_stats();
  REQUIRE(before);
  const double now =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  // Started in the past, not long ago (a test binary lives minutes at most;
  // a day is generous for a loaded machine and a wrong epoch is years off).
  CHECK(before->start_time_seconds <= now + 1);
  CHECK(before->start_time_seconds > now - 86400);
  CHECK(before->resident_bytes > 1024 * 1024);
  CHECK(before->open_fds >= 3);  // stdin, stdout, stderr
  rlimit rl{};
  REQUIRE(getrlimit(RLIMIT_NOFILE, &rl) == 0);
  CHECK(before->max_fds == rl.rlim_cur);
  CHECK(before->cpu_seconds >= 0);

  // Ten more descriptors show up as ten more.
  std::vector<int> fds;
  for (int i = 0; i < 10; ++i) fds.push_back(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  auto more = read_process_stats();
  REQUIRE(more);
  CHECK(more->open_fds == before->open_fds + 10);
  for (int fd : fds) ::close(fd);

  // CPU time only grows; burn some to see it move.
  volatile uint64_t x = 0;
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(300);
  while (std::chrono::steady_clock::now() < until) x = x + 1;
  auto after = read_process_stats();
  REQUIRE(after);
  CHECK(after->cpu_seconds > before->cpu_seconds);
  CHECK(after->start_time_seconds == Approx(before->start_time_seconds).margin(0.02));
}
