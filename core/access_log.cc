#include "core/access_log.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "core/socket.h"

namespace lb::core {

void json_escape(std::string_view s, std::string& out) {
  static const char kHex[] = "0123456789abcdef";
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (u < 0x20) {
          out += "\\u00";
          out += kHex[u >> 4];
          out += kHex[u & 15];
        } else {
          out += c;
        }
    }
  }
}

void format_access_record(const AccessRecord& r, std::string& out) {
  out += "{\"listener\":\"";
  json_escape(r.listener, out);
  out += "\",\"client\":\"";
  if (r.client) out += format_address(r.client);
  out += "\",\"backend\":";
  if (r.backend.empty()) {
    out += "null";
  } else {
    out += '"';
    json_escape(r.backend, out);
    out += '"';
  }
  out += ",\"duration_ms\":";
  out += std::to_string(r.duration_ms);
  out += ",\"bytes_to_backend\":";
  out += std::to_string(r.bytes_to_backend);
  out += ",\"bytes_to_client\":";
  out += std::to_string(r.bytes_to_client);
  out += ",\"result\":\"";
  out += r.result;
  out += '"';
  if (r.tls) {
    const auto field = [&out](const char* key, std::string_view v) {
      out += ",\"";
      out += key;
      out += "\":";
      if (v.empty()) {
        out += "null";
        return;
      }
      out += '"';
      json_escape(v, out);
      out += '"';
    };
    field("sni", r.sni);
    field("tls_version", r.tls_version);
    field("alpn", r.alpn);
    field("ja4", r.ja4);
  }
  out += "}\n";
}

AccessLog::AccessLog(std::string target, unsigned workers) : target_(std::move(target)) {
  for (unsigned i = 0; i < workers; ++i) buffers_.push_back(std::make_unique<Buffer>());
}

AccessLog::~AccessLog() {
  if (thread_.joinable()) {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }
  if (own_fd_ && fd_ >= 0) ::close(fd_);
  if (retarget_ && next_fd_ >= 0 && next_fd_ != STDERR_FILENO) ::close(next_fd_);
}

int AccessLog::open_target(const std::string& target, std::string* err) {
  if (target == "stderr") return STDERR_FILENO;
  int fd = ::open(target.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
  if (fd < 0 && err) *err = std::strerror(errno);
  return fd;
}

int AccessLog::open_fd(std::string* err) { return open_target(target_, err); }

void AccessLog::retarget(std::string target, int fd) {
  {
    std::lock_guard lk(mu_);
    if (retarget_ && next_fd_ >= 0 && next_fd_ != STDERR_FILENO) ::close(next_fd_);
    retarget_ = true;
    next_target_ = std::move(target);
    next_fd_ = fd;
    kick_ = true;
  }
  cv_.notify_one();
}

int AccessLog::dup_fd() {
  std::lock_guard lk(mu_);
  if (!own_fd_ || fd_ < 0) return -1;
  // dup(), then close-on-exec: ThreadSanitizer follows dup() (see
  // Server::hold_copies).
  int d = ::dup(fd_);
  if (d >= 0) ::fcntl(d, F_SETFD, FD_CLOEXEC);
  return d;
}

bool AccessLog::open(std::string* err, int fd) {
  fd_ = fd >= 0 ? fd : open_fd(err);
  if (fd_ < 0) return false;
  own_fd_ = fd_ != STDERR_FILENO;
  thread_ = std::thread([this] { run(); });
  return true;
}

void AccessLog::write(unsigned worker, const AccessRecord& r) {
  if (!enabled_.load(std::memory_order_relaxed)) return;
  Buffer& b = *buffers_[worker];
  bool kick = false;
  {
    std::lock_guard lk(b.mu);
    if (b.data.size() >= kCap) {
      dropped_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    format_access_record(r, b.data);
    kick = b.data.size() >= kFlushAt;
  }
  if (kick) {
    {
      std::lock_guard lk(mu_);
      kick_ = true;
    }
    cv_.notify_one();
  }
}

void AccessLog::reopen() {
  reopen_.store(true, std::memory_order_relaxed);
  {
    std::lock_guard lk(mu_);
    kick_ = true;
  }
  cv_.notify_one();
}

void AccessLog::write_out(const std::string& data) {
  const char* p = data.data();
  size_t left = data.size();
  while (left > 0 && fd_ >= 0) {
    ssize_t n = ::write(fd_, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
}

void AccessLog::run() {
  std::string out;
  for (;;) {
    bool stopping;
    bool retarget = false;
    std::string next_target;
    int next_fd = -1;
    {
      std::unique_lock lk(mu_);
      cv_.wait_for(lk, std::chrono::milliseconds(100), [this] { return stop_ || kick_; });
      kick_ = false;
      stopping = stop_;
      if (retarget_) {
        retarget = true;
        retarget_ = false;
        next_target = std::move(next_target_);
        next_fd = next_fd_;
        next_fd_ = -1;
      }
    }
    if (retarget) {
      flush_buffers(out);  // what was logged before the reload, where it was going
      std::lock_guard lk(mu_);
      if (own_fd_ && fd_ >= 0) ::close(fd_);
      fd_ = next_fd;
      own_fd_ = fd_ != STDERR_FILENO;
      target_ = std::move(next_target);
    }
    if (reopen_.exchange(false, std::memory_order_relaxed) && own_fd_) {
      int fd = open_fd(nullptr);
      if (fd >= 0) {
        std::lock_guard lk(mu_);
        ::close(fd_);
        fd_ = fd;
      }
    }
    flush_buffers(out);
    if (stopping) return;
  }
}

void AccessLog::flush_buffers(std::string& out) {
  for (auto& b : buffers_) {
    out.clear();
    {
      std::lock_guard lk(b->mu);
      out.swap(b->data);
    }
    if (!out.empty()) write_out(out);
    out.clear();
    // Give the (now empty) larger buffer back so steady state allocates nothing.
    std::lock_guard lk(b->mu);
    if (b->data.empty()) b->data.swap(out);
  }
}

}  // namespace lb::core
