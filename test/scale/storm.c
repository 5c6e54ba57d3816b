/* storm: the C side of test/scale (Python cannot open connections fast enough).
 *
 *   storm connect PORT COUNT SECONDS FIRST
 *       COUNT connections to 127.0.0.1:PORT, the i-th due at start + i x SECONDS / COUNT
 *       (a storm: 20,000 in 1 s), from source address FIRST + i (an index into
 *       127.2.0.1 .. 127.255.255.254, one address per connection); each sends 16 bytes,
 *       reads them back and closes. Prints one JSON object: count, served, refused
 *       (ECONNREFUSED), reset (ECONNRESET/EPIPE or EOF before the echo), timeout (no
 *       echo within SECONDS + 30 s), other, wrong (an echo that differs), seconds (first
 *       connect to last close), late_ms (how far behind its schedule the slowest connect
 *       was started), and connect_us / echo_us: every served connection's time from
 *       connect() to established, and to the whole echo.
 *   storm echo PORT...
 *       An echo server on each 127.0.0.1:PORT (backlog 4096), single-threaded epoll;
 *       prints {"ready": true} once listening and runs until killed.
 *
 * Bounded: a connection is given up after SECONDS + 30 s, and at most MAX_OPEN are open
 * at once (the process's descriptors; the rest wait and count as late). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define MAX_FD 65536
#define MAX_OPEN 18000
static const char PAYLOAD[16] = "0123456789abcdef";

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void raise_nofile(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

struct conn {
  int64_t started;
  int state; /* 0 free, 1 connecting, 2 waiting for the echo */
  int got;
  char buf[16];
};

static struct conn conns[MAX_FD];
static long served, refused, reset, timeouts, other, wrong;
static int32_t *connect_us, *echo_us;

static void finish(int ep, int fd) {
  epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
  close(fd);
  conns[fd].state = 0;
}

static void fail(int ep, int fd, int err) {
  if (err == ECONNREFUSED)
    refused++;
  else if (err == ECONNRESET || err == EPIPE || err == 0)
    reset++;
  else
    other++;
  finish(ep, fd);
}

static void print_array(const char *name, const int32_t *v, long n) {
  printf(", \"%s\": [", name);
  for (long i = 0; i < n; i++) printf(i ? ",%d" : "%d", v[i]);
  printf("]");
}

static int run_connect(int port, long count, double seconds, long first) {
  raise_nofile();
  connect_us = calloc((size_t)count + 1, sizeof(int32_t));
  echo_us = calloc((size_t)count + 1, sizeof(int32_t));
  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (!connect_us || !echo_us || ep < 0) return 2;
  struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const int64_t t0 = now_ns();
  const int64_t give_up = t0 + (int64_t)((seconds + 30) * 1e9);
  long next = 0, open = 0, nconnect = 0, necho = 0;
  int64_t late = 0, last_close = t0;
  struct epoll_event evs[512];
  while ((next < count || open > 0) && now_ns() < give_up) {
    int64_t now = now_ns();
    while (next < count && open < MAX_OPEN) {
      const int64_t due = t0 + (int64_t)((double)next * seconds * 1e9 / (double)count);
      if (due > now) break;
      if (now - due > late) late = now - due;
      uint32_t a = 0x7f020001u + (uint32_t)(first + next);
      next++;
      int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (fd < 0 || fd >= MAX_FD) {
        if (fd >= 0) close(fd);
        other++;
        continue;
      }
      int one = 1;
      setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
      struct sockaddr_in from = {.sin_family = AF_INET};
      from.sin_addr.s_addr = htonl(a);
      conns[fd] = (struct conn){.started = now_ns(), .state = 1};
      if (bind(fd, (struct sockaddr *)&from, sizeof from) != 0) {
        other++;
        close(fd);
        conns[fd].state = 0;
        continue;
      }
      int rc = connect(fd, (struct sockaddr *)&to, sizeof to);
      if (rc != 0 && errno != EINPROGRESS) {
        int err = errno;
        close(fd);
        conns[fd].state = 0;
        if (err == ECONNREFUSED)
          refused++;
        else
          other++;
        continue;
      }
      struct epoll_event ev = {.events = EPOLLOUT, .data.fd = fd};
      epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
      open++;
    }
    int wait_ms = 100;
    if (next < count && open < MAX_OPEN) {
      const int64_t due = t0 + (int64_t)((double)next * seconds * 1e9 / (double)count);
      int64_t ms = (due - now_ns()) / 1000000;
      wait_ms = ms < 0 ? 0 : ms > 100 ? 100 : (int)ms;
    }
    int n = epoll_wait(ep, evs, 512, wait_ms);
    for (int i = 0; i < n; i++) {
      int fd = evs[i].data.fd;
      struct conn *c = &conns[fd];
      if (c->state == 1) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
          fail(ep, fd, err);
          open--;
          continue;
        }
        connect_us[nconnect++] = (int32_t)((now_ns() - c->started) / 1000);
        if (send(fd, PAYLOAD, sizeof PAYLOAD, MSG_NOSIGNAL) != (ssize_t)sizeof PAYLOAD) {
          fail(ep, fd, errno);
          open--;
          continue;
        }
        c->state = 2;
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
      } else if (c->state == 2) {
        ssize_t r = recv(fd, c->buf + c->got, sizeof c->buf - (size_t)c->got, 0);
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (r <= 0) {
          fail(ep, fd, r == 0 ? 0 : errno);
          open--;
          continue;
        }
        c->got += (int)r;
        if (c->got < (int)sizeof c->buf) continue;
        if (memcmp(c->buf, PAYLOAD, sizeof PAYLOAD) != 0) {
          wrong++;
        } else {
          echo_us[necho++] = (int32_t)((now_ns() - c->started) / 1000);
          served++;
        }
        finish(ep, fd);
        open--;
        last_close = now_ns();
      }
    }
  }
  timeouts = open + (count - next);
  printf("{\"count\": %ld, \"served\": %ld, \"refused\": %ld, \"reset\": %ld, \"timeout\": %ld, "
         "\"other\": %ld, \"wrong\": %ld, \"seconds\": %.3f, \"late_ms\": %.1f",
         count, served, refused, reset, timeouts, other, wrong, (double)(last_close - t0) / 1e9,
         (double)late / 1e6);
  print_array("connect_us", connect_us, nconnect);
  print_array("echo_us", echo_us, necho);
  printf("}\n");
  return 0;
}

static int run_echo(int nports, char **ports) {
  raise_nofile();
  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) return 2;
  for (int i = 0; i < nports; i++) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(ports[i]))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 4096) != 0) {
      fprintf(stderr, "storm echo: cannot listen on %s: %s\n", ports[i], strerror(errno));
      return 1;
    }
    /* Listening sockets are marked with state 3 in conns[]. */
    conns[fd].state = 3;
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
  }
  printf("{\"ready\": true}\n");
  fflush(stdout);
  struct epoll_event evs[512];
  char buf[65536];
  for (;;) {
    int n = epoll_wait(ep, evs, 512, -1);
    for (int i = 0; i < n; i++) {
      int fd = evs[i].data.fd;
      if (conns[fd].state == 3) {
        for (;;) {
          int c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (c < 0) break;
          if (c >= MAX_FD) {
            close(c);
            continue;
          }
          conns[c].state = 2;
          struct epoll_event ev = {.events = EPOLLIN, .data.fd = c};
          epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
        }
        continue;
      }
      ssize_t r = recv(fd, buf, sizeof buf, 0);
      if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      /* Small request/response traffic: a short write (full send buffer) is
       * not expected from the scale test's clients; it ends the connection. */
      if (r <= 0 || send(fd, buf, (size_t)r, MSG_NOSIGNAL) != r) {
        epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
        close(fd);
        conns[fd].state = 0;
      }
    }
  }
}

int main(int argc, char **argv) {
  if (argc == 6 && strcmp(argv[1], "connect") == 0)
    return run_connect(atoi(argv[2]), atol(argv[3]), atof(argv[4]), atol(argv[5]));
  if (argc >= 3 && strcmp(argv[1], "echo") == 0) return run_echo(argc - 2, argv + 2);
  fprintf(stderr, "usage: storm connect PORT COUNT SECONDS FIRST | storm echo PORT...\n");
  return 2;
}
