/* lbload: constant-rate load for bench/run, where wrk and dnsperf do not fit.
 *
 *   lbload http PORT RATE SECONDS CONNS [close]   HTTP/1.1 GET /tiny.txt
 *   lbload dns  PORT RATE SECONDS                 DNS A query, new UDP socket per query
 *
 * The i-th request is due at start + i / RATE, whatever happened before, and
 * its latency runs from that due time to the end of its answer: a slow
 * answer delays the requests queued behind it and they count that delay (no
 * coordinated omission). "http" keeps CONNS connections open and sends each
 * request on an idle one (one request in flight per connection, no
 * pipelining); with "close" every request opens its own connection, sends
 * "Connection: close" and reads to the end (a connection rate), at most CONNS
 * connections at a time; it waits for the server to close first, as
 * "Connection: close" asks (TIME_WAIT stays on the server side). "dns" sends every query from a fresh socket, so every
 * query has a new source port, as a recursive resolver does; a query with no
 * answer after 1 s is lost.
 *
 * Prints one JSON object: sent, done, errors (failed or lost), late (due but
 * never sent: no free connection or socket before the end), elapsed_s, rate,
 * p50_us, p99_us, p999_us, max_us. Single-threaded, epoll, bounded in time
 * (SECONDS + 2 s to drain) and in open sockets (MAX_OPEN). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_OPEN 12000
#define DRAIN_NS 2000000000LL
#define DNS_TIMEOUT_NS 1000000000LL

/* DRAINING (close mode): the answer is complete, waiting for the server to
   close first, so the TIME_WAIT lands on the server's side and thousands of
   short connections do not use up the client's ephemeral ports. */
enum { IDLE, CONNECTING, WAITING, DRAINING, FREE };

struct conn {
    int fd;
    int state;
    int64_t due;      /* due time of the request in flight */
    size_t got;       /* bytes of the answer so far */
    char buf[2048];
};

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static struct sockaddr_in target;
static int ep;
static uint32_t *lat_us;
static size_t n_lat, cap_lat;
static long sent, done_, errors, late;

static void record(int64_t due) {
    int64_t d = (now_ns() - due) / 1000;
    if (n_lat < cap_lat) lat_us[n_lat++] = d < 0 ? 0 : (d > 0xffffffffLL ? 0xffffffffu : (uint32_t)d);
    done_++;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static double pct(double p) {
    if (n_lat == 0) return -1;
    size_t i = (size_t)(p * (double)(n_lat - 1) + 0.5);
    return lat_us[i];
}

/* ---- HTTP ---- */

static const char *req_ka = "GET /tiny.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
static const char *req_close = "GET /tiny.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";

/* 1: a whole response is in c->buf; 0: not yet; -1: malformed. */
static int http_complete(struct conn *c) {
    c->buf[c->got] = 0;
    char *end = strstr(c->buf, "\r\n\r\n");
    if (!end) return c->got >= sizeof c->buf - 1 ? -1 : 0;
    char *cl = strcasestr(c->buf, "\r\nContent-Length:");
    if (!cl || cl > end) return -1;
    long len = strtol(cl + 17, NULL, 10);
    if (strncmp(c->buf + 9, "200", 3) != 0) return -1;
    return (size_t)(end + 4 - c->buf) + (size_t)len <= c->got ? 1 : 0;
}

static int open_tcp(struct conn *c) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) return -1;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&target, sizeof target) < 0 && errno != EINPROGRESS) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    c->state = CONNECTING;
    c->got = 0;
    return 0;
}

static void close_conn(struct conn *c) {
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->state = FREE;
}

static int http_send(struct conn *c, const char *req) {
    size_t n = strlen(req);
    if (send(c->fd, req, n, MSG_NOSIGNAL) != (ssize_t)n) return -1;
    c->state = WAITING;
    c->got = 0;
    return 0;
}

static int run_http(double rate, double secs, int nconns, int close_mode) {
    struct conn *conns = calloc((size_t)nconns, sizeof *conns);
    int64_t *queue = NULL;  /* due times waiting for a connection (ring) */
    size_t qcap = (size_t)(rate * secs) + 16, qhead = 0, qlen = 0;
    queue = malloc(qcap * sizeof *queue);
    for (int i = 0; i < nconns; i++) {
        conns[i].fd = -1;
        conns[i].state = FREE;
        if (!close_mode) {
            if (open_tcp(&conns[i]) < 0) { fprintf(stderr, "connect failed\n"); return 1; }
        }
    }
    int64_t period = (int64_t)(1e9 / rate);
    int64_t start = now_ns(), stop = start + (int64_t)(secs * 1e9), next = start;
    int inflight = 0;
    struct epoll_event evs[256];
    for (;;) {
        int64_t t = now_ns();
        while (next <= t && next < stop) {          /* requests now due */
            if (qlen < qcap) queue[(qhead + qlen++) % qcap] = next;
            next += period;
        }
        /* hand queued requests to free (close) or idle (keep-alive) connections */
        for (int i = 0; i < nconns && qlen > 0; i++) {
            struct conn *c = &conns[i];
            if (close_mode && c->state == FREE) {
                if (open_tcp(c) < 0) { errors++; qhead = (qhead + 1) % qcap; qlen--; continue; }
                c->due = queue[qhead];
                qhead = (qhead + 1) % qcap; qlen--;
                sent++; inflight++;
            } else if (!close_mode && c->state == IDLE) {
                c->due = queue[qhead];
                qhead = (qhead + 1) % qcap; qlen--;
                if (http_send(c, req_ka) < 0) { errors++; close_conn(c); continue; }
                sent++; inflight++;
            }
        }
        if (t >= stop && (inflight == 0 || t >= stop + DRAIN_NS)) break;
        /* before the end, sleep until the next request is due (or the end);
           after it, wake every 10 ms to see whether the last answers came */
        int64_t wait_ns = t >= stop ? 10000000 : (next < stop ? next : stop) - t;
        int timeout = wait_ns <= 0 ? 0 : (int)((wait_ns + 999999) / 1000000);
        int n = epoll_wait(ep, evs, 256, timeout);
        for (int k = 0; k < n; k++) {
            struct conn *c = evs[k].data.ptr;
            if (c->state == CONNECTING && (evs[k].events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
                int err = 0;
                socklen_t el = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
                if (err) { errors++; if (close_mode) inflight--; close_conn(c); continue; }
                if (close_mode) {
                    if (http_send(c, req_close) < 0) { errors++; inflight--; close_conn(c); continue; }
                } else {
                    c->state = IDLE;
                }
            }
            if ((c->state != WAITING && c->state != DRAINING) || !(evs[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
                continue;
            for (;;) {
                if (c->state == DRAINING) c->got = 0;  /* nothing more is expected; ignore it */
                ssize_t r = recv(c->fd, c->buf + c->got, sizeof c->buf - 1 - c->got, 0);
                if (r > 0) { c->got += (size_t)r; continue; }
                if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
                /* EOF or error */
                if (c->state == DRAINING) { close_conn(c); break; }
                int ok = http_complete(c) == 1;
                if (ok) record(c->due); else errors++;
                inflight--;
                close_conn(c);
                if (!close_mode) open_tcp(c);  /* a keep-alive connection was lost: replace it */
                break;
            }
            if (c->state != WAITING) continue;
            int st = http_complete(c);
            if (st == 1 && !close_mode) { record(c->due); inflight--; c->state = IDLE; }
            else if (st == 1 && close_mode) { record(c->due); inflight--; c->state = DRAINING; }
            else if (st < 0) { errors++; inflight--; close_conn(c); if (!close_mode) open_tcp(c); }
        }
    }
    late = (long)qlen;
    errors += inflight;
    for (int i = 0; i < nconns; i++) if (conns[i].fd >= 0) close(conns[i].fd);
    return 0;
}

/* ---- DNS, a fresh socket per query ---- */

struct q {
    int fd;
    uint16_t id;
    int64_t due, sent_at;
};

static size_t dns_query(unsigned char *p, uint16_t id) {
    static const char *name[] = {"example", "com"};
    size_t n = 0;
    p[n++] = id >> 8; p[n++] = id & 0xff;
    p[n++] = 0x01; p[n++] = 0x00;              /* RD */
    p[n++] = 0; p[n++] = 1;                    /* QDCOUNT */
    memset(p + n, 0, 6); n += 6;
    for (int i = 0; i < 2; i++) {
        size_t l = strlen(name[i]);
        p[n++] = (unsigned char)l;
        memcpy(p + n, name[i], l); n += l;
    }
    p[n++] = 0;
    p[n++] = 0; p[n++] = 1;                    /* A */
    p[n++] = 0; p[n++] = 1;                    /* IN */
    return n;
}

static int run_dns(double rate, double secs) {
    /* ring of outstanding queries in send order: the oldest times out first */
    size_t cap = (size_t)(rate * (DNS_TIMEOUT_NS / 1e9 + 1)) + 1024, head = 0, len = 0, open_ = 0;
    struct q *ring = calloc(cap, sizeof *ring);
    int64_t period = (int64_t)(1e9 / rate);
    int64_t start = now_ns(), stop = start + (int64_t)(secs * 1e9), next = start;
    long lost = 0;
    uint16_t id = 1;
    struct epoll_event evs[256];
    for (;;) {
        int64_t t = now_ns();
        while (next <= t && next < stop) {
            if (len == cap || open_ >= MAX_OPEN) { late++; next += period; continue; }
            struct q *e = &ring[(head + len) % cap];
            e->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            if (e->fd < 0 || connect(e->fd, (struct sockaddr *)&target, sizeof target) < 0) {
                if (e->fd >= 0) close(e->fd);
                errors++; next += period; continue;
            }
            unsigned char pkt[64];
            e->id = id++;
            size_t n = dns_query(pkt, e->id);
            if (send(e->fd, pkt, n, 0) != (ssize_t)n) { close(e->fd); errors++; next += period; continue; }
            e->due = next;
            e->sent_at = t;
            /* the ring index, not a pointer: ring slots are reused */
            struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (head + len) % cap};
            epoll_ctl(ep, EPOLL_CTL_ADD, e->fd, &ev);
            len++;
            open_++;
            sent++;
            next += period;
        }
        while (len > 0 && (ring[head].fd < 0 || t - ring[head].sent_at > DNS_TIMEOUT_NS)) {
            if (ring[head].fd >= 0) { close(ring[head].fd); ring[head].fd = -1; lost++; open_--; }
            head = (head + 1) % cap;
            len--;
        }
        if (t >= stop && len == 0) break;
        if (t >= stop + DRAIN_NS) break;
        int64_t wait_ns = (next < stop ? next : t + 10000000) - t;
        int timeout = wait_ns <= 0 ? 0 : (int)((wait_ns + 999999) / 1000000);
        int n = epoll_wait(ep, evs, 256, timeout);
        for (int k = 0; k < n; k++) {
            struct q *e = &ring[evs[k].data.u64];
            if (e->fd < 0) continue;
            unsigned char buf[512];
            ssize_t r = recv(e->fd, buf, sizeof buf, 0);
            if (r < 0 && errno == EAGAIN) continue;
            if (r >= 12 && buf[0] == (e->id >> 8) && buf[1] == (e->id & 0xff) && (buf[2] & 0x80)) record(e->due);
            else errors++;
            close(e->fd);
            e->fd = -1;
            open_--;
        }
    }
    for (size_t i = 0; i < len; i++) {
        struct q *e = &ring[(head + i) % cap];
        if (e->fd >= 0) { close(e->fd); lost++; }
    }
    errors += lost;
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: lbload http PORT RATE SECONDS CONNS [close] | lbload dns PORT RATE SECONDS\n");
        return 2;
    }
    int http = strcmp(argv[1], "http") == 0;
    double rate = atof(argv[3]), secs = atof(argv[4]);
    if ((!http && strcmp(argv[1], "dns") != 0) || rate <= 0 || secs <= 0 || (http && argc < 6)) {
        fprintf(stderr, "lbload: bad arguments\n");
        return 2;
    }
    target.sin_family = AF_INET;
    target.sin_port = htons((uint16_t)atoi(argv[2]));
    target.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ep = epoll_create1(EPOLL_CLOEXEC);
    cap_lat = (size_t)(rate * secs) + 16;
    lat_us = malloc(cap_lat * sizeof *lat_us);
    int64_t t0 = now_ns();
    int rc = http ? run_http(rate, secs, atoi(argv[5]), argc > 6 && strcmp(argv[6], "close") == 0)
                  : run_dns(rate, secs);
    if (rc) return rc;
    double elapsed = (double)(now_ns() - t0) / 1e9;
    qsort(lat_us, n_lat, sizeof *lat_us, cmp_u32);
    printf("{\"sent\": %ld, \"done\": %ld, \"errors\": %ld, \"late\": %ld, \"elapsed_s\": %.3f, "
           "\"rate\": %.1f, \"p50_us\": %.0f, \"p99_us\": %.0f, \"p999_us\": %.0f, \"max_us\": %.0f}\n",
           sent, done_, errors, late, elapsed, done_ / secs, pct(0.5), pct(0.99), pct(0.999),
           n_lat ? (double)lat_us[n_lat - 1] : -1.0);
    return 0;
}
