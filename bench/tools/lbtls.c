/* lbtls: TLS load for bench/run's TLS rows (OpenSSL from Debian, the same
 * library every proxy under test links).
 *
 *   lbtls conn PORT SECONDS CONNS [resume]   TLS connections, CONNS at a time
 *   lbtls bulk PORT SECONDS                  one TLS connection downloading
 *
 * Every connection offers TLS 1.3 with the one suite TLS_AES_128_GCM_SHA256
 * (so every proxy runs AES-128-GCM), X25519, the server name "bench.test",
 * and verifies nothing (the client's CPU is the load side's: it should spend
 * as little as it can).
 *
 * "conn": each of CONNS slots connects, completes the handshake, sends
 * "GET /tiny.txt" with "Connection: close", reads the answer to the server's
 * end (so TIME_WAIT stays on the server side), sends close_notify, closes,
 * and starts again, for SECONDS (then those in flight may finish within 2 s).
 * A connection counts as done when the full answer (its Content-Length) has
 * arrived; anything else is an error. With "resume" each slot offers the
 * session (ticket) its previous connection received, so after the first
 * round every handshake is a resumption if the server accepts it; "resumed"
 * counts those it did.
 *
 * "bulk": one connection asks "GET /big.bin" again and again (keep-alive)
 * and reads the bodies for SECONDS; prints the body bytes received.
 *
 * Prints one JSON object. Single-threaded, epoll, bounded in time. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define DRAIN_NS 2000000000LL
#define MAX_CONNS 1024

static const char kTiny[] = "GET /tiny.txt HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\n\r\n";
static const char kBig[] = "GET /big.bin HTTP/1.1\r\nHost: bench.test\r\n\r\n";

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static SSL_CTX *client_ctx(void) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256");
    SSL_CTX_set1_groups_list(ctx, "X25519");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    /* A server that closes without close_notify after a complete answer is
       not an error here; the answer's length says whether it was complete. */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    return ctx;
}

static int tcp_socket(int port, int nonblock) {
    int fd = socket(AF_INET, SOCK_STREAM | (nonblock ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Length of a complete HTTP answer in buf (headers + Content-Length), or -1
   while incomplete; -2 when it is not a 200 answer with a length. */
static long answer_length(const char *buf, size_t n) {
    const char *end = memmem(buf, n, "\r\n\r\n", 4);
    if (!end) return -1;
    if (n < 12 || memcmp(buf, "HTTP/1.1 200", 12) != 0) return -2;
    const char *cl = memmem(buf, (size_t)(end - buf), "Content-Length:", 15);
    if (!cl) return -2;
    return (long)(end + 4 - buf) + strtol(cl + 15, NULL, 10);
}

/* ---- conn ---------------------------------------------------------------- */

enum { CONNECTING, HANDSHAKE, WRITING, READING, FREE };

struct slot {
    int fd, state;
    SSL *ssl;
    SSL_SESSION *session; /* to offer on the next connection (resume) */
    size_t got;
    long want;
    char buf[1024];
};

static int ep;
static long done, errors, resumed;

static void watch(struct slot *s, int op, uint32_t ev) {
    struct epoll_event e = {.events = ev, .data.ptr = s};
    epoll_ctl(ep, op, s->fd, &e);
}

static void finish(struct slot *s, int ok, int resume) {
    if (ok) {
        done++;
        if (SSL_session_reused(s->ssl)) resumed++;
        if (resume) {
            SSL_SESSION_free(s->session);
            s->session = SSL_get1_session(s->ssl);
        }
        SSL_shutdown(s->ssl); /* our close_notify; the server has closed */
    } else {
        errors++;
    }
    SSL_free(s->ssl);
    s->ssl = NULL;
    close(s->fd);
    s->fd = -1;
    s->state = FREE;
}

static void start(struct slot *s, int port) {
    s->fd = tcp_socket(port, 1);
    s->got = 0;
    s->want = -1;
    if (s->fd < 0) {
        errors++;
        s->state = FREE;
        return;
    }
    s->state = CONNECTING;
    watch(s, EPOLL_CTL_ADD, EPOLLOUT);
}

/* Advances a slot as far as it goes without blocking. */
static void step(struct slot *s, SSL_CTX *ctx, int resume) {
    for (;;) {
        int r, err;
        switch (s->state) {
        case CONNECTING: {
            int soerr = 0;
            socklen_t len = sizeof soerr;
            getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &soerr, &len);
            if (soerr) { finish(s, 0, resume); return; }
            s->ssl = SSL_new(ctx);
            SSL_set_fd(s->ssl, s->fd);
            SSL_set_tlsext_host_name(s->ssl, "bench.test");
            if (resume && s->session) SSL_set_session(s->ssl, s->session);
            SSL_set_connect_state(s->ssl);
            s->state = HANDSHAKE;
            continue;
        }
        case HANDSHAKE:
            r = SSL_do_handshake(s->ssl);
            if (r == 1) {
                s->state = WRITING;
                continue;
            }
            break;
        case WRITING:
            r = SSL_write(s->ssl, kTiny, sizeof kTiny - 1);
            if (r > 0) {
                s->state = READING;
                continue;
            }
            break;
        case READING:
            r = SSL_read(s->ssl, s->buf + s->got, sizeof s->buf - 1 - s->got);
            if (r > 0) {
                s->got += (size_t)r;
                if (s->want == -1) s->want = answer_length(s->buf, s->got);
                if (s->want == -2 || s->got >= sizeof s->buf - 1) { finish(s, 0, resume); return; }
                continue;
            }
            if (SSL_get_error(s->ssl, r) == SSL_ERROR_ZERO_RETURN)
                { finish(s, s->want >= 0 && (long)s->got >= s->want, resume); return; }
            break;
        default:
            return;
        }
        err = SSL_get_error(s->ssl, r);
        if (err == SSL_ERROR_WANT_READ) { watch(s, EPOLL_CTL_MOD, EPOLLIN); return; }
        if (err == SSL_ERROR_WANT_WRITE) { watch(s, EPOLL_CTL_MOD, EPOLLOUT); return; }
        ERR_clear_error();
        { finish(s, 0, resume); return; }
    }
}

static int run_conn(int port, double seconds, int conns, int resume) {
    SSL_CTX *ctx = client_ctx();
    if (!ctx) return 1;
    static struct slot slots[MAX_CONNS];
    ep = epoll_create1(0);
    int64_t t0 = now_ns(), stop = t0 + (int64_t)(seconds * 1e9), hard = stop + DRAIN_NS;
    for (int i = 0; i < conns; i++) {
        slots[i].session = NULL;
        slots[i].ssl = NULL;
        start(&slots[i], port);
    }
    struct epoll_event evs[256];
    int64_t t = t0;
    for (;;) {
        t = now_ns();
        int busy = 0;
        for (int i = 0; i < conns; i++) {
            if (slots[i].state == FREE && t < stop) start(&slots[i], port);
            if (slots[i].state != FREE) busy++;
        }
        if (busy == 0 || t >= hard) break;
        int n = epoll_wait(ep, evs, 256, 50);
        for (int i = 0; i < n; i++) step(evs[i].data.ptr, ctx, resume);
    }
    double elapsed = (double)(now_ns() - t0) / 1e9;
    for (int i = 0; i < conns; i++) {
        if (slots[i].state != FREE) finish(&slots[i], 0, 0); /* cut off at the limit */
        SSL_SESSION_free(slots[i].session);
    }
    printf("{\"done\": %ld, \"errors\": %ld, \"resumed\": %ld, \"elapsed_s\": %.3f, \"rate\": %.1f}\n", done,
           errors, resumed, elapsed, done / elapsed);
    SSL_CTX_free(ctx);
    return done > 0 ? 0 : 1;
}

/* ---- bulk ---------------------------------------------------------------- */

static int run_bulk(int port, double seconds) {
    SSL_CTX *ctx = client_ctx();
    int fd = ctx ? tcp_socket(port, 0) : -1;
    if (fd < 0) {
        printf("{\"error\": \"connect failed\"}\n");
        return 1;
    }
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    SSL_set_tlsext_host_name(ssl, "bench.test");
    if (SSL_connect(ssl) != 1) {
        printf("{\"error\": \"handshake failed\"}\n");
        return 1;
    }
    static char buf[65536];
    long long body = 0;
    long answers = 0;
    int64_t t0 = now_ns(), stop = t0 + (int64_t)(seconds * 1e9);
    int failed = 0;
    while (!failed && now_ns() < stop) {
        if (SSL_write(ssl, kBig, sizeof kBig - 1) <= 0) break;
        size_t head = 0;
        long want = -1;
        long long left = -1;
        while (left != 0 && now_ns() < stop) {
            int r = SSL_read(ssl, buf + (left < 0 ? head : 0), left < 0 ? (int)(sizeof buf - head) : (int)sizeof buf);
            if (r <= 0) {
                failed = 1;
                break;
            }
            if (left < 0) {
                head += (size_t)r;
                want = answer_length(buf, head);
                if (want == -2) failed = 1;
                if (want < 0) continue;
                const char *end = memmem(buf, head, "\r\n\r\n", 4);
                long hdr = (long)(end + 4 - buf);
                body += (long long)head - hdr;
                left = want - (long long)head;
            } else {
                body += r;
                left -= r;
            }
        }
        if (left == 0) answers++;
    }
    double elapsed = (double)(now_ns() - t0) / 1e9;
    printf("{\"bytes\": %lld, \"answers\": %ld, \"elapsed_s\": %.3f, \"gbps\": %.4f, \"cipher\": \"%s\", "
           "\"failed\": %d}\n",
           body, answers, elapsed, body * 8.0 / elapsed / 1e9, SSL_get_cipher_name(ssl), failed);
    close(fd);
    return body > 0 ? 0 : 1;
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    if (argc >= 5 && strcmp(argv[1], "conn") == 0) {
        int conns = atoi(argv[4]);
        if (conns < 1 || conns > MAX_CONNS) conns = 32;
        return run_conn(atoi(argv[2]), atof(argv[3]), conns, argc > 5 && strcmp(argv[5], "resume") == 0);
    }
    if (argc >= 4 && strcmp(argv[1], "bulk") == 0) return run_bulk(atoi(argv[2]), atof(argv[3]));
    fprintf(stderr, "usage: lbtls conn PORT SECONDS CONNS [resume] | lbtls bulk PORT SECONDS\n");
    return 2;
}
