/* lbload: constant-rate load for bench/run, where wrk and dnsperf do not fit.
 *
 *   lbload http PORT RATE SECONDS CONNS [close]   HTTP/1.1 GET /tiny.txt
 *   lbload dns  PORT RATE SECONDS                 DNS A query, new UDP socket per query
 *   lbload game PORTS PPS SECONDS SESSIONS [SIZE] [FIRST_SOURCE]
 *                                                 long UDP sessions, PPS datagrams/s each
 *   lbload echo PORT NAME SECONDS                 UDP echo backend for "game"
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
 * (SECONDS + 2 s to drain) and in open sockets (MAX_OPEN).
 *
 * "game" keeps SESSIONS client endpoints (a source address and port each:
 * 250 addresses from FIRST_SOURCE, default 127.66.0.1, on each socket bound
 * to 0.0.0.0, chosen per datagram with IP_PKTINFO, so 100,000 sessions need
 * 400 fds) each sending PPS datagrams of SIZE bytes (default 64) a second to
 * 127.0.0.1:PORT, session i to the (i mod n)-th port of the comma-separated
 * PORTS. The j-th datagram overall is due at start + j / (SESSIONS x PPS);
 * batches go out with sendmmsg, replies come in with recvmmsg. The reply must
 * be "NAME:" + the datagram (what "echo" and the bench's echo servers send);
 * latency runs from the send (a timestamp in the datagram) to the kernel's
 * receive timestamp (SO_TIMESTAMPNS), so the client's own scheduling is not
 * counted; how late the sender ran is reported apart (send_lag_*). A datagram
 * with no reply 1 s after the last send is lost. Prints: sent, received,
 * loss, rate, latency percentiles, per-session loss, the loss and the p99
 * latency per second of the run (by the second a datagram was due), and per
 * backend (by the NAME of a session's first reply): its sessions, how many
 * moved to another backend (last reply's NAME differs), how many lost
 * anything.
 *
 * "echo" answers every datagram on 127.0.0.1:PORT (0: any) with "NAME:" +
 * the datagram, batched (recvmmsg/sendmmsg); prints {"port": N} once bound
 * and exits after SECONDS. */
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
#include <poll.h>
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

/* ---- game: long sessions at a fixed rate each, and their echo backend ---- */

#define GAME_PER_SOCK 250
#define GAME_BATCH 64
#define GAME_BURST 16
#define GAME_MAX_PORTS 16
#define GAME_MAX_NAMES 16
#define GAME_DRAIN_NS 1000000000LL
#define GAME_HDR 16 /* session (4), seq (4), send time (8, CLOCK_REALTIME ns) */
#define GAME_MAX_SIZE 1400

/* Latency histogram: exact microseconds below 2048, then 64 steps per power
   of two (within 1.6%). */
#define HIST_LINEAR 2048
#define HIST_BUCKETS (HIST_LINEAR + 22 * 64)

struct hist {
    uint64_t n[HIST_BUCKETS];
    uint64_t count, max;
};

static void hist_add(struct hist *h, int64_t us) {
    uint64_t v = us < 0 ? 0 : (uint64_t)us;
    size_t b;
    if (v < HIST_LINEAR) {
        b = v;
    } else {
        int e = 63 - __builtin_clzll(v); /* >= 11 */
        b = HIST_LINEAR + (size_t)(e - 11) * 64 + ((v >> (e - 6)) & 63);
        if (b >= HIST_BUCKETS) b = HIST_BUCKETS - 1;
    }
    h->n[b]++;
    h->count++;
    if (v > h->max) h->max = v;
}

static double hist_pct(const struct hist *h, double p) {
    if (h->count == 0) return -1;
    uint64_t want = (uint64_t)(p * (double)(h->count - 1)) + 1, seen = 0;
    for (size_t b = 0; b < HIST_BUCKETS; b++) {
        seen += h->n[b];
        if (seen < want) continue;
        if (b < HIST_LINEAR) return (double)b;
        size_t e = (b - HIST_LINEAR) / 64 + 11, sub = (b - HIST_LINEAR) % 64;
        return (double)((64 + sub) << (e - 6));
    }
    return (double)h->max;
}

struct gsess {
    uint32_t sent, got;
    int8_t first, last; /* backend name index of the first/last reply; -1: none yet */
};

static int64_t real_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static char names[GAME_MAX_NAMES][16];
static int n_names;

static int name_index(const char *p, size_t len) {
    for (int i = 0; i < n_names; i++)
        if (strlen(names[i]) == len && memcmp(names[i], p, len) == 0) return i;
    if (n_names == GAME_MAX_NAMES || len >= sizeof names[0]) return -1;
    memcpy(names[n_names], p, len);
    names[n_names][len] = 0;
    return n_names++;
}

static int run_game(const char *ports_arg, double pps, double secs, long nsess, int size, const char *first_src) {
    uint16_t ports[GAME_MAX_PORTS];
    int nports = 0;
    for (const char *p = ports_arg; *p && nports < GAME_MAX_PORTS;) {
        ports[nports++] = (uint16_t)atoi(p);
        const char *c = strchr(p, ',');
        if (!c) break;
        p = c + 1;
    }
    struct in_addr first;
    if (nsess <= 0 || nports == 0 || size < GAME_HDR || size > GAME_MAX_SIZE || inet_pton(AF_INET, first_src, &first) != 1) {
        fprintf(stderr, "lbload game: bad arguments\n");
        return 2;
    }
    uint32_t first_h = ntohl(first.s_addr);
    size_t nsock = (size_t)((nsess + GAME_PER_SOCK - 1) / GAME_PER_SOCK);
    int *fds = calloc(nsock, sizeof *fds);
    for (size_t k = 0; k < nsock; k++) {
        int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        int one = 1, big = 4 << 20;
        struct sockaddr_in any = {.sin_family = AF_INET};
        if (fd < 0 || setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof one) < 0 ||
            setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one) < 0 ||
            bind(fd, (struct sockaddr *)&any, sizeof any) < 0) {
            perror("lbload game: socket");
            return 1;
        }
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = k};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        fds[k] = fd;
    }
    struct gsess *ss = calloc((size_t)nsess, sizeof *ss);
    for (long i = 0; i < nsess; i++) ss[i].first = ss[i].last = -1;
    const double total_rate = pps * (double)nsess;
    const uint64_t total = (uint64_t)(total_rate * secs);
    const size_t nsec = (size_t)secs + 1;
    uint64_t *sent_by_sec = calloc(nsec, sizeof *sent_by_sec), *got_by_sec = calloc(nsec, sizeof *got_by_sec);
    static struct hist lat, lag;
    struct hist *lat_by_sec = calloc(nsec, sizeof *lat_by_sec); /* by the second a datagram was due */

    /* send side: one batch of messages from one socket */
    static unsigned char out[GAME_BATCH][GAME_MAX_SIZE];
    static struct sockaddr_in to[GAME_BATCH];
    static char octl[GAME_BATCH][CMSG_SPACE(sizeof(struct in_pktinfo))];
    static struct iovec oiov[GAME_BATCH];
    static struct mmsghdr omsg[GAME_BATCH];
    /* receive side */
    static unsigned char in[GAME_BATCH][GAME_MAX_SIZE + 64];
    static char ictl[GAME_BATCH][CMSG_SPACE(sizeof(struct in_pktinfo)) + CMSG_SPACE(sizeof(struct timespec))];
    static struct iovec iiov[GAME_BATCH];
    static struct mmsghdr imsg[GAME_BATCH];
    for (int b = 0; b < GAME_BATCH; b++) {
        memset(out[b], 'x', sizeof out[b]);
        oiov[b] = (struct iovec){out[b], (size_t)size};
        iiov[b] = (struct iovec){in[b], sizeof in[b]};
    }
    long recv_errors = 0, bad = 0, unsent = 0;
    uint64_t received = 0, j = 0;
    const int64_t start = now_ns();
    int64_t last_send = start;
    struct epoll_event evs[64];
    for (;;) {
        int64_t t = now_ns();
        /* what is due now, in batches of consecutive sessions on one socket;
           at most GAME_BURST batches before the replies are read, so that a
           sender running late does not overflow its own receive buffers */
        for (int burst = 0; burst < GAME_BURST && j < total; burst++) {
            int64_t due = start + (int64_t)((double)j * 1e9 / total_rate);
            if (due > t) break;
            size_t sock = (size_t)(j % (uint64_t)nsess) / GAME_PER_SOCK;
            int n = 0;
            int64_t stamp = real_ns();
            while (n < GAME_BATCH && j < total) {
                due = start + (int64_t)((double)j * 1e9 / total_rate);
                uint32_t i = (uint32_t)(j % (uint64_t)nsess);
                if (due > t || i / GAME_PER_SOCK != sock) break;
                uint32_t seq = (uint32_t)(j / (uint64_t)nsess);
                memcpy(out[n], &i, 4);
                memcpy(out[n] + 4, &seq, 4);
                memcpy(out[n] + 8, &stamp, 8);
                to[n] = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons(ports[i % (uint32_t)nports]),
                                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
                struct msghdr *m = &omsg[n].msg_hdr;
                *m = (struct msghdr){.msg_name = &to[n], .msg_namelen = sizeof to[n], .msg_iov = &oiov[n],
                                     .msg_iovlen = 1, .msg_control = octl[n], .msg_controllen = sizeof octl[n]};
                struct cmsghdr *c = CMSG_FIRSTHDR(m);
                c->cmsg_level = IPPROTO_IP;
                c->cmsg_type = IP_PKTINFO;
                c->cmsg_len = CMSG_LEN(sizeof(struct in_pktinfo));
                struct in_pktinfo pi = {.ipi_spec_dst.s_addr = htonl(first_h + i % GAME_PER_SOCK)};
                memcpy(CMSG_DATA(c), &pi, sizeof pi);
                hist_add(&lag, (t - due) / 1000);
                n++;
                j++;
            }
            int done = 0;
            while (done < n) {
                int r = sendmmsg(fds[sock], omsg + done, (unsigned)(n - done), 0);
                if (r > 0) { done += r; continue; }
                if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                    struct pollfd pw = {fds[sock], POLLOUT, 0};
                    if (poll(&pw, 1, 10) > 0) continue;
                }
                break;
            }
            unsent += n - done;
            for (int b = 0; b < done; b++) {
                uint32_t i;
                memcpy(&i, out[b], 4);
                ss[i].sent++;
                uint32_t seq;
                memcpy(&seq, out[b] + 4, 4);
                size_t sec = (size_t)(((double)seq * (double)nsess + i) / total_rate);
                if (sec < nsec) sent_by_sec[sec]++;
            }
            sent += done;
            last_send = t;
        }
        /* the end: everything sent, and answered or given up on (1 s after the
           last send, however late the sender ran) */
        if (j >= total && (received >= (uint64_t)sent || t >= last_send + GAME_DRAIN_NS)) break;
        int64_t next_due = j < total ? start + (int64_t)((double)j * 1e9 / total_rate) : t + 10000000;
        int64_t wait_ns = next_due - t;
        int timeout = wait_ns <= 0 ? 0 : (int)((wait_ns + 999999) / 1000000);
        int ne = epoll_wait(ep, evs, 64, timeout);
        for (int e = 0; e < ne; e++) {
            size_t k = evs[e].data.u64;
            for (;;) {
                for (int b = 0; b < GAME_BATCH; b++)
                    imsg[b].msg_hdr = (struct msghdr){.msg_iov = &iiov[b], .msg_iovlen = 1, .msg_control = ictl[b],
                                                      .msg_controllen = sizeof ictl[b]};
                int r = recvmmsg(fds[k], imsg, GAME_BATCH, MSG_DONTWAIT, NULL);
                if (r <= 0) {
                    if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK) recv_errors++;
                    break;
                }
                for (int b = 0; b < r; b++) {
                    unsigned char *d = in[b];
                    size_t len = imsg[b].msg_len;
                    unsigned char *colon = memchr(d, ':', len < 16 ? len : 16);
                    int64_t rx = 0;
                    long off = -1;
                    for (struct cmsghdr *c = CMSG_FIRSTHDR(&imsg[b].msg_hdr); c; c = CMSG_NXTHDR(&imsg[b].msg_hdr, c)) {
                        if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
                            struct in_pktinfo pi;
                            memcpy(&pi, CMSG_DATA(c), sizeof pi);
                            off = (long)(ntohl(pi.ipi_addr.s_addr) - first_h);
                        } else if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
                            struct timespec ts;
                            memcpy(&ts, CMSG_DATA(c), sizeof ts);
                            rx = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
                        }
                    }
                    if (!colon || (size_t)(colon - d) + 1 + GAME_HDR > len || off < 0 || off >= GAME_PER_SOCK) {
                        bad++;
                        continue;
                    }
                    unsigned char *p = colon + 1;
                    uint32_t i, seq;
                    int64_t stamp;
                    memcpy(&i, p, 4);
                    memcpy(&seq, p + 4, 4);
                    memcpy(&stamp, p + 8, 8);
                    if ((long)i != (long)k * GAME_PER_SOCK + off || (long)i >= nsess) {
                        bad++;
                        continue;
                    }
                    int name = name_index((const char *)d, (size_t)(colon - d));
                    struct gsess *g = &ss[i];
                    g->got++;
                    if (g->first < 0) g->first = (int8_t)name;
                    g->last = (int8_t)name;
                    received++;
                    size_t sec = (size_t)(((double)seq * (double)nsess + i) / total_rate);
                    if (sec < nsec) got_by_sec[sec]++;
                    int64_t us = ((rx ? rx : real_ns()) - stamp) / 1000;
                    hist_add(&lat, us);
                    if (sec < nsec) hist_add(&lat_by_sec[sec], us);
                }
            }
        }
    }
    double elapsed = (double)(now_ns() - start) / 1e9;
    /* per session and per backend */
    long with_loss = 0, unanswered = 0;
    uint32_t worst = 0;
    long by_first[GAME_MAX_NAMES] = {0}, moved[GAME_MAX_NAMES] = {0}, lossy[GAME_MAX_NAMES] = {0};
    uint64_t lost_by[GAME_MAX_NAMES] = {0};
    for (long i = 0; i < nsess; i++) {
        struct gsess *g = &ss[i];
        uint32_t lost = g->sent > g->got ? g->sent - g->got : 0;
        if (lost) with_loss++;
        if (lost > worst) worst = lost;
        if (g->first < 0) { unanswered++; continue; }
        by_first[g->first]++;
        moved[g->first] += g->last != g->first;
        lossy[g->first] += lost > 0;
        lost_by[g->first] += lost;
    }
    printf("{\"sessions\": %ld, \"pps\": %.1f, \"size\": %d, \"ports\": %d, \"sent\": %ld, \"received\": %llu, "
           "\"unsent\": %ld, \"bad\": %ld, \"recv_errors\": %ld, \"loss\": %.6f, \"elapsed_s\": %.3f, "
           "\"rate_sent\": %.0f, \"rate_received\": %.0f, \"p50_us\": %.0f, \"p99_us\": %.0f, \"p999_us\": %.0f, "
           "\"max_us\": %llu, \"send_lag_p50_us\": %.0f, \"send_lag_p99_us\": %.0f, \"send_lag_max_us\": %llu, "
           "\"sessions_with_loss\": %ld, \"sessions_unanswered\": %ld, \"session_loss_max\": %u, ",
           nsess, pps, size, nports, sent, (unsigned long long)received, unsent, bad, recv_errors,
           sent ? 1.0 - (double)received / (double)sent : 0.0, elapsed, (double)sent / secs,
           (double)received / secs, hist_pct(&lat, 0.5), hist_pct(&lat, 0.99), hist_pct(&lat, 0.999),
           (unsigned long long)lat.max, hist_pct(&lag, 0.5), hist_pct(&lag, 0.99), (unsigned long long)lag.max,
           with_loss, unanswered, worst);
    printf("\"lost_by_second\": [");
    for (size_t sct = 0; sct < (size_t)secs; sct++)
        printf("%s%lld", sct ? ", " : "", (long long)sent_by_sec[sct] - (long long)got_by_sec[sct]);
    printf("], \"p99_us_by_second\": [");
    for (size_t sct = 0; sct < (size_t)secs; sct++) printf("%s%.0f", sct ? ", " : "", hist_pct(&lat_by_sec[sct], 0.99));
    printf("], \"backends\": {");
    for (int b = 0; b < n_names; b++)
        printf("%s\"%s\": {\"sessions\": %ld, \"moved\": %ld, \"sessions_with_loss\": %ld, \"lost\": %llu}",
               b ? ", " : "", names[b], by_first[b], moved[b], lossy[b], (unsigned long long)lost_by[b]);
    printf("}}\n");
    for (size_t k = 0; k < nsock; k++) close(fds[k]);
    free(fds);
    free(ss);
    free(sent_by_sec);
    free(got_by_sec);
    free(lat_by_sec);
    return 0;
}

static int run_echo(int port, const char *name, double secs) {
    size_t nl = strlen(name);
    if (nl == 0 || nl > 15) { fprintf(stderr, "lbload echo: bad name\n"); return 2; }
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int big = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || getsockname(fd, (struct sockaddr *)&a, &al) < 0) {
        perror("lbload echo: bind");
        return 1;
    }
    printf("{\"port\": %d}\n", ntohs(a.sin_port));
    fflush(stdout);
    static unsigned char buf[GAME_BATCH][16 + 65536];
    static struct sockaddr_in peer[GAME_BATCH];
    static struct iovec iov[GAME_BATCH];
    static struct mmsghdr m[GAME_BATCH];
    const int64_t stop = now_ns() + (int64_t)(secs * 1e9);
    while (now_ns() < stop) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 100) <= 0) continue;
        for (;;) {
            for (int b = 0; b < GAME_BATCH; b++) {
                memcpy(buf[b], name, nl);
                buf[b][nl] = ':';
                iov[b] = (struct iovec){buf[b] + nl + 1, sizeof buf[b] - nl - 1};
                m[b].msg_hdr = (struct msghdr){.msg_name = &peer[b], .msg_namelen = sizeof peer[b],
                                               .msg_iov = &iov[b], .msg_iovlen = 1};
            }
            int r = recvmmsg(fd, m, GAME_BATCH, MSG_DONTWAIT, NULL);
            if (r <= 0) break;
            for (int b = 0; b < r; b++) {
                iov[b] = (struct iovec){buf[b], nl + 1 + m[b].msg_len};
                m[b].msg_hdr.msg_iov = &iov[b];
                m[b].msg_hdr.msg_iovlen = 1;
            }
            int done = 0;
            while (done < r) {
                int w = sendmmsg(fd, m + done, (unsigned)(r - done), 0);
                if (w > 0) { done += w; continue; }
                if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                    struct pollfd pw = {fd, POLLOUT, 0};
                    if (poll(&pw, 1, 10) > 0) continue;
                }
                break; /* the client is gone (ECONNREFUSED) or stuck: drop the rest */
            }
        }
    }
    close(fd);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: lbload http PORT RATE SECONDS CONNS [close] | lbload dns PORT RATE SECONDS\n"
                        "       lbload game PORTS PPS SECONDS SESSIONS [SIZE] [FIRST_SOURCE]"
                        " | lbload echo PORT NAME SECONDS\n");
        return 2;
    }
    if (strcmp(argv[1], "echo") == 0) return run_echo(atoi(argv[2]), argv[3], atof(argv[4]));
    if (strcmp(argv[1], "game") == 0) {
        ep = epoll_create1(EPOLL_CLOEXEC);
        if (argc < 6 || atof(argv[3]) <= 0 || atof(argv[4]) <= 0) {
            fprintf(stderr, "lbload game: bad arguments\n");
            return 2;
        }
        return run_game(argv[2], atof(argv[3]), atof(argv[4]), atol(argv[5]), argc > 6 ? atoi(argv[6]) : 64,
                        argc > 7 ? argv[7] : "127.66.0.1");
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
