// Access log: one JSON object per line when a TCP connection closes or a UDP
// session ends.
//
// Workers never touch the disk: write() formats the line into the calling
// worker's own buffer (a mutex per worker, contended only when the writer
// thread takes the buffer); a writer thread flushes all buffers every 100 ms
// or sooner when one fills up. If the destination stalls, buffers are capped
// and excess lines are dropped and counted rather than blocking a worker.
// reopen() (SIGUSR1) makes the writer reopen a file destination (logrotate).
// A reload may move the log elsewhere (retarget) or turn it off and on
// (set_enabled): the object itself lives as long as the workers.
#pragma once

#include <sys/socket.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace lb::core {

struct AccessRecord {
  std::string_view listener;
  const sockaddr* client = nullptr;
  std::string_view backend;  // empty when none was chosen
  uint64_t duration_ms = 0;
  uint64_t bytes_to_backend = 0;
  uint64_t bytes_to_client = 0;
  const char* result = "ok";  // ok | connect_failed | timeout | reset | refused
  // TLS listeners only (tls set): each field is null in the line when empty.
  // Passthrough logs what the ClientHello offered: the highest version and
  // the ALPN protocols, comma separated; terminate logs what was negotiated
  // ("TLSv1.3", the chosen protocol), empty before a finished handshake.
  // Both log the server name (terminate: the one the handshake accepted) and
  // the JA4 of the ClientHello.
  bool tls = false;
  std::string_view sni;
  std::string_view tls_version;
  std::string_view alpn;
  std::string_view ja4;
};

// Appends the record's JSON line (with '\n') to out.
void format_access_record(const AccessRecord& r, std::string& out);
// Appends s as a JSON string literal body (no quotes), escaped.
void json_escape(std::string_view s, std::string& out);

class AccessLog {
 public:
  // `target` is "stderr" or a file path (opened for append, created 0640).
  AccessLog(std::string target, unsigned workers);
  ~AccessLog();  // flushes and stops the writer
  AccessLog(const AccessLog&) = delete;
  AccessLog& operator=(const AccessLog&) = delete;

  // False if the file could not be opened (error in *err). With `fd` >= 0
  // the log writes there instead (and owns it): the descriptor a previous
  // program handed over (upgrade in place), the same open file even if the
  // path was rotated meanwhile.
  bool open(std::string* err, int fd = -1);
  // A copy of the descriptor the writer uses now, for an upgrade to hand
  // over (close-on-exec; the caller owns it); -1 for stderr or none.
  // Any thread.
  int dup_fd();
  void write(unsigned worker, const AccessRecord& r);
  void reopen();
  uint64_t dropped() const { return dropped_.load(std::memory_order_relaxed); }

  // For a reload, which opens the new destination before it commits: the
  // descriptor for `target` ("stderr" or a path), or -1 with *err set.
  static int open_target(const std::string& target, std::string* err);
  // Writes go to `target` through `fd` (from open_target(); the log owns it
  // from now on); lines already buffered still go to the old destination.
  // Any thread but the writer's.
  void retarget(std::string target, int fd);
  // Off: records are dropped unformatted (access_log = "off" by reload).
  void set_enabled(bool on) { enabled_.store(on, std::memory_order_relaxed); }
  // Whether write() formats records now: fields only the log uses (a TLS
  // session's JA4) are computed only then. Any thread.
  bool enabled() const { return enabled_.load(std::memory_order_relaxed); }

 private:
  static constexpr size_t kFlushAt = 64 * 1024;
  static constexpr size_t kCap = 4 * 1024 * 1024;
  struct alignas(64) Buffer {
    std::mutex mu;
    std::string data;
  };

  void run();
  int open_fd(std::string* err);
  void write_out(const std::string& data);
  void flush_buffers(std::string& out);

  std::string target_;  // writer thread (after open())
  std::vector<std::unique_ptr<Buffer>> buffers_;
  int fd_ = -1;  // changed by the writer under mu_ (dup_fd() reads it)
  bool own_fd_ = false;
  std::atomic<uint64_t> dropped_{0};
  std::atomic<bool> reopen_{false};
  std::atomic<bool> enabled_{true};

  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  bool kick_ = false;
  bool retarget_ = false;  // next_target_/next_fd_ wait for the writer
  std::string next_target_;
  int next_fd_ = -1;
  std::thread thread_;
};

}  // namespace lb::core
