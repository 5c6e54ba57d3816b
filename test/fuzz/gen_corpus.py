#!/usr/bin/env python3
"""Writes the checked-in seed corpora of test/fuzz/corpus/.

The seeds are committed; this script only documents how the binary ones were
made and regenerates them after a format change:

    python3 test/fuzz/gen_corpus.py      (rewrites corpus/{proxy,http,dns,client_hello})

The client_hello seeds are the first bytes real clients (openssl s_client,
Python's ssl, curl; from Debian) send to a listener of this script, plus
framings of them (two records, one record per byte) and hand-made cases.
A ClientHello carries ephemeral public key shares only, no secrets.

The lb.toml seeds of corpus/conf are plain text and edited by hand.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("latin-1")
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- PROXY protocol --------------------------------------------------------

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(cmd, fam, body):
    return V2_SIG + bytes([0x20 | cmd, fam]) + struct.pack(">H", len(body)) + body


def v4(a):
    return bytes(int(x) for x in a.split("."))


def v6(words):
    return b"".join(struct.pack(">H", w) for w in words)


def tlv(t, value):
    return bytes([t]) + struct.pack(">H", len(value)) + value


def proxy():
    w = lambda n, d: write("proxy", n, d)
    w("v1_tcp4", "PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n")
    w("v1_tcp4_payload", "PROXY TCP4 10.0.0.1 10.0.0.2 1 65535\r\nGET / HTTP/1.1\r\n\r\n")
    w("v1_tcp6", "PROXY TCP6 2001:db8::1 2001:db8::ff 40000 8080\r\n")
    w("v1_tcp6_mapped", "PROXY TCP6 ::ffff:192.0.2.1 ::1 0 80\r\n")
    w("v1_unknown", "PROXY UNKNOWN\r\n")
    w("v1_unknown_addrs", "PROXY UNKNOWN ffff:f::1 ffff:f::2 65535 65535\r\n")
    w("v1_max_line", "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                     "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n")
    w("v1_partial", "PROXY TCP4 192.0.2.1 198.5")
    w("v1_bad_port", "PROXY TCP4 192.0.2.1 198.51.100.7 65536 443\r\n")
    w("v1_leading_zero_port", "PROXY TCP4 192.0.2.1 198.51.100.7 0443 443\r\n")
    w("v1_double_space", "PROXY TCP4  192.0.2.1 198.51.100.7 1 2\r\n")
    w("v1_bare_lf", "PROXY TCP4 192.0.2.1 198.51.100.7 1 2\n")
    w("v1_family_mismatch", "PROXY TCP4 2001:db8::1 192.0.2.1 1 2\r\n")
    w("v1_oversized", "PROXY UNKNOWN " + "x" * 120 + "\r\n")
    w("v1_nul", "PROXY TCP4 192.0.2.1\x00198.51.100.7 1 2\r\n")

    addr4 = v4("192.0.2.1") + v4("198.51.100.7") + struct.pack(">HH", 56324, 443)
    addr6 = (v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]) + v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xff])
             + struct.pack(">HH", 40000, 8080))
    w("v2_tcp4", v2(1, 0x11, addr4))
    w("v2_udp4", v2(1, 0x12, addr4))
    w("v2_tcp6", v2(1, 0x21, addr6))
    w("v2_udp6_payload", v2(1, 0x22, addr6) + b"\x12\x34dns-query")
    w("v2_local", v2(0, 0x00, b""))
    w("v2_local_with_block", v2(0, 0x11, addr4))
    w("v2_unspec", v2(1, 0x00, b""))
    unix_block = b"/run/client.sock".ljust(108, b"\0") + b"/run/lb.sock".ljust(108, b"\0")
    w("v2_unix", v2(1, 0x31, unix_block))
    tlvs = (tlv(0x01, b"h2") + tlv(0x02, b"example.com") + tlv(0x04, b"") +
            tlv(0x03, b"\xde\xad\xbe\xef") +
            tlv(0x20, b"\x07" + b"\x00\x00\x00\x00" + tlv(0x21, b"TLSv1.3") + tlv(0x22, b"cn")))
    w("v2_tcp4_tlvs", v2(1, 0x11, addr4 + tlvs))
    w("v2_tlv_overrun", v2(1, 0x11, addr4 + b"\x01\x00\x10ab"))
    w("v2_tlv_short_header", v2(1, 0x11, addr4 + b"\x01\x00"))
    w("v2_short_length", V2_SIG + b"\x21\x11\x00\x04" + addr4)
    w("v2_bad_version", V2_SIG + b"\x11\x11\x00\x0c" + addr4)
    w("v2_bad_command", V2_SIG + b"\x22\x11\x00\x0c" + addr4)
    w("v2_bad_family", V2_SIG + b"\x21\x41\x00\x0c" + addr4)
    w("v2_oversized", V2_SIG + b"\x21\x11\x08\x00" + addr4)
    w("v2_partial", v2(1, 0x21, addr6)[:30])
    w("v2_sig_only", V2_SIG)
    w("http_not_proxy", "GET / HTTP/1.1\r\n\r\n")


# ---- admin HTTP --------------------------------------------------------------
# First byte: bits 0-2 = number of chunk-size bytes that follow, bit 3 = tight
# limits (see fuzz_http.cc); chunk sizes are byte + 1.


def http_seed(name, stream, chunks=(), tight=False):
    assert len(chunks) <= 7
    head = bytes([len(chunks) | (8 if tight else 0)]) + bytes(c - 1 for c in chunks)
    write("http", name, head + stream.encode("latin-1"))


def http():
    http_seed("get_healthz", "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:9900\r\n\r\n")
    http_seed("get_metrics_http10", "GET /metrics HTTP/1.0\r\n\r\n")
    http_seed("http10_keepalive",
              "GET /api/v1/status HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
              "GET /healthz HTTP/1.0\r\n\r\n")
    http_seed("pipelined",
              "GET /healthz HTTP/1.1\r\n\r\n"
              "GET /api/v1/status?pretty=1 HTTP/1.1\r\nAccept: application/json\r\n\r\n"
              "HEAD /metrics HTTP/1.1\r\nConnection: close\r\n\r\n"
              "GET /never-read HTTP/1.1\r\n\r\n")
    body = '{"state":"drain"}'
    post = ("POST /api/v1/pools/web/backends/10.0.0.11%3A8080 HTTP/1.1\r\n"
            "Host: lb\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}")
    http_seed("post_drain", post)
    http_seed("post_drain_bytewise", post, chunks=(1,))
    http_seed("post_weight_split", post.replace(body, '{"weight":250}')
              .replace(f"Content-Length: {len(body)}", "Content-Length: 14"), chunks=(7, 3, 29, 2))
    http_seed("pipelined_split",
              "GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyz"
              "GET /c HTTP/1.1\r\n\r\n", chunks=(5, 17, 1, 40))
    http_seed("expect_continue",
              "POST /api/v1/pools/p/backends/b HTTP/1.1\r\nExpect: 100-continue\r\n"
              "Content-Length: 18\r\n\r\n{\"state\":\"active\"}", chunks=(80, 10))
    http_seed("bare_lf_and_empty_lines", "\r\n\nGET /healthz HTTP/1.1\nHost: x\n\n")
    http_seed("absolute_form", "GET http://lb:9900/api/v1/status?x=%20 HTTP/1.1\r\n\r\n")
    http_seed("options_star", "OPTIONS * HTTP/1.1\r\n\r\n")
    http_seed("percent_escapes",
              "GET /api/v1/pools/a%2Fb/backends/%5B%3A%3A1%5D%3A80 HTTP/1.1\r\n\r\n")
    http_seed("percent_nul", "GET /x%00y HTTP/1.1\r\n\r\n")
    http_seed("percent_truncated", "GET /x%4 HTTP/1.1\r\n\r\n")
    http_seed("chunked_te", "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    http_seed("te_and_cl", "POST /x HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc")
    http_seed("conflicting_cl", "POST /x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd")
    http_seed("repeated_cl", "POST /x HTTP/1.1\r\nContent-Length: 3\r\ncontent-length:  3 \r\n\r\nabc")
    http_seed("folded_header", "GET / HTTP/1.1\r\nX-A: 1\r\n  continued\r\n\r\n")
    http_seed("bad_version", "GET / HTTP/2.0\r\n\r\n")
    http_seed("bare_cr", "GET / HTTP/1.1\rX: y\r\n\r\n")
    http_seed("connection_list", "GET / HTTP/1.1\r\nConnection: Upgrade, close\r\n\r\nGET / HTTP/1.1\r\n\r\n")
    http_seed("tight_431", "GET /" + "a" * 150 + " HTTP/1.1\r\nX-Long: " + "b" * 80 + "\r\n\r\n",
              tight=True)
    http_seed("tight_413", "POST /x HTTP/1.1\r\nContent-Length: 49\r\n\r\n" + "z" * 49, tight=True)
    http_seed("tight_headers", "GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\ne: 5\r\n\r\n",
              tight=True)
    http_seed("tight_ok_body", "POST /x HTTP/1.1\r\nContent-Length: 48\r\n\r\n" + "q" * 48,
              chunks=(3,), tight=True)


# ---- DNS replies ---------------------------------------------------------------


def name(n):
    out = b""
    for label in n.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def header(ident, flags, qd=1, an=0, ns=0, ar=0):
    return struct.pack(">HHHHHH", ident, flags, qd, an, ns, ar)


def dns():
    w = lambda n, d: write("dns", n, d)
    q = name("health.example") + struct.pack(">HH", 1, 1)
    answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 300, 4) + bytes([192, 0, 2, 53])
    w("noerror_answer_ptr", header(0x1234, 0x8180, an=1) + q + answer)
    w("nxdomain", header(0x1234, 0x8183) + q)
    w("servfail", header(0x4242, 0x8182) + q)
    w("refused_no_question", header(0x0001, 0x8185, qd=0))
    w("rcode_15", header(0x0001, 0x818f) + q)
    w("query_not_reply", header(0x1234, 0x0100) + q)
    w("root_question", header(0xbeef, 0x8180) + b"\0" + struct.pack(">HH", 1, 1))
    w("uppercase_name", header(0x1234, 0x8180) + name("HeAlTh.Example.") + struct.pack(">HH", 1, 1))
    w("other_type", header(0x1234, 0x8180) + name("health.example") + struct.pack(">HH", 28, 1))
    # Name compression: a pointer to itself, a two-pointer cycle, a pointer
    # past the end, a forward pointer, and a legal back-reference between
    # questions.
    w("ptr_self_loop", header(0x1234, 0x8180) + b"\xc0\x0c" + struct.pack(">HH", 1, 1))
    w("ptr_two_cycle", header(0x1234, 0x8180) + b"\xc0\x0e\xc0\x0c" + struct.pack(">HH", 1, 1))
    w("ptr_out_of_range", header(0x1234, 0x8180) + b"\xc1\x00" + struct.pack(">HH", 1, 1))
    w("ptr_truncated", header(0x1234, 0x8180) + b"\x06health\xc0")
    w("ptr_forward", header(0x1234, 0x8180) + b"\xc0\x12" + struct.pack(">HH", 1, 1) + name("fwd.example"))
    w("ptr_label_then_ptr", header(0x1234, 0x8180, qd=2) + q +
      b"\x03www\xc0\x0c" + struct.pack(">HH", 1, 1))
    # The question points at the last of 40 pointers, each to the one before,
    # ending at a root label: longer than the hop limit.
    chain = b"\x00"          # root label at offset 18
    for i in range(40):
        chain += b"\xc0" + bytes([18 + (2 * i - 1 if i else 0)])
    last = 18 + 1 + 2 * 39
    w("ptr_long_chain", header(0x1234, 0x8180) + b"\xc0" + bytes([last]) +
      struct.pack(">HH", 1, 1) + chain)
    w("reserved_label_bits", header(0x1234, 0x8180) + b"\x41abc\x00" + struct.pack(">HH", 1, 1))
    w("label_overrun", header(0x1234, 0x8180) + b"\x3fabc")
    long_name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    w("max_name", header(0x1234, 0x8180) + name(long_name) + struct.pack(">HH", 1, 1))
    w("over_max_name", header(0x1234, 0x8180) + name(long_name + "e") + struct.pack(">HH", 1, 1))
    w("dot_in_label", header(0x1234, 0x8180) + b"\x03a.b\x00" + struct.pack(">HH", 1, 1))
    w("qdcount_lies", header(0x1234, 0x8180, qd=0xffff) + q)
    w("truncated_header", header(0x1234, 0x8180)[:7])
    w("tc_bit", header(0x1234, 0x8380) + q)


# ---- TLS ClientHello ---------------------------------------------------------


def capture(argv_for_port):
    """First bytes a client sends: up to its whole first flight (the client
    waits for the server's answer, so a short quiet read is the end)."""
    import socket
    import subprocess
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    p = subprocess.Popen(argv_for_port(port), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    srv.settimeout(20)
    conn, _ = srv.accept()
    conn.settimeout(2)
    data = b""
    while True:
        try:
            chunk = conn.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        data += chunk
        if len(data) >= 5 and len(data) >= 5 + struct.unpack(">H", data[3:5])[0]:
            break
    conn.close()
    srv.close()
    p.wait(timeout=30)
    return data


def reframe(record, size):
    """The handshake payload of a one-record hello, in records of `size`."""
    n = struct.unpack(">H", record[3:5])[0]
    payload = record[5:5 + n]
    out = b""
    for i in range(0, len(payload), size):
        part = payload[i:i + size]
        out += b"\x16\x03\x01" + struct.pack(">H", len(part)) + part
    return out


def client_hello():
    w = lambda name, data: write("client_hello", name, data)
    py = ("import socket, ssl, sys\n"
          "c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE\n"
          "c.set_alpn_protocols(['h2', 'http/1.1'])\n"
          "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
          "try:\n    c.wrap_socket(s, server_hostname='py.example.org')\nexcept Exception:\n    pass\n")
    hellos = {
        "openssl_s_client": lambda port: ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port,
                                          "-servername", "api.example.com", "-alpn", "h2,http/1.1"],
        "openssl_no_sni": lambda port: ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port,
                                        "-noservername", "-tls1_2"],
        "python_ssl": lambda port: ["/usr/bin/python3", "-c", py, str(port)],
        "curl": lambda port: ["curl", "-sk", "--max-time", "20", "-o", "/dev/null", "--resolve",
                              "curl.example.net:%d:127.0.0.1" % port, "https://curl.example.net:%d/" % port],
    }
    for name, argv in hellos.items():
        data = capture(argv)
        w(name, data)
    first = capture(hellos["openssl_s_client"])
    w("two_records", reframe(first, len(first) // 2))
    w("record_per_byte", reframe(first, 1)[:6000])
    w("http_get", b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
    w("sslv2_hello", b"\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10" + b"\x00" * 37)
    w("truncated", first[:60])
    w("alert_inside", first[:5 + 10].replace(first[3:5], struct.pack(">H", 10), 1) + b"\x15\x03\x03\x00\x02\x02\x28")
    w("oversize_length", b"\x16\x03\x01\x40\x00\x01\x00\x40\x00")


# ---- own TLS 1.3 records (fuzz_records.cc's script format) -----------------

def records():
    def data(b):  # operation 0: application data
        return b"\x00" + struct.pack(">H", len(b)) + b

    def rec(t, b):  # operation 1: a protected record of inner type t
        return b"\x01" + bytes([t]) + struct.pack(">H", len(b)) + b

    def raw(b):  # operation 2
        return b"\x02" + struct.pack(">H", len(b)) + b

    def server_writes(n):  # operation 4
        return b"\x04" + struct.pack(">H", n)

    key_update = b"\x18\x00\x00\x01"
    for suite in range(3):
        w = lambda name, script: write("records", "%s_%d" % (name, suite), bytes([suite]) + script)
        w("data", data(b"hello") + server_writes(100) + data(b"x" * 16384) + server_writes(20000))
        w("padding", rec(0, b"abc\x17" + b"\x00" * 64) + rec(23, b"") + data(b"after"))
        w("key_update_asked", rec(22, key_update + b"\x01") + server_writes(50) + b"\x03" + data(b"new keys"))
        w("key_update_split", rec(22, key_update[:2]) + rec(22, key_update[2:] + b"\x00") + b"\x03" + data(b"k"))
        w("close_notify", data(b"last") + rec(21, b"\x01\x5a") + rec(21, b"\x01\x00") + server_writes(10))
        w("fatal_alert", rec(21, b"\x02\x28") + server_writes(10))
        w("unprotected", raw(b"\x15\x03\x03\x00\x02\x01\x00") + data(b"late"))
        w("cut_then_eof", raw(b"\x17\x03\x03\x00\x40" + b"\x00" * 20) + b"\x05")


if __name__ == "__main__":
    proxy()
    http()
    dns()
    client_hello()
    records()
