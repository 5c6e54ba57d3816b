#include "test/support/notify_socket.h"

namespace lb::test {

std::vector<std::string> split_lines(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    size_t nl = s.find('\n', start);
    std::string line = s.substr(start, nl == std::string::npos ? std::string::npos : nl - start);
    if (!line.empty()) out.push_back(line);
    if (nl == std::string::npos) break;
    start = nl + 1;
  }
  return out;
}

bool has_line(const std::string& datagram, const std::string& line) {
  for (const auto& l : split_lines(datagram))
    if (l == line) return true;
  return false;
}

}  // namespace lb::test
