// A private temporary directory, removed with its contents on destruction.
//
// Thread rules: plain value owned by one thread; not copyable.
#pragma once

#include <string>
#include <string_view>

namespace lb::test {

class TempDir {
 public:
  // Creates $TMPDIR/lb-test-XXXXXX (or /tmp/...). path() is empty on failure.
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  // Writes (truncating) `name` inside the directory; returns its full path,
  // or an empty string on failure.
  std::string write_file(const std::string& name, std::string_view content) const;

 private:
  std::string path_;
};

}  // namespace lb::test
