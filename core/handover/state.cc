#include "core/handover/state.h"

#include <cstdio>
#include <cstring>
#include <limits>

namespace lb::core::handover {

namespace {

// Section tags (docs/upgrade.md). Each section: u16 tag, u32 length, body.
enum Tag : uint16_t {
  kGlobals = 1,
  kListener = 2,
  kListenerCounters = 3,
  kBackend = 4,
  kUdpSession = 5,
};

constexpr size_t kHeaderSize = 8 + 4 + 4 + 8 + 8;  // magic, version, fd count, body length, checksum
constexpr uint32_t kNoFd = std::numeric_limits<uint32_t>::max();

// FNV-1a 64 over the body: catches a truncated or damaged transfer (the
// channel is a local socket; this is no defence against an attacker, who
// could run any program as lb anyway).
uint64_t checksum(const uint8_t* p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

class Writer {
 public:
  void u8(uint8_t v) { out_.push_back(v); }
  void u16(uint16_t v) { put(v, 2); }
  void u32(uint32_t v) { put(v, 4); }
  void u64(uint64_t v) { put(v, 8); }
  void str(const std::string& s) {
    u32(static_cast<uint32_t>(s.size()));
    out_.insert(out_.end(), s.begin(), s.end());
  }
  void bytes(const std::vector<uint8_t>& b) {
    u32(static_cast<uint32_t>(b.size()));
    out_.insert(out_.end(), b.begin(), b.end());
  }
  // Starts a section; end_section() fills in its length.
  size_t section(Tag t) {
    u16(t);
    size_t at = out_.size();
    u32(0);
    return at;
  }
  void end_section(size_t at) {
    uint32_t len = static_cast<uint32_t>(out_.size() - at - 4);
    for (int i = 0; i < 4; ++i) out_[at + i] = static_cast<uint8_t>(len >> (8 * i));
  }
  std::vector<uint8_t>& out() { return out_; }

 private:
  void put(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  std::vector<uint8_t> out_;
};

class Reader {
 public:
  Reader(const uint8_t* p, size_t n) : p_(p), n_(n) {}
  bool ok() const { return ok_; }
  bool done() const { return at_ == n_; }
  uint8_t u8() { return static_cast<uint8_t>(get(1)); }
  uint16_t u16() { return static_cast<uint16_t>(get(2)); }
  uint32_t u32() { return static_cast<uint32_t>(get(4)); }
  uint64_t u64() { return get(8); }
  std::string str() {
    uint32_t len = u32();
    if (!need(len)) return {};
    std::string s(reinterpret_cast<const char*>(p_ + at_), len);
    at_ += len;
    return s;
  }
  std::vector<uint8_t> bytes() {
    uint32_t len = u32();
    if (!need(len)) return {};
    std::vector<uint8_t> b(p_ + at_, p_ + at_ + len);
    at_ += len;
    return b;
  }
  // A sub-reader over the next `len` bytes (a section body).
  Reader sub(uint32_t len) {
    if (!need(len)) return Reader(p_, 0);
    Reader r(p_ + at_, len);
    at_ += len;
    return r;
  }

 private:
  bool need(size_t len) {
    if (!ok_ || n_ - at_ < len) ok_ = false;
    return ok_;
  }
  uint64_t get(int n) {
    if (!need(static_cast<size_t>(n))) return 0;
    uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= static_cast<uint64_t>(p_[at_ + i]) << (8 * i);
    at_ += static_cast<size_t>(n);
    return v;
  }
  const uint8_t* p_;
  size_t n_;
  size_t at_ = 0;
  bool ok_ = true;
};

}  // namespace

std::vector<uint8_t> encode(const HandoverState& s, uint32_t fd_count) {
  Writer w;
  {
    size_t at = w.section(kGlobals);
    w.u64(s.generation);
    w.u64(s.reloads_ok);
    w.u64(s.reloads_error);
    w.u64(s.upgrades_ok);
    w.u64(s.upgrades_refused);
    w.u64(s.access_log_dropped);
    w.u32(s.access_log_fd ? *s.access_log_fd : kNoFd);
    w.u32(s.admin_fd ? *s.admin_fd : kNoFd);
    w.end_section(at);
  }
  for (const auto& l : s.listeners) {
    size_t at = w.section(kListener);
    w.str(l.listener);
    w.str(l.key);
    w.u8(l.kind);
    w.u32(static_cast<uint32_t>(l.fds.size()));
    for (uint32_t fd : l.fds) w.u32(fd);
    w.end_section(at);
  }
  for (const auto& c : s.listener_counters) {
    size_t at = w.section(kListenerCounters);
    w.str(c.listener);
    for (uint64_t v : {c.connections, c.rejected_acl, c.rejected_limit, c.rejected_no_backend,
                       c.rejected_proxy, c.rejected_tls, c.datagrams_in, c.datagrams_out})
      w.u64(v);
    w.end_section(at);
  }
  for (const auto& b : s.backends) {
    size_t at = w.section(kBackend);
    w.str(b.pool);
    w.str(b.id);
    w.u8(static_cast<uint8_t>((b.up ? 1 : 0) | (b.drain ? 2 : 0)));
    w.u32(b.admin_weight);
    for (uint64_t v : {b.slow_start_elapsed_ms, b.total, b.connect_failures, b.bytes_to_backend,
                       b.bytes_to_client, b.checks_pass, b.checks_fail})
      w.u64(v);
    w.end_section(at);
  }
  for (const auto& u : s.udp_sessions) {
    size_t at = w.section(kUdpSession);
    w.str(u.listener);
    w.bytes(u.client);
    w.str(u.pool);
    w.str(u.backend);
    w.u32(u.upstream_fd);
    w.end_section(at);
  }

  std::vector<uint8_t> body = std::move(w.out());
  Writer h;
  for (char c : kHandoverMagic) h.u8(static_cast<uint8_t>(c));
  h.u32(kHandoverVersion);
  h.u32(fd_count);
  h.u64(body.size());
  h.u64(checksum(body.data(), body.size()));
  std::vector<uint8_t> out = std::move(h.out());
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

std::optional<HandoverState> decode(const std::vector<uint8_t>& bytes, uint32_t fd_count,
                                    std::string* error) {
  auto fail = [error](std::string why) -> std::optional<HandoverState> {
    if (error) *error = std::move(why);
    return std::nullopt;
  };
  if (bytes.size() < kHeaderSize)
    return fail("truncated header (" + std::to_string(bytes.size()) + " bytes)");
  if (std::memcmp(bytes.data(), kHandoverMagic, sizeof kHandoverMagic) != 0)
    return fail("not an lb hand-over (bad magic)");
  Reader h(bytes.data() + 8, kHeaderSize - 8);
  const uint32_t version = h.u32();
  const uint32_t fds_declared = h.u32();
  const uint64_t body_len = h.u64();
  const uint64_t sum = h.u64();
  if (version < kHandoverMinVersion || version > kHandoverVersion)
    return fail("hand-over version " + std::to_string(version) + " not readable (this build reads " +
                std::to_string(kHandoverMinVersion) + "-" + std::to_string(kHandoverVersion) + ")");
  if (body_len != bytes.size() - kHeaderSize)
    return fail("length mismatch: header says " + std::to_string(body_len) + " bytes, got " +
                std::to_string(bytes.size() - kHeaderSize));
  if (checksum(bytes.data() + kHeaderSize, body_len) != sum) return fail("checksum mismatch");
  if (fds_declared != fd_count)
    return fail("descriptor count mismatch: " + std::to_string(fds_declared) + " sent, " +
                std::to_string(fd_count) + " received");

  HandoverState s;
  s.version = version;
  auto fd_ok = [fd_count](uint32_t i) { return i < fd_count; };
  bool globals = false;
  Reader r(bytes.data() + kHeaderSize, body_len);
  while (r.ok() && !r.done()) {
    const uint16_t tag = r.u16();
    const uint32_t len = r.u32();
    Reader b = r.sub(len);
    if (!r.ok()) return fail("section " + std::to_string(tag) + " overruns the body");
    switch (tag) {
      case kGlobals: {
        s.generation = b.u64();
        s.reloads_ok = b.u64();
        s.reloads_error = b.u64();
        s.upgrades_ok = b.u64();
        s.upgrades_refused = b.u64();
        s.access_log_dropped = b.u64();
        uint32_t fd = b.u32();
        if (fd != kNoFd) {
          if (!fd_ok(fd)) return fail("access log descriptor index out of range");
          s.access_log_fd = fd;
        }
        fd = b.u32();
        if (fd != kNoFd) {
          if (!fd_ok(fd)) return fail("admin descriptor index out of range");
          s.admin_fd = fd;
        }
        globals = true;
        break;
      }
      case kListener: {
        ListenerSocket l;
        l.listener = b.str();
        l.key = b.str();
        l.kind = b.u8();
        uint32_t n = b.u32();
        if (n > fd_count) return fail("listener \"" + l.listener + "\": more descriptors than were sent");
        for (uint32_t i = 0; i < n && b.ok(); ++i) {
          uint32_t fd = b.u32();
          if (!fd_ok(fd)) return fail("listener \"" + l.listener + "\": descriptor index out of range");
          l.fds.push_back(fd);
        }
        if (l.kind != 1 && l.kind != 2) return fail("listener \"" + l.listener + "\": unknown kind");
        s.listeners.push_back(std::move(l));
        break;
      }
      case kListenerCounters: {
        ListenerCounters c;
        c.listener = b.str();
        for (uint64_t* v : {&c.connections, &c.rejected_acl, &c.rejected_limit, &c.rejected_no_backend,
                            &c.rejected_proxy, &c.rejected_tls, &c.datagrams_in, &c.datagrams_out})
          *v = b.u64();
        s.listener_counters.push_back(std::move(c));
        break;
      }
      case kBackend: {
        BackendState x;
        x.pool = b.str();
        x.id = b.str();
        uint8_t flags = b.u8();
        x.up = flags & 1;
        x.drain = flags & 2;
        x.admin_weight = b.u32();
        for (uint64_t* v : {&x.slow_start_elapsed_ms, &x.total, &x.connect_failures, &x.bytes_to_backend,
                            &x.bytes_to_client, &x.checks_pass, &x.checks_fail})
          *v = b.u64();
        s.backends.push_back(std::move(x));
        break;
      }
      case kUdpSession: {
        UdpSession u;
        u.listener = b.str();
        u.client = b.bytes();
        u.pool = b.str();
        u.backend = b.str();
        u.upstream_fd = b.u32();
        if (b.ok() && !fd_ok(u.upstream_fd)) return fail("UDP session: descriptor index out of range");
        s.udp_sessions.push_back(std::move(u));
        break;
      }
      default:
        // Every section of a version this build reads is known: an unknown
        // tag means damage, not a newer writer (that would be a new version).
        return fail("unknown section " + std::to_string(tag));
    }
    if (!b.ok() || !b.done()) return fail("section " + std::to_string(tag) + " has the wrong length");
  }
  if (!r.ok()) return fail("truncated body");
  if (!globals) return fail("no globals section");
  return s;
}

std::string version_line() {
  return "handover reads " + std::to_string(kHandoverMinVersion) + "-" + std::to_string(kHandoverVersion) +
         " writes " + std::to_string(kHandoverVersion);
}

bool reads_version(const std::string& line, uint32_t version, std::string* error) {
  unsigned lo = 0, hi = 0, writes = 0;
  if (std::sscanf(line.c_str(), "handover reads %u-%u writes %u", &lo, &hi, &writes) != 3) {
    if (error) *error = "cannot read its hand-over versions (\"" + line.substr(0, 80) + "\")";
    return false;
  }
  if (version < lo || version > hi) {
    if (error)
      *error = "it reads hand-over versions " + std::to_string(lo) + "-" + std::to_string(hi) +
               ", this lb writes " + std::to_string(version);
    return false;
  }
  return true;
}

}  // namespace lb::core::handover
