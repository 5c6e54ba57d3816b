/* floor_uring: floor.c's minimal TLS passthrough relay on io_uring instead
 * of epoll, as a yardstick for bench/syscalls.py (not a proxy anyone should
 * run). Needs liburing-dev.
 *
 *   floor_uring LISTEN_PORT BACKEND_PORT      (both on 127.0.0.1)
 *
 * The same work per connection as floor.c (accept, the client's first TLS
 * record read whole, socket + TCP_NODELAY + connect, the record sent, both
 * directions relayed with half-close passed on, both sockets closed), but
 * every accept, receive, send, connect, shutdown and close is a submission
 * to one ring, and one io_uring_enter submits all that is queued and waits
 * for the next completion: the proxy enters the kernel once per batch
 * instead of once per call. socket() and setsockopt() stay system calls. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "floor.h"

#define BUF HELLO_MAX /* the hello is the client way's first send */

/* A submission's user data: its connection (malloc'd, 16-byte aligned) with
 * the operation in the low 4 bits. */
enum op { OP_ACCEPT = 1, OP_HELLO, OP_CONNECT, OP_RECV0, OP_RECV1, OP_SEND0, OP_SEND1, OP_OTHER };

struct way { /* bytes read from side s, written to side 1-s */
  size_t len, off;
  int done; /* EOF read and passed on */
};
struct conn {
  int fd[2];
  int inflight; /* submissions not yet completed */
  int closing;
  struct way way[2];
  size_t hello_len;
  /* Buffers last, never cleared: only the fields above are. */
  char hello[HELLO_MAX];
  char bufs[2][BUF]; /* way s reads into bufs[s] */
};

static struct io_uring ring;
static struct sockaddr_in backend;
static int lfd;

static struct io_uring_sqe* sqe_for(struct conn* c, enum op op) {
  struct io_uring_sqe* s = io_uring_get_sqe(&ring);
  if (!s) {
    io_uring_submit(&ring);
    s = io_uring_get_sqe(&ring);
  }
  io_uring_sqe_set_data64(s, (uint64_t)(uintptr_t)c | (uint64_t)op);
  if (c) c->inflight++;
  return s;
}

static void arm_accept(void) {
  io_uring_prep_multishot_accept(sqe_for(NULL, OP_ACCEPT), lfd, NULL, NULL, SOCK_CLOEXEC);
}

static void recv_way(struct conn* c, int s) {
  io_uring_prep_recv(sqe_for(c, s == 0 ? OP_RECV0 : OP_RECV1), c->fd[s], c->bufs[s], BUF, 0);
}

static void send_way(struct conn* c, int s) {
  struct way* w = &c->way[s];
  io_uring_prep_send(sqe_for(c, s == 0 ? OP_SEND0 : OP_SEND1), c->fd[1 - s], c->bufs[s] + w->off,
                     w->len - w->off, MSG_NOSIGNAL);
}

/* Ends the connection: both sockets closed through the ring; the memory
 * goes once nothing of it is in flight. */
static void end(struct conn* c, int abort) {
  if (c->closing) return;
  c->closing = 1;
  for (int s = 0; s < 2; s++)
    if (c->fd[s] >= 0) {
      /* A receive still in flight holds the socket: shutting it down ends
       * that receive (an error path only; at a normal end none is left). */
      if (abort) shutdown(c->fd[s], SHUT_RDWR);
      io_uring_prep_close(sqe_for(c, OP_OTHER), c->fd[s]);
      c->fd[s] = -1;
    }
}

static void way_ended(struct conn* c, int s) {
  c->way[s].done = 1;
  if (c->way[1 - s].done)
    end(c, 0); /* the second direction to end ends the connection */
  else
    io_uring_prep_shutdown(sqe_for(c, OP_OTHER), c->fd[1 - s], SHUT_WR);
}

static void on_hello(struct conn* c, int res) {
  if (res <= 0) {
    end(c, 1);
    return;
  }
  c->hello_len += (size_t)res;
  int whole = floor_hello_whole(c->hello, c->hello_len);
  if (whole < 0) {
    end(c, 1);
    return;
  }
  if (whole) {
    c->fd[1] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd[1] < 0) {
      end(c, 1);
      return;
    }
    int one = 1;
    setsockopt(c->fd[1], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    io_uring_prep_connect(sqe_for(c, OP_CONNECT), c->fd[1], (struct sockaddr*)&backend, sizeof backend);
    return;
  }
  io_uring_prep_recv(sqe_for(c, OP_HELLO), c->fd[0], c->hello + c->hello_len, HELLO_MAX - c->hello_len, 0);
}

static void on_connect(struct conn* c, int res) {
  if (res < 0) {
    end(c, 1);
    return;
  }
  /* The hello (and whatever came with it) is the client way's first send. */
  memcpy(c->bufs[0], c->hello, c->hello_len);
  c->way[0].len = c->hello_len;
  c->way[0].off = 0;
  send_way(c, 0);
  recv_way(c, 1);
}

static void on_recv(struct conn* c, int s, int res) {
  if (res < 0) {
    end(c, 1);
    return;
  }
  if (res == 0) {
    way_ended(c, s);
    return;
  }
  c->way[s].len = (size_t)res;
  c->way[s].off = 0;
  send_way(c, s);
}

static void on_send(struct conn* c, int s, int res) {
  struct way* w = &c->way[s];
  if (res < 0) {
    end(c, 1);
    return;
  }
  w->off += (size_t)res;
  if (w->off < w->len)
    send_way(c, s);
  else
    recv_way(c, s);
}

int main(int argc, char** argv) {
  lfd = floor_setup(argc, argv, 0, &backend);
  struct io_uring_params p = {.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN};
  if (io_uring_queue_init_params(4096, &ring, &p) < 0) {
    memset(&p, 0, sizeof p);
    int rc = io_uring_queue_init_params(4096, &ring, &p);
    if (rc < 0) {
      fprintf(stderr, "floor_uring: io_uring: %s\n", strerror(-rc));
      return 1;
    }
  }
  arm_accept();
  for (;;) {
    int rc = io_uring_submit_and_wait(&ring, 1);
    if (rc < 0 && rc != -EINTR) {
      fprintf(stderr, "floor_uring: io_uring_enter: %s\n", strerror(-rc));
      return 1;
    }
    struct io_uring_cqe* cqe;
    unsigned head, seen = 0;
    io_uring_for_each_cqe(&ring, head, cqe) {
      seen++;
      uint64_t ud = io_uring_cqe_get_data64(cqe);
      enum op op = (enum op)(ud & 15);
      struct conn* c = (struct conn*)(uintptr_t)(ud & ~(uint64_t)15);
      int res = cqe->res;
      if (op == OP_ACCEPT) {
        if (!(cqe->flags & IORING_CQE_F_MORE)) arm_accept();
        if (res < 0) continue;
        struct conn* n = malloc(sizeof *n);
        if (!n) {
          close(res);
          continue;
        }
        memset(n, 0, offsetof(struct conn, hello));
        n->fd[0] = res;
        n->fd[1] = -1;
        io_uring_prep_recv(sqe_for(n, OP_HELLO), res, n->hello, HELLO_MAX, 0);
        continue;
      }
      c->inflight--;
      if (!c->closing) {
        switch (op) {
          case OP_HELLO:
            on_hello(c, res);
            break;
          case OP_CONNECT:
            on_connect(c, res);
            break;
          case OP_RECV0:
            on_recv(c, 0, res);
            break;
          case OP_RECV1:
            on_recv(c, 1, res);
            break;
          case OP_SEND0:
            on_send(c, 0, res);
            break;
          case OP_SEND1:
            on_send(c, 1, res);
            break;
          default:
            if (res < 0) end(c, 1);
            break;
        }
      }
      if (c->closing && c->inflight == 0) free(c);
    }
    io_uring_cq_advance(&ring, seen);
  }
}
