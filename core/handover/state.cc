#include "core/handover/state.h"

#include <sys/socket.h>

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
  kTcpSession = 6,  // version 2 on
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

// The two ends of a record's field list: Writer puts each field, Reader
// takes it back (bounds-checked). The field lists below are written once,
// as templates over either, so encode() and decode() cannot drift apart.
class Writer {
 public:
  explicit Writer(uint32_t v = kHandoverVersion) : version(v) {}
  const uint32_t version;
  void u8(uint8_t v) { out_.push_back(v); }
  void u16(uint16_t v) { put(v, 2); }
  void u32(uint32_t v) { put(v, 4); }
  void u64(uint64_t v) { put(v, 8); }
  void operator()(const uint8_t& v) { u8(v); }
  void operator()(const uint32_t& v) { u32(v); }
  void operator()(const uint64_t& v) { u64(v); }
  void operator()(const bool& v) { u8(v ? 1 : 0); }
  void operator()(const std::string& s) { raw(s.data(), s.size()); }
  void operator()(const std::vector<uint8_t>& b) { raw(b.data(), b.size()); }
  void operator()(const sockaddr_storage& a) { raw(&a, sizeof a); }
  void operator()(const FrozenSession::Path& p) { u8(static_cast<uint8_t>(p)); }
  void operator()(const FrozenSession::Stage& s) { u8(static_cast<uint8_t>(s)); }
  // Descriptor indexes: one, an optional one (kNoFd when absent), a list.
  void fd(const uint32_t& i, const char*) { u32(i); }
  void fd(const int& i, const char*) { u32(i < 0 ? kNoFd : static_cast<uint32_t>(i)); }
  void fd(const std::optional<uint32_t>& i, const char*) { u32(i ? *i : kNoFd); }
  void fds(const std::vector<uint32_t>& list, const char* what) {
    u32(static_cast<uint32_t>(list.size()));
    for (uint32_t i : list) fd(i, what);
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
  void raw(const void* p, size_t n) {
    u32(static_cast<uint32_t>(n));
    auto* b = static_cast<const uint8_t*>(p);
    out_.insert(out_.end(), b, b + n);
  }
  void put(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  std::vector<uint8_t> out_;
};

class Reader {
 public:
  Reader(const uint8_t* p, size_t n, uint32_t v = kHandoverVersion, uint32_t fd_count = 0)
      : version(v), p_(p), n_(n), fd_count_(fd_count) {}
  const uint32_t version;
  bool ok() const { return ok_ && why_.empty(); }
  bool done() const { return at_ == n_; }
  // Why a field was refused (a descriptor index), "" for a plain overrun.
  const std::string& why() const { return why_; }
  uint8_t u8() { return static_cast<uint8_t>(get(1)); }
  uint16_t u16() { return static_cast<uint16_t>(get(2)); }
  uint32_t u32() { return static_cast<uint32_t>(get(4)); }
  uint64_t u64() { return get(8); }
  void operator()(uint8_t& v) { v = u8(); }
  void operator()(uint32_t& v) { v = u32(); }
  void operator()(uint64_t& v) { v = u64(); }
  void operator()(bool& v) { v = u8() != 0; }
  void operator()(std::string& s) {
    const uint8_t* p = raw();
    if (p) s.assign(reinterpret_cast<const char*>(p), last_len_);
  }
  void operator()(std::vector<uint8_t>& b) {
    const uint8_t* p = raw();
    if (p) b.assign(p, p + last_len_);
  }
  void operator()(sockaddr_storage& a) {
    const uint8_t* p = raw();
    a = sockaddr_storage{};
    if (p && last_len_ <= sizeof a) std::memcpy(&a, p, last_len_);
    if (last_len_ > sizeof a) ok_ = false;
  }
  void operator()(FrozenSession::Path& p) {
    uint8_t v = u8();
    if (v > 1) ok_ = false;
    p = static_cast<FrozenSession::Path>(v);
  }
  void operator()(FrozenSession::Stage& s) {
    uint8_t v = u8();
    if (v > static_cast<uint8_t>(FrozenSession::Stage::Connecting)) ok_ = false;
    s = static_cast<FrozenSession::Stage>(v);
  }
  void fd(uint32_t& i, const char* what) {
    i = u32();
    if (ok_ && i >= fd_count_) refuse(std::string(what) + ": descriptor index out of range");
  }
  // A TCP session's: from version 3 on, kNoFd is "none" (-1).
  void fd(int& i, const char* what) {
    const uint32_t v = u32();
    const bool none = version >= 3 && v == kNoFd;
    i = none ? -1 : static_cast<int>(v);
    if (ok_ && !none && v >= fd_count_) refuse(std::string(what) + ": descriptor index out of range");
  }
  void fd(std::optional<uint32_t>& i, const char* what) {
    uint32_t v = u32();
    i.reset();
    if (v == kNoFd) return;
    if (ok_ && v >= fd_count_) refuse(std::string(what) + " descriptor index out of range");
    i = v;
  }
  void fds(std::vector<uint32_t>& list, const char* what) {
    uint32_t n = u32();
    if (n > fd_count_) refuse(std::string(what) + ": more descriptors than were sent");
    for (uint32_t k = 0; k < n && ok(); ++k) fd(list.emplace_back(), what);
  }
  // A sub-reader over the next `len` bytes (a section body).
  Reader sub(uint32_t len) {
    if (!need(len)) return Reader(p_, 0, version, fd_count_);
    Reader r(p_ + at_, len, version, fd_count_);
    at_ += len;
    return r;
  }

 private:
  void refuse(std::string why) {
    if (why_.empty()) why_ = std::move(why);
  }
  const uint8_t* raw() {
    last_len_ = u32();
    if (!need(last_len_)) return nullptr;
    const uint8_t* p = p_ + at_;
    at_ += last_len_;
    return p;
  }
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
  uint32_t fd_count_;
  size_t last_len_ = 0;
  bool ok_ = true;
  std::string why_;
};

// ---- the field lists, in wire order (docs/upgrade.md) ----
// Io is Writer or Reader; S is the record, const when writing.

// Every field, in order.
template <class Io, class... F>
void each(Io& io, F&... fields) {
  (io(fields), ...);
}

template <class Io, class S>
void globals_fields(Io& io, S& s) {
  each(io, s.generation, s.reloads_ok, s.reloads_error, s.upgrades_ok, s.upgrades_refused,
       s.access_log_dropped);
  io.fd(s.access_log_fd, "access log");
  io.fd(s.admin_fd, "admin");
}

template <class Io, class S>
void listener_fields(Io& io, S& l) {
  each(io, l.listener, l.key, l.kind);
  io.fds(l.fds, "listener");
}

template <class Io, class S>
void counter_fields(Io& io, S& c) {
  each(io, c.listener, c.connections, c.rejected_acl, c.rejected_limit, c.rejected_no_backend,
       c.rejected_proxy, c.rejected_tls, c.datagrams_in, c.datagrams_out);
  if (io.version >= 2) each(io, c.tls_ok, c.tls_failed, c.tls_timeout);
}

// The backend's up and drain bits as one byte of flags (1 up, 2 drain).
inline void backend_flags(Writer& w, const BackendState& b) {
  w.u8(static_cast<uint8_t>((b.up ? 1 : 0) | (b.drain ? 2 : 0)));
}
inline void backend_flags(Reader& r, BackendState& b) {
  uint8_t f = r.u8();
  b.up = f & 1;
  b.drain = f & 2;
}

template <class Io, class S>
void backend_fields(Io& io, S& b) {
  each(io, b.pool, b.id);
  backend_flags(io, b);
  each(io, b.admin_weight, b.slow_start_elapsed_ms, b.total, b.connect_failures, b.bytes_to_backend,
       b.bytes_to_client, b.checks_pass, b.checks_fail);
}

template <class Io, class S>
void udp_fields(Io& io, S& u) {
  each(io, u.listener, u.client, u.pool, u.backend);
  io.fd(u.upstream_fd, "UDP session");
}

template <class Io, class S>
void tcp_fields(Io& io, S& t) {
  each(io, t.listener, t.pool, t.backend, t.path);
  io.fd(t.client_fd, "TCP session");
  io.fd(t.backend_fd, "TCP session");
  for (auto* w : {&t.to_backend, &t.to_client}) each(io, w->pending, w->eof, w->shutdown_done);
  each(io, t.client, t.local, t.flow_hash, t.started_ms, t.bytes_to_backend, t.bytes_to_client);
  if (io.version >= 3) each(io, t.stage, t.deadline_ms);
}

template <class T, class F>
void put_sections(Writer& w, Tag tag, const std::vector<T>& records, F fields) {
  for (const T& r : records) {
    size_t at = w.section(tag);
    fields(w, r);
    w.end_section(at);
  }
}

}  // namespace

std::vector<uint8_t> encode(const HandoverState& s, uint32_t fd_count, uint32_t version) {
  Writer w(version);
  {
    size_t at = w.section(kGlobals);
    globals_fields(w, s);
    w.end_section(at);
  }
  put_sections(w, kListener, s.listeners, [](auto& io, auto& r) { listener_fields(io, r); });
  put_sections(w, kListenerCounters, s.listener_counters, [](auto& io, auto& r) { counter_fields(io, r); });
  put_sections(w, kBackend, s.backends, [](auto& io, auto& r) { backend_fields(io, r); });
  put_sections(w, kUdpSession, s.udp_sessions, [](auto& io, auto& r) { udp_fields(io, r); });
  if (version >= 2)
    put_sections(w, kTcpSession, s.tcp_sessions, [](auto& io, auto& r) { tcp_fields(io, r); });

  std::vector<uint8_t> body = std::move(w.out());
  Writer h;
  for (char c : kHandoverMagic) h.u8(static_cast<uint8_t>(c));
  h.u32(version);
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
  bool globals = false;
  Reader r(bytes.data() + kHeaderSize, body_len, version, fd_count);
  // Reads one record of a section into `list`.
  auto take = [](Reader& b, auto& list, auto fields) { fields(b, list.emplace_back()); };
  while (r.ok() && !r.done()) {
    const uint16_t tag = r.u16();
    const uint32_t len = r.u32();
    Reader b = r.sub(len);
    if (!r.ok()) return fail("section " + std::to_string(tag) + " overruns the body");
    switch (tag) {
      case kGlobals:
        globals_fields(b, s);
        globals = true;
        break;
      case kListener:
        take(b, s.listeners, [](auto& io, auto& x) { listener_fields(io, x); });
        if (b.ok() && s.listeners.back().kind != 1 && s.listeners.back().kind != 2)
          return fail("listener \"" + s.listeners.back().listener + "\": unknown kind");
        break;
      case kListenerCounters:
        take(b, s.listener_counters, [](auto& io, auto& x) { counter_fields(io, x); });
        break;
      case kBackend:
        take(b, s.backends, [](auto& io, auto& x) { backend_fields(io, x); });
        break;
      case kUdpSession:
        take(b, s.udp_sessions, [](auto& io, auto& x) { udp_fields(io, x); });
        break;
      case kTcpSession:
        if (version < 2) return fail("unknown section " + std::to_string(tag) + " in version 1");
        take(b, s.tcp_sessions, [](auto& io, auto& x) { tcp_fields(io, x); });
        // A relaying session has both sockets; one that is not yet has no
        // backend socket.
        if (b.ok() && (s.tcp_sessions.back().stage == FrozenSession::Stage::Relaying) !=
                          (s.tcp_sessions.back().backend_fd >= 0))
          return fail("TCP session: backend descriptor does not match its stage");
        break;
      default:
        // Every section of a version this build reads is known: an unknown
        // tag means damage, not a newer writer (that would be a new version).
        return fail("unknown section " + std::to_string(tag));
    }
    if (!b.why().empty()) return fail(b.why());
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
