// TLS termination and re-encryption engines, client <-> server in memory:
// no sockets, every byte moved by pump().
#include <catch2/catch.hpp>

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/tls/client_context.h"
#include "core/tls/record_layer.h"
#include "core/tls/server_context.h"
#include "core/tls/ticket_keys.h"
#include "core/tls/tls_stream.h"
#include "test/support/temp_dir.h"
#include "test/support/tls_certs.h"

using lb::tls::ClientContext;
using lb::tls::ClientSettings;
using lb::tls::ServerContext;
using lb::tls::ServerSettings;
using lb::tls::TicketKeyStore;
using lb::tls::TlsStream;
using Status = lb::tls::TlsStream::Status;
using lb::test::KeyType;
using lb::test::TestCa;

namespace {

// Certificates written once per test into a private directory.
struct Files {
  lb::test::TempDir dir;
  TestCa ca{"lb test CA"};
  std::string ca_path = dir.write_file("ca.pem", ca.cert_pem());

  lb::tls::CertificateFiles write(const std::string& name, const lb::test::Pem& pem) const {
    return {dir.write_file(name + ".pem", pem.cert), dir.write_file(name + ".key", pem.key)};
  }
};

std::unique_ptr<ServerContext> load_server(const ServerSettings& s,
                                           std::shared_ptr<TicketKeyStore> store = nullptr) {
  if (s.session_tickets && !store) store = std::make_shared<TicketKeyStore>();
  std::string error;
  auto ctx = ServerContext::load(s, store, &error);
  INFO(error);
  REQUIRE(ctx);
  return ctx;
}

std::unique_ptr<ClientContext> load_client(const ClientSettings& s) {
  std::string error;
  auto ctx = ClientContext::load(s, &error);
  INFO(error);
  REQUIRE(ctx);
  return ctx;
}

// A re-encryption client that trusts the test CA.
std::unique_ptr<ClientContext> trusting(const Files& f, std::vector<std::string> alpn = {}) {
  ClientSettings cs;
  cs.ca_file = f.ca_path;
  cs.alpn = std::move(alpn);
  return load_client(cs);
}

// Moves records both ways and runs both handshakes until nothing moves.
// Returns the server's and the client's last handshake status.
struct Pair {
  std::unique_ptr<TlsStream> client, server;

  Pair(SSL_CTX* server_ctx, SSL_CTX* client_ctx, const std::string& name, bool verify = true,
       SSL_SESSION* resume = nullptr) {
    std::string error;
    server = TlsStream::server(server_ctx, &error);
    client = TlsStream::client(client_ctx, name, verify, &error);
    INFO(error);
    REQUIRE(server);
    REQUIRE(client);
    if (resume) REQUIRE(SSL_set_session(client->ssl(), resume) == 1);
  }

  bool move() {
    bool moved = false;
    if (client->output_pending()) {
      std::string s = client->take_output();
      server->feed(s.data(), s.size());
      moved = true;
    }
    if (server->output_pending()) {
      std::string s = server->take_output();
      client->feed(s.data(), s.size());
      moved = true;
    }
    return moved;
  }

  std::pair<Status, Status> handshake() {
    Status c = client->handshake(), s = server->handshake();
    for (int i = 0; i < 50 && move(); ++i) {
      if (c == Status::want_input) c = client->handshake();
      if (s == Status::want_input) s = server->handshake();
    }
    return {s, c};
  }

  // Everything `from` can decrypt once records have moved.
  static std::string drain(TlsStream& from, Status* last = nullptr) {
    std::string out;
    char buf[4096];
    size_t n;
    Status st;
    while ((st = from.read(buf, sizeof buf, &n)) == Status::ok) out.append(buf, n);
    if (last) *last = st;
    return out;
  }

  std::string send(TlsStream& from, TlsStream& to, const std::string& data) {
    size_t written = 0;
    REQUIRE(from.write(data.data(), data.size(), &written) == Status::ok);
    REQUIRE(written == data.size());
    move();
    return drain(to);
  }

  // A finished handshake, its tickets read.
  void establish() {
    REQUIRE(handshake().second == Status::ok);
    SSL_SESSION_free(session());
  }

  // The client reads whatever the server sent after the handshake (TLS 1.3
  // tickets) so that its session can be resumed.
  SSL_SESSION* session() {
    move();
    drain(*client);
    return SSL_get1_session(client->ssl());
  }

  int peer_key_type() const {
    X509* peer = SSL_get0_peer_certificate(client->ssl());
    REQUIRE(peer);
    return EVP_PKEY_get_base_id(X509_get0_pubkey(peer));
  }
};

ServerSettings basic_settings(const Files& f) {
  ServerSettings s;
  s.certificates.push_back(f.write("site", f.ca.issue({"site.example.com"}, KeyType::ecdsa_p256)));
  return s;
}

}  // namespace

TEST_CASE("name_matches: exact and one-label wildcard, case-insensitive", "[tls]") {
  using lb::tls::name_matches;
  CHECK(name_matches("api.example.com", "API.Example.com"));
  CHECK(name_matches("api.example.com", "api.example.com."));
  CHECK_FALSE(name_matches("api.example.com", "www.example.com"));
  CHECK(name_matches("*.example.net", "a.example.net"));
  CHECK(name_matches("*.example.net", "A.EXAMPLE.NET"));
  CHECK_FALSE(name_matches("*.example.net", "a.b.example.net"));
  CHECK_FALSE(name_matches("*.example.net", "example.net"));
  CHECK_FALSE(name_matches("*.example.net", ".example.net"));
  CHECK_FALSE(name_matches("*.example.net", "aexample.net"));
}

TEST_CASE("TLS 1.3 and 1.2 handshakes, data both ways", "[tls]") {
  Files f;
  auto server = load_server(basic_settings(f));
  auto client = trusting(f);

  SECTION("TLS 1.3") {
    Pair p(server->ctx(), client->ctx(), "site.example.com");
    auto [s, c] = p.handshake();
    REQUIRE(s == Status::ok);
    REQUIRE(c == Status::ok);
    CHECK(std::string(p.server->version()) == "TLSv1.3");
    CHECK(p.server->server_name() == "site.example.com");
    // The records are lb's from here on: OpenSSL's session is gone.
    CHECK(p.server->own_records());
    CHECK(p.server->ssl() == nullptr);
    CHECK(std::string(p.server->cipher()) == "TLS_AES_256_GCM_SHA384");
    CHECK(p.send(*p.client, *p.server, "hello") == "hello");
    CHECK(p.send(*p.server, *p.client, "world") == "world");
  }
  SECTION("TLS 1.2 with the default ciphers") {
    SSL_CTX_set_max_proto_version(client->ctx(), TLS1_2_VERSION);
    Pair p(server->ctx(), client->ctx(), "site.example.com");
    auto [s, c] = p.handshake();
    REQUIRE(s == Status::ok);
    REQUIRE(c == Status::ok);
    CHECK(std::string(p.server->version()) == "TLSv1.2");
    CHECK_FALSE(p.server->own_records());  // TLS 1.2 stays in OpenSSL
    std::string cipher = SSL_get_cipher_name(p.server->ssl());
    CHECK(cipher.rfind("ECDHE-", 0) == 0);
    CHECK((cipher.find("GCM") != std::string::npos || cipher.find("CHACHA20") != std::string::npos));
    CHECK(p.send(*p.client, *p.server, "twelve") == "twelve");
  }
  SECTION("TLS 1.2: the server's cipher order decides, a client's ChaCha20 preference is kept") {
    // testssl.sh rates a server without a cipher order of its own HIGH.
    SSL_CTX_set_max_proto_version(client->ctx(), TLS1_2_VERSION);
    REQUIRE(SSL_CTX_set_cipher_list(client->ctx(),
                                    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384") == 1);
    Pair p(server->ctx(), client->ctx(), "site.example.com");
    REQUIRE(p.handshake().second == Status::ok);
    CHECK(std::string(SSL_get_cipher_name(p.server->ssl())) == "ECDHE-ECDSA-AES256-GCM-SHA384");
    // A client that lists ChaCha20 first (no AES instructions) gets it.
    REQUIRE(SSL_CTX_set_cipher_list(client->ctx(),
                                    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384") == 1);
    Pair q(server->ctx(), client->ctx(), "site.example.com");
    REQUIRE(q.handshake().second == Status::ok);
    CHECK(std::string(SSL_get_cipher_name(q.server->ssl())) == "ECDHE-ECDSA-CHACHA20-POLY1305");
  }
  SECTION("tls_min_version 1.3 refuses a TLS 1.2 client") {
    ServerSettings s13 = basic_settings(f);
    s13.min_version = TLS1_3_VERSION;
    auto server13 = load_server(s13);
    SSL_CTX_set_max_proto_version(client->ctx(), TLS1_2_VERSION);
    Pair p(server13->ctx(), client->ctx(), "site.example.com");
    auto [s, c] = p.handshake();
    CHECK(s == Status::error);
    CHECK(c == Status::error);
    CHECK(p.server->error().find("protocol") != std::string::npos);
  }
  SECTION("a cipher list without a usable TLS 1.2 cipher for the key") {
    ServerSettings rsa_only = basic_settings(f);
    rsa_only.ciphers = "ECDHE-RSA-AES128-GCM-SHA256";  // the key is ECDSA
    auto srv = load_server(rsa_only);
    SSL_CTX_set_max_proto_version(client->ctx(), TLS1_2_VERSION);
    Pair p(srv->ctx(), client->ctx(), "site.example.com");
    CHECK(p.handshake().first == Status::error);
  }
}

TEST_CASE("an idle stream holds no transport buffer; post-handshake messages still flow", "[tls]") {
  Files f;
  auto server = load_server(basic_settings(f));
  auto client = trusting(f);
  const size_t empty = 2 * std::string().capacity();  // inline room only, nothing allocated
  Pair p(server->ctx(), client->ctx(), "site.example.com");
  p.establish();
  CHECK(p.server->transport_capacity() == empty);
  CHECK(p.client->transport_capacity() == empty);
  // A large write, taken only in part, then drained: nothing stays allocated.
  std::string big(100000, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 7 + i / 251);
  size_t written = 0;
  p.server->set_output_limit(SIZE_MAX);  // as TlsRelay does: all at once
  REQUIRE(p.server->write(big.data(), big.size(), &written) == Status::ok);
  REQUIRE(written == big.size());
  std::string records;
  char chunk[1000];
  records.append(chunk, p.server->take_output(chunk, sizeof chunk));
  CHECK(p.server->output_pending() > 0);
  records += p.server->take_output();
  CHECK(p.server->transport_capacity() == empty);
  // Fed in two parts, the first ending inside a record.
  p.client->feed(records.data(), 5000);
  std::string got = Pair::drain(*p.client);
  p.client->feed(records.data() + 5000, records.size() - 5000);
  got += Pair::drain(*p.client);
  CHECK(got == big);
  CHECK(p.client->input_pending() == 0);
  CHECK(p.client->transport_capacity() == empty);
  // TLS 1.3 KeyUpdate both ways (the peer answers with its own).
  REQUIRE(SSL_key_update(p.client->ssl(), SSL_KEY_UPDATE_REQUESTED) == 1);
  CHECK(p.send(*p.client, *p.server, "after the update") == "after the update");
  CHECK(p.send(*p.server, *p.client, "and back") == "and back");
  CHECK(p.send(*p.client, *p.server, "again") == "again");
}

TEST_CASE("SNI chooses the certificate by subjectAltName, the first is the default", "[tls]") {
  Files f;
  ServerSettings s;
  s.certificates.push_back(f.write("rsa", f.ca.issue({"rsa.example.com"}, KeyType::rsa2048)));
  s.certificates.push_back(
      f.write("ec", f.ca.issue({"ec.example.com", "*.ec.example.com"}, KeyType::ecdsa_p256)));
  auto server = load_server(s);
  REQUIRE(server->certificates().size() == 2);
  CHECK(server->certificates()[0].first_name == "rsa.example.com");
  CHECK_FALSE(server->certificates()[0].ecdsa);
  CHECK(server->certificates()[1].ecdsa);
  auto client = trusting(f);

  struct Case {
    std::string sni;
    int key;
    bool verifies;
  };
  for (const Case& c :
       {Case{"rsa.example.com", EVP_PKEY_RSA, true}, Case{"EC.example.com", EVP_PKEY_EC, true},
        Case{"www.ec.example.com", EVP_PKEY_EC, true}, Case{"other.example.org", EVP_PKEY_RSA, false},
        Case{"", EVP_PKEY_RSA, false}}) {
    INFO("sni " << c.sni);
    // Without SNI, nothing to verify the name against: check the choice only.
    Pair p(server->ctx(), client->ctx(), c.sni, c.verifies);
    auto [st, ct] = p.handshake();
    REQUIRE(st == Status::ok);
    REQUIRE(ct == Status::ok);
    CHECK(p.peer_key_type() == c.key);
    if (c.verifies) CHECK(SSL_get_verify_result(p.client->ssl()) == X509_V_OK);
  }
}

TEST_CASE("ALPN: the server's preference among what the client offers", "[tls]") {
  Files f;
  ServerSettings s = basic_settings(f);
  s.alpn = {"h2", "http/1.1"};
  auto server = load_server(s);
  struct Case {
    std::vector<std::string> offered;
    std::string chosen;
  };
  for (const Case& c :
       {Case{{"http/1.1", "h2"}, "h2"}, Case{{"http/1.1"}, "http/1.1"}, Case{{"smtp"}, ""}, Case{{}, ""}}) {
    auto client = trusting(f, c.offered);
    Pair p(server->ctx(), client->ctx(), "site.example.com");
    auto [st, ct] = p.handshake();
    REQUIRE(st == Status::ok);
    REQUIRE(ct == Status::ok);
    CHECK(p.server->alpn() == c.chosen);
    CHECK(p.client->alpn() == c.chosen);
  }
}

TEST_CASE("client certificates: verified against client_ca, refused otherwise", "[tls]") {
  Files f;
  ServerSettings s = basic_settings(f);
  s.client_ca = f.ca_path;
  auto server = load_server(s);
  TestCa other("another CA");

  ClientSettings cs;
  cs.ca_file = f.ca_path;
  SECTION("a certificate from client_ca is accepted") {
    auto files = f.write("client", f.ca.issue({"client.example.com"}, KeyType::ecdsa_p256));
    cs.cert = files.cert;
    cs.key = files.key;
    auto client = load_client(cs);
    Pair p(server->ctx(), client->ctx(), "site.example.com");
    auto [st, ct] = p.handshake();
    REQUIRE(st == Status::ok);
    REQUIRE(ct == Status::ok);
    CHECK(p.server->peer_certificate_verified());
    CHECK(p.send(*p.client, *p.server, "mutual") == "mutual");
  }
  SECTION("no certificate is refused") {
    auto client = load_client(cs);
    Pair p(server->ctx(), client->ctx(), "site.example.com");
    CHECK(p.handshake().first == Status::error);
    CHECK(p.server->error().find("certificate") != std::string::npos);
    // TLS 1.3: the client learns it from the server's alert.
    Status last;
    Pair::drain(*p.client, &last);
    CHECK(last == Status::error);
  }
  SECTION("a certificate from another CA is refused") {
    auto files = f.write("intruder", other.issue({"client.example.com"}, KeyType::ecdsa_p256));
    cs.cert = files.cert;
    cs.key = files.key;
    auto client = load_client(cs);
    Pair p(server->ctx(), client->ctx(), "site.example.com");
    CHECK(p.handshake().first == Status::error);
    CHECK(p.server->error().find("certificate verify failed") != std::string::npos);
  }
}

TEST_CASE("session tickets resume on another worker's context sharing the key store", "[tls]") {
  Files f;
  ServerSettings s = basic_settings(f);
  auto store = std::make_shared<TicketKeyStore>();
  auto worker_a = load_server(s, store);
  auto worker_b = load_server(s, store);
  auto stranger = load_server(s, std::make_shared<TicketKeyStore>());
  auto client = trusting(f);
  int max_version = GENERATE(TLS1_3_VERSION, TLS1_2_VERSION);
  SSL_CTX_set_max_proto_version(client->ctx(), max_version);
  SSL_CTX_set_session_cache_mode(client->ctx(), SSL_SESS_CACHE_CLIENT);
  INFO("client max version " << max_version);

  Pair first(worker_a->ctx(), client->ctx(), "site.example.com");
  REQUIRE(first.handshake().second == Status::ok);
  SSL_SESSION* session = first.session();
  REQUIRE(session);
  CHECK_FALSE(first.server->session_reused());

  // TLS 1.3: the tickets were the first records of lb's own record layer.
  CHECK(first.server->own_records() == (max_version == TLS1_3_VERSION));

  Pair second(worker_b->ctx(), client->ctx(), "site.example.com", true, session);
  REQUIRE(second.handshake().second == Status::ok);
  CHECK(second.server->session_reused());
  CHECK(second.client->session_reused());
  CHECK(second.server->own_records() == (max_version == TLS1_3_VERSION));
  CHECK(second.send(*second.client, *second.server, "resumed") == "resumed");
  CHECK(second.send(*second.server, *second.client, "and back") == "and back");

  // Keys of another store: a full handshake, not a failure.
  Pair third(stranger->ctx(), client->ctx(), "site.example.com", true, session);
  REQUIRE(third.handshake().second == Status::ok);
  CHECK_FALSE(third.server->session_reused());
  SSL_SESSION_free(session);

  SECTION("session_tickets = false: no resumption") {
    ServerSettings off = s;
    off.session_tickets = false;
    auto no_tickets = load_server(off);
    Pair a(no_tickets->ctx(), client->ctx(), "site.example.com");
    REQUIRE(a.handshake().second == Status::ok);
    SSL_SESSION* sess = a.session();
    Pair b(no_tickets->ctx(), client->ctx(), "site.example.com", true, sess);
    REQUIRE(b.handshake().second == Status::ok);
    CHECK_FALSE(b.server->session_reused());
    SSL_SESSION_free(sess);
  }
}

TEST_CASE("ticket keys rotate: the previous keys still resume, then age out", "[tls]") {
  Files f;
  auto now = std::make_shared<std::chrono::steady_clock::time_point>(std::chrono::steady_clock::now());
  auto store = std::make_shared<TicketKeyStore>(std::chrono::hours(1), 3, [now] { return *now; });
  auto server = load_server(basic_settings(f), store);
  auto client = trusting(f);

  Pair first(server->ctx(), client->ctx(), "site.example.com");
  REQUIRE(first.handshake().second == Status::ok);
  SSL_SESSION* session = first.session();
  auto key0 = store->current();

  *now += std::chrono::minutes(61);  // due: the next use rotates
  auto key1 = store->current();
  CHECK(key1.name != key0.name);
  Pair second(server->ctx(), client->ctx(), "site.example.com", true, session);
  REQUIRE(second.handshake().second == Status::ok);
  CHECK(second.server->session_reused());  // by the previous key

  store->rotate();
  store->rotate();  // key0 is now the 4th key: gone with keep = 3
  Pair third(server->ctx(), client->ctx(), "site.example.com", true, session);
  REQUIRE(third.handshake().second == Status::ok);
  CHECK_FALSE(third.server->session_reused());
  SSL_SESSION_free(session);
}

TEST_CASE("ticket key store shared by threads handshaking at once while keys rotate", "[tls][threads]") {
  Files f;
  auto store = std::make_shared<TicketKeyStore>();
  ServerSettings s = basic_settings(f);
  auto worker_a = load_server(s, store);
  auto worker_b = load_server(s, store);
  auto client = trusting(f);
  std::atomic<int> resumed{0}, failed{0};
  std::atomic<bool> stop{false};
  std::thread rotator([&] {
    for (int i = 0; i < 200 && !stop; ++i) {
      store->rotate();
      std::this_thread::yield();
    }
  });
  std::vector<std::thread> workers;
  for (int t = 0; t < 4; ++t) {
    workers.emplace_back([&, t] {
      for (int i = 0; i < 10; ++i) {
        std::string error;
        auto srv = TlsStream::server((t % 2 ? worker_a : worker_b)->ctx(), &error);
        auto cli = TlsStream::client(client->ctx(), "site.example.com", true, &error);
        auto pump = [&] {
          for (int k = 0; k < 20; ++k) {
            std::string a = cli->take_output(), b = srv->take_output();
            if (a.empty() && b.empty()) break;
            srv->feed(a.data(), a.size());
            cli->feed(b.data(), b.size());
            srv->handshake();
            cli->handshake();
          }
        };
        cli->handshake();
        pump();
        char buf[256];
        size_t n;
        cli->read(buf, sizeof buf, &n);  // takes the tickets
        SSL_SESSION* sess = SSL_get1_session(cli->ssl());
        auto srv2 = TlsStream::server((t % 2 ? worker_b : worker_a)->ctx(), &error);
        auto cli2 = TlsStream::client(client->ctx(), "site.example.com", true, &error);
        SSL_set_session(cli2->ssl(), sess);
        srv.swap(srv2);
        cli.swap(cli2);
        cli->handshake();
        pump();
        if (!srv->handshake_done() || !cli->handshake_done()) ++failed;
        if (srv->session_reused()) ++resumed;
        SSL_SESSION_free(sess);
      }
    });
  }
  for (auto& w : workers) w.join();
  stop = true;
  rotator.join();
  CHECK(failed == 0);
  // Rotation races may retire a key between the two handshakes (at most
  // 200 rotations over 40 resumptions), but most resume.
  CHECK(resumed > 0);
}

TEST_CASE("close_notify is sent and expected; EOF without it is a truncation", "[tls]") {
  Files f;
  auto server = load_server(basic_settings(f));
  auto client = trusting(f);
  Pair p(server->ctx(), client->ctx(), "site.example.com");
  p.establish();  // consume tickets

  SECTION("close_notify from the client ends its direction only") {
    size_t w;
    REQUIRE(p.client->write("last", 4, &w) == Status::ok);
    p.client->shutdown();
    CHECK(p.client->shutdown_sent());
    CHECK(p.client->write("x", 1, &w) == Status::error);
    p.move();
    Status last;
    CHECK(Pair::drain(*p.server, &last) == "last");
    CHECK(last == Status::closed);
    CHECK(p.server->close_notify_received());
    // Half-close: the server still answers, then closes too.
    CHECK(p.send(*p.server, *p.client, "answer") == "answer");
    p.server->shutdown();
    p.move();
    Pair::drain(*p.client, &last);
    CHECK(last == Status::closed);
  }
  SECTION("EOF without close_notify") {
    p.server->feed_eof();
    Status last;
    Pair::drain(*p.server, &last);
    CHECK(last == Status::truncated);
  }
  SECTION("EOF in the middle of a handshake is a failed handshake") {
    Pair q(server->ctx(), client->ctx(), "site.example.com");
    q.client->handshake();
    std::string hello = q.client->take_output();
    q.server->feed(hello.data(), hello.size() / 2);
    CHECK(q.server->handshake() == Status::want_input);
    q.server->feed_eof();
    CHECK(q.server->handshake() == Status::error);
  }
  SECTION("garbage is a failed handshake") {
    Pair q(server->ctx(), client->ctx(), "site.example.com");
    std::string http = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    q.server->feed(http.data(), http.size());
    CHECK(q.server->handshake() == Status::error);
    CHECK_FALSE(q.server->error().empty());
  }
}

TEST_CASE("write stops at the output limit until the records are taken", "[tls]") {
  Files f;
  auto server = load_server(basic_settings(f));
  auto client = trusting(f);
  Pair p(server->ctx(), client->ctx(), "site.example.com");
  p.establish();
  p.server->set_output_limit(32 * 1024);
  std::string big(1 << 20, 'x');
  size_t written = 0;
  REQUIRE(p.server->write(big.data(), big.size(), &written) == Status::ok);
  CHECK(written < big.size());
  CHECK(p.server->output_pending() < 32 * 1024 + 17 * 1024);
  size_t more = 0;
  REQUIRE(p.server->write(big.data() + written, big.size() - written, &more) == Status::ok);
  CHECK(more == 0);  // full until drained
  p.move();
  CHECK(Pair::drain(*p.client).size() == written);
  REQUIRE(p.server->write(big.data() + written, big.size() - written, &more) == Status::ok);
  CHECK(more > 0);
}

TEST_CASE("re-encryption client: verification of the name and of the chain", "[tls]") {
  Files f;
  ServerSettings s;
  s.certificates.push_back(
      f.write("backend", f.ca.issue({"backend.internal", "127.0.0.1"}, KeyType::ecdsa_p256)));
  auto server = load_server(s);
  auto client = trusting(f);

  SECTION("the right name, or the backend's IP, passes") {
    for (std::string name : {"backend.internal", "127.0.0.1"}) {
      Pair p(server->ctx(), client->ctx(), name);
      CHECK(p.handshake().second == Status::ok);
    }
  }
  SECTION("a wrong name fails") {
    Pair p(server->ctx(), client->ctx(), "other.internal");
    CHECK(p.handshake().second == Status::error);
    CHECK(p.client->error().find("hostname mismatch") != std::string::npos);
  }
  SECTION("an unknown CA fails, unless verify = false") {
    lb::test::TempDir dir;
    TestCa other("unrelated CA");
    ClientSettings wrong;
    wrong.ca_file = dir.write_file("other.pem", other.cert_pem());
    auto strict = load_client(wrong);
    Pair p(server->ctx(), strict->ctx(), "backend.internal");
    CHECK(p.handshake().second == Status::error);
    CHECK(p.client->error().find("certificate verify failed") != std::string::npos);

    wrong.verify = false;
    auto lax = load_client(wrong);
    Pair q(server->ctx(), lax->ctx(), "backend.internal", false);
    CHECK(q.handshake().second == Status::ok);
  }
}

TEST_CASE("loading fails as a whole and names the file", "[tls]") {
  Files f;
  ServerSettings good = basic_settings(f);
  auto other = f.write("other", f.ca.issue({"other.example.com"}, KeyType::rsa2048));
  auto store = std::make_shared<TicketKeyStore>();
  auto fails = [&](const ServerSettings& s, const std::string& needle) {
    std::string error;
    auto ctx = ServerContext::load(s, store, &error);
    CHECK_FALSE(ctx);
    INFO(error);
    CHECK(error.find(needle) != std::string::npos);
  };
  SECTION("a missing certificate file") {
    ServerSettings s = good;
    s.certificates.push_back({f.dir.path() + "/missing.pem", other.key});
    fails(s, f.dir.path() + "/missing.pem: cannot open");
  }
  SECTION("garbage in a certificate file") {
    ServerSettings s = good;
    s.certificates.push_back({f.dir.write_file("junk.pem", "not a certificate\n"), other.key});
    fails(s, "junk.pem: no PEM certificate");
  }
  SECTION("a truncated chain") {
    std::string pem = f.ca.issue({"t.example.com"}, KeyType::ecdsa_p256).cert;
    std::string cut = pem.substr(0, pem.size() - 200);
    ServerSettings s = good;
    s.certificates.push_back({f.dir.write_file("cut.pem", cut), other.key});
    fails(s, "cut.pem: invalid certificate in the chain");
  }
  SECTION("a key that does not match") {
    ServerSettings s = good;
    s.certificates.push_back({other.cert, good.certificates[0].key});
    fails(s, "site.key: the key does not match the certificate");
  }
  SECTION("a broken key file") {
    ServerSettings s = good;
    s.certificates.push_back(
        {other.cert, f.dir.write_file("bad.key", "-----BEGIN PRIVATE KEY-----\nAAAA\n")});
    fails(s, "bad.key: no usable PEM private key");
  }
  SECTION("a broken client_ca") {
    ServerSettings s = good;
    s.client_ca = f.dir.write_file("ca-junk.pem", "junk");
    fails(s, "client_ca");
    fails(s, "ca-junk.pem");
  }
  SECTION("an unknown cipher list") {
    ServerSettings s = good;
    s.ciphers = "NO-SUCH-CIPHER";
    fails(s, "tls_ciphers");
  }
  SECTION("client: a ca_file that is not there") {
    ClientSettings cs;
    cs.ca_file = f.dir.path() + "/nope.pem";
    std::string error;
    CHECK_FALSE(ClientContext::load(cs, &error));
    CHECK(error.find("nope.pem: cannot open") != std::string::npos);
  }
}

TEST_CASE("certificate facts and the checks of lb --check", "[tls]") {
  Files f;
  ServerSettings s;
  s.certificates.push_back(
      f.write("api", f.ca.issue({"api.example.com", "*.example.net"}, KeyType::ecdsa_p256)));
  s.certificates.push_back(f.write("old", f.ca.issue({"old.example.com"}, KeyType::rsa2048, -7200, -3600)));
  auto server = load_server(s);
  const auto& certs = server->certificates();
  REQUIRE(certs.size() == 2);
  CHECK(certs[0].first_name == "api.example.com");
  int64_t now = static_cast<int64_t>(time(nullptr));
  CHECK(certs[0].not_after > now + 86400 - 600);
  CHECK(certs[0].not_after < now + 86400 + 600);
  CHECK(certs[1].not_after < now);

  auto findings = server->check({"api.example.com", "*.example.net"}, now);
  // old.example.com: expired (error) and names none of the routes (warning).
  REQUIRE(findings.size() == 2);
  CHECK(findings[0].error);
  CHECK(findings[0].message.find("old.pem (old.example.com) expired") != std::string::npos);
  CHECK_FALSE(findings[1].error);
  CHECK(findings[1].message.find("old.pem (old.example.com) names none of the server names") !=
        std::string::npos);

  CHECK(server->check({}, now).size() == 1);                 // no routes: the expiry only
  CHECK(server->check({"www.example.net"}, 0).size() == 1);  // not expired then; old names none
}

// ---- lb's own TLS 1.3 records after the handshake (record_layer.h) ----

namespace {

// The client's traffic secret, from OpenSSL's key log of the client side, so
// that a test can write records an OpenSSL client would not.
std::string g_client_secret;

void client_key_log(const SSL* ssl, const char* line) {
  std::string l(line);
  const std::string label = "CLIENT_TRAFFIC_SECRET_0 ";
  if (SSL_is_server(ssl) || l.rfind(label, 0) != 0) return;
  std::string hex = l.substr(l.rfind(' ') + 1);
  g_client_secret.clear();
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    g_client_secret += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
}

// A TLS 1.3 connection whose client records the test writes itself.
struct Forger {
  Files f;
  std::unique_ptr<ServerContext> server = load_server(basic_settings(f));
  std::unique_ptr<ClientContext> client = trusting(f);
  std::unique_ptr<Pair> p;
  std::unique_ptr<lb::tls::RecordLayer> out;  // the client's records

  explicit Forger(const char* suite = "TLS_AES_128_GCM_SHA256") {
    SSL_CTX_set_keylog_callback(client->ctx(), client_key_log);
    REQUIRE(SSL_CTX_set_ciphersuites(client->ctx(), suite) == 1);
    p = std::make_unique<Pair>(server->ctx(), client->ctx(), "site.example.com");
    p->establish();
    REQUIRE(p->server->own_records());
    auto s =
        lb::tls::RecordLayer::suite_for(SSL_CIPHER_get_protocol_id(SSL_get_current_cipher(p->client->ssl())));
    REQUIRE(s);
    out = lb::tls::RecordLayer::create(*s, g_client_secret, g_client_secret, 0, 0);
    REQUIRE(out);
  }

  // Feeds the server one record of inner type `type` and reads what it gives.
  Status send(uint8_t type, const std::string& content, std::string* got = nullptr) {
    std::string rec;
    REQUIRE(out->seal(type, content.data(), content.size(), rec));
    return feed(rec, got);
  }
  Status feed(const std::string& bytes, std::string* got = nullptr) {
    p->server->feed(bytes.data(), bytes.size());
    Status last;
    std::string data = Pair::drain(*p->server, &last);
    if (got) *got += data;
    return last;
  }
  // What the real client makes of the server's records since.
  Status client_reads(std::string* got = nullptr) {
    p->move();
    Status last;
    std::string data = Pair::drain(*p->client, &last);
    if (got) *got = data;
    return last;
  }
};

}  // namespace

TEST_CASE("own records: every TLS 1.3 suite, data both ways, the facts kept", "[tls][records]") {
  const char* suite =
      GENERATE("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256");
  INFO(suite);
  Files f;
  ServerSettings s = basic_settings(f);
  s.alpn = {"h2", "http/1.1"};
  auto server = load_server(s);
  auto client = trusting(f, {"http/1.1"});
  REQUIRE(SSL_CTX_set_ciphersuites(client->ctx(), suite) == 1);
  Pair p(server->ctx(), client->ctx(), "site.example.com");
  p.establish();
  REQUIRE(p.server->own_records());
  CHECK(std::string(p.server->cipher()) == suite);
  CHECK(std::string(p.server->version()) == "TLSv1.3");
  CHECK(p.server->alpn() == "http/1.1");
  CHECK(p.server->server_name() == "site.example.com");
  CHECK_FALSE(p.server->session_reused());
  CHECK_FALSE(p.server->peer_certificate_presented());
  // Many records each way, sizes across the record boundary.
  p.server->set_output_limit(SIZE_MAX);
  p.client->set_output_limit(SIZE_MAX);
  for (size_t len : {size_t{0}, size_t{1}, size_t{16383}, size_t{16384}, size_t{16385}, size_t{300000}}) {
    std::string data(len, '\0');
    for (size_t i = 0; i < len; ++i) data[i] = static_cast<char>(i * 31 + len);
    if (len == 0) continue;
    CHECK(p.send(*p.client, *p.server, data) == data);
    CHECK(p.send(*p.server, *p.client, data) == data);
  }
  // Fed one byte at a time.
  size_t w = 0;
  REQUIRE(p.client->write("one byte at a time", 18, &w) == Status::ok);
  std::string rec = p.client->take_output();
  std::string got;
  for (char c : rec) {
    p.server->feed(&c, 1);
    got += Pair::drain(*p.server);
  }
  CHECK(got == "one byte at a time");
  // Key updates from the client, asked to answer and not.
  for (int kind : {SSL_KEY_UPDATE_REQUESTED, SSL_KEY_UPDATE_NOT_REQUESTED, SSL_KEY_UPDATE_REQUESTED}) {
    REQUIRE(SSL_key_update(p.client->ssl(), kind) == 1);
    CHECK(p.send(*p.client, *p.server, "after an update") == "after an update");
    CHECK(p.send(*p.server, *p.client, "answer") == "answer");
  }
  // close_notify both ways.
  p.client->shutdown();
  p.move();
  Status last;
  Pair::drain(*p.server, &last);
  CHECK(last == Status::closed);
  CHECK(p.server->close_notify_received());
  CHECK(p.send(*p.server, *p.client, "half-closed") == "half-closed");
  p.server->shutdown();
  p.move();
  Pair::drain(*p.client, &last);
  CHECK(last == Status::closed);
}

TEST_CASE("own records: a client certificate's facts survive the hand-over", "[tls][records]") {
  Files f;
  ServerSettings s = basic_settings(f);
  s.client_ca = f.ca_path;
  auto server = load_server(s);
  ClientSettings cs;
  cs.ca_file = f.ca_path;
  auto files = f.write("client", f.ca.issue({"client.example.com"}, KeyType::ecdsa_p256));
  cs.cert = files.cert;
  cs.key = files.key;
  auto client = load_client(cs);
  Pair p(server->ctx(), client->ctx(), "site.example.com");
  p.establish();
  REQUIRE(p.server->own_records());
  CHECK(p.server->peer_certificate_presented());
  CHECK(p.server->peer_certificate_verified());
  CHECK(p.send(*p.client, *p.server, "with a certificate") == "with a certificate");
}

TEST_CASE("own records: what a client may and may not send after the handshake", "[tls][records]") {
  const char* suite = GENERATE("TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256");
  INFO(suite);
  Forger t(suite);
  std::string got;

  SECTION("empty and padded application data") {
    CHECK(t.send(23, "") == Status::want_input);
    // Content "abc" of type 23, then zero padding: sealed as type 0 after it.
    CHECK(t.send(0, std::string("abc\x17", 4) + std::string(200, '\0'), &got) == Status::want_input);
    CHECK(got == "abc");
    CHECK(t.p->server->input_pending() == 0);
    CHECK(t.p->server->transport_capacity() == 2 * std::string().capacity());
  }
  SECTION("a KeyUpdate split across two records, then data under the new keys") {
    CHECK(t.send(22, std::string("\x18\x00", 2)) == Status::want_input);
    CHECK(t.send(22, std::string("\x00\x01\x00", 3)) == Status::want_input);
    REQUIRE(t.out->update_write_key());
    CHECK(t.send(23, "new keys", &got) == Status::want_input);
    CHECK(got == "new keys");
    CHECK(t.p->server->output_pending() == 0);  // not requested: no answer
  }
  SECTION("a requested KeyUpdate is answered before the next data") {
    CHECK(t.send(22, std::string("\x18\x00\x00\x01\x01", 5)) == Status::want_input);
    CHECK(t.p->server->output_pending() > 0);  // the server's own KeyUpdate
    size_t w;
    REQUIRE(t.p->server->write("under new keys", 14, &w) == Status::ok);
    CHECK(t.client_reads(&got) == Status::want_input);
    CHECK(got == "under new keys");
  }
  SECTION("user_canceled is ignored, close_notify ends the direction") {
    CHECK(t.send(21, std::string("\x01\x5a", 2)) == Status::want_input);
    CHECK(t.send(21, std::string("\x01\x00", 2)) == Status::closed);
    CHECK(t.p->server->close_notify_received());
    CHECK(t.send(23, "after close_notify", &got) == Status::closed);
    CHECK(got.empty());
  }
}

// Each of these ends the connection: an error, and (but for the peer's own
// alert) a fatal alert the real client reads.
TEST_CASE("own records: what ends the connection", "[tls][records]") {
  const char* suite = GENERATE("TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256");
  INFO(suite);
  struct Bad {
    const char* what;
    std::function<Status(Forger&)> send;
    bool alert;
  };
  const Bad bad = GENERATE(
      Bad{"a tampered record",
          [](Forger& t) {
            std::string rec;
            REQUIRE(t.out->seal(23, "x", 1, rec));
            rec[7] ^= 1;
            return t.feed(rec);
          },
          true},
      Bad{"an unprotected alert",
          [](Forger& t) { return t.feed(std::string("\x15\x03\x03\x00\x02\x01\x00", 7)); }, true},
      Bad{"a change_cipher_spec",
          [](Forger& t) { return t.feed(std::string("\x14\x03\x03\x00\x01\x01", 6)); }, true},
      Bad{"a record over 2^14 + 256 bytes",
          [](Forger& t) { return t.feed(std::string("\x17\x03\x03\x41\x01", 5)); }, true},
      Bad{"an inner plaintext of zeros only", [](Forger& t) { return t.send(0, std::string(5, '\0')); },
          true},
      Bad{"a change_cipher_spec inside", [](Forger& t) { return t.send(20, "\x01"); }, true},
      Bad{"a NewSessionTicket from the client",
          [](Forger& t) { return t.send(22, std::string("\x04\x00\x00\x01\x00", 5)); }, true},
      Bad{"a KeyUpdate of two bytes",
          [](Forger& t) { return t.send(22, std::string("\x18\x00\x00\x02\x00\x00", 6)); }, true},
      Bad{"a KeyUpdate with another value",
          [](Forger& t) { return t.send(22, std::string("\x18\x00\x00\x01\x02", 5)); }, true},
      Bad{"data after a KeyUpdate in its record",
          [](Forger& t) { return t.send(22, std::string("\x18\x00\x00\x01\x00\x18", 6)); }, true},
      Bad{"an alert of three bytes", [](Forger& t) { return t.send(21, std::string("\x02\x28\x00", 3)); },
          true},
      Bad{"the peer's fatal alert", [](Forger& t) { return t.send(21, std::string("\x02\x28", 2)); }, false});
  INFO(bad.what);
  Forger t(suite);
  CHECK(bad.send(t) == Status::error);
  CHECK_FALSE(t.p->server->error().empty());
  size_t w;
  CHECK(t.p->server->write("x", 1, &w) == Status::error);  // nothing more goes out
  CHECK(t.p->server->write("", 0, &w) == Status::error);   // (found by fuzz_records)
  if (bad.alert) {
    CHECK(t.client_reads() == Status::error);  // the client got the alert
    CHECK(std::string(t.p->client->error()).find("alert") != std::string::npos);
  } else {
    CHECK(t.p->server->output_pending() == 0);
  }
}

TEST_CASE("own records: a record cut by the end of the transport is a truncation", "[tls][records]") {
  Forger t;
  std::string rec;
  REQUIRE(t.out->seal(23, "cut", 3, rec));
  CHECK(t.feed(rec.substr(0, rec.size() - 1)) == Status::want_input);
  t.p->server->feed_eof();
  Status last;
  Pair::drain(*t.p->server, &last);
  CHECK(last == Status::truncated);
}
