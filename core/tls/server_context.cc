#include "core/tls/server_context.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <cstring>
#include <ctime>

#include "core/tls/pem.h"
#include "core/tls/tls_stream.h"

namespace lb::tls {

namespace {

struct StoreFree {
  void operator()(X509_STORE* s) const { X509_STORE_free(s); }
};
using StorePtr = std::unique_ptr<X509_STORE, StoreFree>;

char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (lower(a[i]) != lower(b[i])) return false;
  return true;
}

std::string lowercase(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = lower(c);
  return out;
}

CertificateInfo describe(X509* x, const std::string& path) {
  CertificateInfo info;
  info.path = path;
  if (auto* sans = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(x, NID_subject_alt_name, nullptr, nullptr))) {
    for (int i = 0; i < sk_GENERAL_NAME_num(sans); ++i) {
      const GENERAL_NAME* g = sk_GENERAL_NAME_value(sans, i);
      if (g->type != GEN_DNS) continue;
      const ASN1_STRING* s = g->d.dNSName;
      info.names.push_back(lowercase(std::string_view(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                                                      static_cast<size_t>(ASN1_STRING_length(s)))));
    }
    GENERAL_NAMES_free(sans);
  }
  if (info.names.empty()) {
    X509_NAME* subject = X509_get_subject_name(x);
    int i = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
    if (i >= 0) {
      const ASN1_STRING* s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, i));
      info.names.push_back(lowercase(std::string_view(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                                                      static_cast<size_t>(ASN1_STRING_length(s)))));
    }
  }
  if (!info.names.empty()) info.first_name = info.names.front();
  struct tm tm {};
  if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) == 1) info.not_after = static_cast<int64_t>(timegm(&tm));
  EVP_PKEY* pub = X509_get0_pubkey(x);
  info.ecdsa = pub && EVP_PKEY_get_base_id(pub) == EVP_PKEY_EC;
  return info;
}

std::string utc(int64_t t) {
  time_t tt = static_cast<time_t>(t);
  struct tm tm {};
  gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// One name from the handshake's point of view: a trailing dot is the same name.
std::string_view strip_dot(std::string_view s) {
  return !s.empty() && s.back() == '.' ? s.substr(0, s.size() - 1) : s;
}

}  // namespace

bool name_matches(std::string_view pattern, std::string_view name) {
  name = strip_dot(name);
  if (pattern.size() > 2 && pattern[0] == '*' && pattern[1] == '.') {
    std::string_view suffix = pattern.substr(1);  // ".example.com"
    if (name.size() <= suffix.size()) return false;
    std::string_view label = name.substr(0, name.size() - suffix.size());
    return label.find('.') == std::string_view::npos && iequals(name.substr(label.size()), suffix);
  }
  return iequals(pattern, name);
}

std::unique_ptr<ServerContext> ServerContext::load(const ServerSettings& settings,
                                                   std::shared_ptr<TicketKeyStore> tickets,
                                                   std::string* error) {
  if (settings.certificates.empty()) {
    *error = "no certificate";
    return nullptr;
  }
  if (settings.session_tickets && !tickets) {
    *error = "session tickets need a ticket key store";
    return nullptr;
  }
  std::unique_ptr<ServerContext> self(new ServerContext());
  self->settings_ = settings;
  self->tickets_ = settings.session_tickets ? std::move(tickets) : nullptr;

  // The client CA file once, shared by every context.
  StorePtr ca_store;
  STACK_OF(X509_NAME)* ca_names = nullptr;
  if (!settings.client_ca.empty()) {
    std::string open_error;
    if (!readable(settings.client_ca, &open_error)) {
      *error = "client_ca " + open_error;
      return nullptr;
    }
    ERR_clear_error();
    ca_store.reset(X509_STORE_new());
    if (!ca_store || X509_STORE_load_file(ca_store.get(), settings.client_ca.c_str()) != 1) {
      *error = "client_ca " + settings.client_ca + ": no valid PEM certificate (" + openssl_errors() + ")";
      return nullptr;
    }
    ca_names = SSL_load_client_CA_file(settings.client_ca.c_str());
    if (!ca_names) {
      *error = "client_ca " + settings.client_ca + ": no certificate names (" + openssl_errors() + ")";
      return nullptr;
    }
  }
  struct NamesFree {
    STACK_OF(X509_NAME) * n;
    ~NamesFree() {
      if (n) sk_X509_NAME_pop_free(n, X509_NAME_free);
    }
  } names_guard{ca_names};

  // ALPN in wire format once (length-prefixed), checked here so that the
  // callback can trust it.
  for (const auto& p : settings.alpn) {
    if (p.empty() || p.size() > 255) {
      *error = "alpn: protocol names are 1 to 255 bytes";
      return nullptr;
    }
  }
  const std::string ciphers = settings.ciphers.empty() ? kDefaultCiphers : settings.ciphers;

  for (const auto& files : settings.certificates) {
    X509Ptr leaf;
    ChainPtr chain;
    if (!read_chain(files.cert, &leaf, &chain, error)) return nullptr;
    PkeyPtr key = read_key(files.key, error);
    if (!key) return nullptr;

    SSL_CTX* c = SSL_CTX_new(TLS_server_method());
    if (!c) {
      *error = "cannot create a TLS context: " + openssl_errors();
      return nullptr;
    }
    self->contexts_.push_back(c);  // owned from here on
    ERR_clear_error();
    if (SSL_CTX_set_min_proto_version(c, settings.min_version) != 1) {
      *error = "tls_min_version: unsupported (" + openssl_errors() + ")";
      return nullptr;
    }
    if (SSL_CTX_set_cipher_list(c, ciphers.c_str()) != 1) {
      *error = "tls_ciphers \"" + ciphers + "\": no usable cipher (" + openssl_errors() + ")";
      return nullptr;
    }
    // Renegotiation over a relay only adds attack surface; nothing lb serves needs it.
    SSL_CTX_set_options(c, SSL_OP_NO_RENEGOTIATION);
    // The server's cipher order decides (a client offering weak suites first
    // does not get them; testssl.sh rates the absence HIGH), except that a
    // client listing ChaCha20 first (no AES instructions) keeps it.
    SSL_CTX_set_options(c, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_PRIORITIZE_CHACHA);
    // Idle connections give their read/write buffers back (memory per idle connection).
    SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS);
    // TLS 1.3 connections leave OpenSSL after the handshake (tls_stream.h).
    take_records_after_handshake(c);
    // Sessions resume through tickets only: a per-context cache would not be
    // seen by the other workers.
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
    static const unsigned char kSidContext[] = "lb";
    SSL_CTX_set_session_id_context(c, kSidContext, sizeof kSidContext - 1);
    if (self->tickets_) {
      if (!self->tickets_->install(c)) {
        *error = "session tickets: " + openssl_errors();
        return nullptr;
      }
    } else {
      SSL_CTX_set_options(c, SSL_OP_NO_TICKET);
      SSL_CTX_set_num_tickets(c, 0);
    }
    if (SSL_CTX_use_certificate(c, leaf.get()) != 1 || SSL_CTX_set1_chain(c, chain.get()) != 1) {
      *error = files.cert + ": certificate refused (" + openssl_errors() + ")";
      return nullptr;
    }
    if (SSL_CTX_use_PrivateKey(c, key.get()) != 1 || SSL_CTX_check_private_key(c) != 1) {
      ERR_clear_error();
      *error = files.key + ": the key does not match the certificate " + files.cert;
      return nullptr;
    }
    if (ca_store) {
      STACK_OF(X509_NAME)* names = SSL_dup_CA_list(ca_names);
      if (!names || SSL_CTX_set1_verify_cert_store(c, ca_store.get()) != 1) {
        if (names) sk_X509_NAME_pop_free(names, X509_NAME_free);
        *error = "client_ca " + settings.client_ca + ": " + openssl_errors();
        return nullptr;
      }
      SSL_CTX_set_client_CA_list(c, names);  // takes ownership
      SSL_CTX_set_verify(c, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
    }
    if (!settings.alpn.empty()) SSL_CTX_set_alpn_select_cb(c, &ServerContext::on_alpn, self.get());
    SSL_CTX_set_tlsext_servername_callback(c, &ServerContext::on_servername);
    SSL_CTX_set_tlsext_servername_arg(c, self.get());
    self->info_.push_back(describe(leaf.get(), files.cert));
  }
  return self;
}

ServerContext::~ServerContext() {
  for (SSL_CTX* c : contexts_) SSL_CTX_free(c);
}

size_t ServerContext::certificate_for(std::string_view sni) const {
  for (size_t i = 0; i < info_.size(); ++i)
    for (const auto& n : info_[i].names)
      if (name_matches(n, sni)) return i;
  return 0;
}

int ServerContext::on_servername(SSL* ssl, int* alert, void* arg) {
  auto* self = static_cast<ServerContext*>(arg);
  const char* sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  if (!sni) return SSL_TLSEXT_ERR_OK;  // the default certificate
  SSL_CTX* want = self->contexts_[self->certificate_for(sni)];
  if (want != SSL_get_SSL_CTX(ssl) && SSL_set_SSL_CTX(ssl, want) == nullptr) {
    *alert = SSL_AD_INTERNAL_ERROR;
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  }
  return SSL_TLSEXT_ERR_OK;
}

// Server preference: our first protocol the client also offers. No overlap:
// carry on without ALPN (an L4 balancer does not judge the application).
int ServerContext::on_alpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
                           unsigned int inlen, void* arg) {
  auto* self = static_cast<ServerContext*>(arg);
  for (const auto& want : self->settings_.alpn) {
    for (unsigned int i = 0; i < inlen;) {
      unsigned int len = in[i];
      if (i + 1 + len > inlen) break;  // malformed list: stop reading it
      if (len == want.size() && std::memcmp(in + i + 1, want.data(), len) == 0) {
        *out = in + i + 1;
        *outlen = static_cast<unsigned char>(len);
        return SSL_TLSEXT_ERR_OK;
      }
      i += 1 + len;
    }
  }
  return SSL_TLSEXT_ERR_NOACK;
}

std::vector<CheckFinding> ServerContext::check(const std::vector<std::string>& server_names,
                                               int64_t now_unix) const {
  std::vector<CheckFinding> out;
  for (const auto& c : info_) {
    std::string label = c.path + " (" + (c.first_name.empty() ? "no name" : c.first_name) + ")";
    if (c.not_after <= now_unix)
      out.push_back({true, "certificate " + label + " expired at " + utc(c.not_after)});
    if (server_names.empty()) continue;
    bool any = false;
    for (const auto& s : server_names)
      for (const auto& n : c.names) any = any || name_matches(n, s);
    if (!any) {
      std::string list;
      for (const auto& s : server_names) list += (list.empty() ? "" : ", ") + s;
      out.push_back({false, "certificate " + label + " names none of the server names: " + list});
    }
  }
  return out;
}

}  // namespace lb::tls
