/* floor: the least a TLS passthrough relay can do per connection with the
 * socket API, as a yardstick for bench/syscalls.py (not a proxy anyone
 * should run).
 *
 *   floor LISTEN_PORT BACKEND_PORT      (both on 127.0.0.1)
 *
 * One thread, one epoll set, every connection's two sockets added once,
 * edge-triggered for input and output, and closed without being removed
 * (the kernel drops them from the set). The client's first TLS record is
 * read whole before the backend is connected, as an SNI router must; no
 * parsing, no routing, no timeouts, no limits, no logging, no metrics.
 * Half-close is passed on as lb does (shutdown of the other side), and the
 * connection ends when both directions have.
 *
 * Reads stop at a short read unless the event also said the peer closed
 * (EPOLLRDHUP), so a drained socket costs no EAGAIN read: the same trick
 * nginx uses. Whatever a destination does not take is kept and that
 * direction waits for the destination's next EPOLLOUT edge. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "floor.h"

#define BUF 16384

struct conn;
struct end {
  struct conn* c;
  int side; /* 0 client, 1 backend */
};
struct way { /* bytes from side s to side 1-s */
  char* held;
  size_t held_len, held_off;
  int eof_read;  /* the source said EOF */
  int shut_sent; /* the destination was shut down for writing */
};
struct conn {
  int fd[2];
  struct end ends[2];
  struct way way[2];
  int state;          /* 0 hello, 1 connecting, 2 relaying */
  uint32_t client_ev; /* the client's edges not yet acted on (hello, connecting) */
  size_t hello_len;
  char hello[HELLO_MAX]; /* last, never cleared: only the fields above are */
};

static int ep;
static struct sockaddr_in backend;
static char buf[BUF];

static void conn_free(struct conn* c) {
  for (int s = 0; s < 2; s++) {
    if (c->fd[s] >= 0) close(c->fd[s]);
    free(c->way[s].held);
  }
  free(c);
}

/* Writes what way s holds to its destination; 1 when it is all gone. */
static int flush_held(struct conn* c, int s) {
  struct way* w = &c->way[s];
  while (w->held_off < w->held_len) {
    ssize_t n = write(c->fd[1 - s], w->held + w->held_off, w->held_len - w->held_off);
    if (n < 0) return errno == EAGAIN ? 0 : -1;
    w->held_off += (size_t)n;
  }
  w->held_len = w->held_off = 0;
  return 1;
}

static int hold(struct way* w, const char* p, size_t n) {
  char* h = realloc(w->held, w->held_len + n);
  if (!h) return -1;
  memcpy(h + w->held_len, p, n);
  w->held = h;
  w->held_len += n;
  return 0;
}

/* Moves bytes from side s to side 1-s while the source has some and the
 * destination takes them. Returns -1 to end the connection. */
static int pump(struct conn* c, int s, int rdhup) {
  struct way* w = &c->way[s];
  int r = flush_held(c, s);
  if (r < 0) return -1;
  if (r == 0) return 0;
  while (!w->eof_read) {
    ssize_t n = read(c->fd[s], buf, sizeof buf);
    if (n < 0) return errno == EAGAIN ? 0 : -1;
    if (n == 0) {
      w->eof_read = 1;
      break;
    }
    ssize_t m = write(c->fd[1 - s], buf, (size_t)n);
    if (m < 0 && errno != EAGAIN) return -1;
    if (m < n) return hold(w, buf + (m > 0 ? m : 0), (size_t)(n - (m > 0 ? m : 0)));
    if ((size_t)n < sizeof buf && !rdhup) return 0;
  }
  if (!w->shut_sent) {
    /* The second direction to end ends the connection: no shutdown then. */
    if (!c->way[1 - s].shut_sent) shutdown(c->fd[1 - s], SHUT_WR);
    w->shut_sent = 1;
  }
  return 0;
}

static int add(struct conn* c, int s) {
  struct epoll_event e = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = &c->ends[s]};
  return epoll_ctl(ep, EPOLL_CTL_ADD, c->fd[s], &e);
}

static int on_hello(struct conn* c) {
  int full = 0;
  int whole = floor_read_hello(c->fd[0], c->hello, &c->hello_len, &full);
  if (whole <= 0) return whole;
  /* A full read may have left bytes behind, and their edge is spent: read
   * the client again once connected. */
  if (full) c->client_ev |= EPOLLIN;
  c->fd[1] = floor_connect(&backend);
  if (c->fd[1] < 0) return -1;
  c->state = 1;
  return add(c, 1);
}

static int on_connected(struct conn* c) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(c->fd[1], SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err) return -1;
  c->state = 2;
  if (hold(&c->way[0], c->hello, c->hello_len) < 0) return -1;
  /* The hello goes first; whatever the client sent while the backend
   * connected is read only if an edge said so. */
  if (flush_held(c, 0) < 0) return -1;
  if (c->client_ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP))
    return pump(c, 0, (c->client_ev & (EPOLLRDHUP | EPOLLHUP)) != 0);
  return 0;
}

static int on_event(struct end* e, uint32_t ev) {
  struct conn* c = e->c;
  if (c->state == 0) {
    if (e->side != 0 || !(ev & (EPOLLIN | EPOLLRDHUP | EPOLLERR))) return 0;
    c->client_ev |= ev & (EPOLLRDHUP | EPOLLHUP); /* an EOF behind the hello, for later */
    return on_hello(c);
  }
  if (c->state == 1) {
    if (e->side == 0) {
      c->client_ev |= ev; /* read once connected */
      return 0;
    }
    if (!(ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return 0;
    return on_connected(c);
  }
  int s = e->side;
  /* This side readable: bytes towards the other; this side writable: the
   * other side's held bytes, then the rest of its stream. */
  if ((ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP)) && pump(c, s, (ev & (EPOLLRDHUP | EPOLLHUP)) != 0) < 0)
    return -1;
  if ((ev & EPOLLOUT) && c->way[1 - s].held_len && pump(c, 1 - s, 1) < 0) return -1;
  if (ev & EPOLLERR) return -1;
  if (c->way[0].shut_sent && c->way[1].shut_sent) return -1; /* both directions over */
  return 0;
}

int main(int argc, char** argv) {
  int lfd = floor_setup(argc, argv, SOCK_NONBLOCK, &backend);
  ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event le = {.events = EPOLLIN, .data.ptr = NULL};
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &le);
  struct epoll_event evs[256];
  for (;;) {
    int n = epoll_wait(ep, evs, 256, -1);
    if (n < 0 && errno != EINTR) return 1;
    /* A connection ended by one event may have others in this batch: they
     * are skipped through a closed marker (fd -2) and freed after. */
    struct conn* dead[256];
    int ndead = 0;
    for (int i = 0; i < n; i++) {
      struct end* e = evs[i].data.ptr;
      if (!e) { /* the listener: one connection per event, as nginx without multi_accept */
        struct sockaddr_in peer;
        int fd;
        struct conn* c = floor_accept(lfd, &peer, sizeof *c, offsetof(struct conn, hello), &fd);
        if (!c) continue;
        c->fd[0] = fd;
        c->fd[1] = -1;
        for (int s = 0; s < 2; s++) c->ends[s] = (struct end){c, s};
        if (add(c, 0) < 0) conn_free(c);
        continue;
      }
      if (e->c->state < 0) continue;
      if (on_event(e, evs[i].events) < 0) {
        e->c->state = -1;
        dead[ndead++] = e->c;
      }
    }
    for (int i = 0; i < ndead; i++) conn_free(dead[i]);
  }
}
