#include "test/support/temp_dir.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <vector>

namespace lb::test {

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string pattern = std::string(base && *base ? base : "/tmp") + "/lb-test-XXXXXX";
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data())) path_ = buf.data();
}

TempDir::~TempDir() {
  if (!path_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
}

std::string TempDir::write_file(const std::string& name, std::string_view content) const {
  if (path_.empty()) return {};
  std::string full = path_ + "/" + name;
  std::ofstream f(full, std::ios::binary | std::ios::trunc);
  f.write(content.data(), static_cast<std::streamsize>(content.size()));
  f.close();
  return f ? full : std::string();
}

}  // namespace lb::test
