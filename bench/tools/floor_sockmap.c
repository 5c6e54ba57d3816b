/* floor_sockmap: the passthrough yardstick of floor.c with the relay moved
 * into the kernel (a BPF sockhash and an sk_skb verdict program), to measure
 * what a proxy would still pay per connection if it never touched the bytes
 * after the client's first record. A yardstick for bench/syscalls.py, not a
 * proxy anyone should run: needs root (CAP_BPF, CAP_NET_ADMIN).
 *
 *   floor_sockmap LISTEN_PORT BACKEND_PORT      (both on 127.0.0.1)
 *
 * Per connection: accept, read the first record whole, socket, TCP_NODELAY,
 * connect; once connected each socket goes into the sockhash under the other
 * one's cookie, and the hello is written. From then on the kernel passes each
 * arriving segment to the verdict program, which redirects it to the other
 * socket; the redirected bytes are sent by the target socket's psock work
 * item (a kworker), not by this process.
 *
 * Half-close: the kernel does not pass a FIN on, so an EOF (EPOLLRDHUP) is
 * passed on here with shutdown(SHUT_WR), but only once every byte the source
 * received is in the destination's stream (its acknowledged bytes plus its
 * send queue, TCP_INFO and SIOCOUTQ); otherwise the check is repeated 1 ms
 * later. Without that wait a FIN could overtake bytes still queued for the
 * kworker. Backpressure is the kernel's (the psock's queue), unbounded here.
 *
 * Known gap (why this is a yardstick and not a design): bytes a client sends
 * behind its hello before the sockets are in the map stay in the socket
 * until its next segment wakes the verdict; a client that then waits for an
 * answer would hang. lbtls never sends any. bench/tools/check_floor.py sends
 * its extra bytes after the hello has been answered. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/bpf.h>
#include <linux/sockios.h>
#include <linux/tcp.h> /* the kernel's tcp_info, with tcpi_bytes_acked and tcpi_bytes_received */
#include <stddef.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define _NETINET_TCP_H /* glibc's older tcp_info would clash */
#include "floor.h"

#ifndef SO_COOKIE
#define SO_COOKIE 57
#endif

struct conn;
struct end {
  struct conn* c;
  int side; /* 0 client, 1 backend */
};
struct conn {
  int fd[2];
  struct end ends[2];
  int state;       /* 0 hello, 1 connecting, 2 relaying */
  int eof[2];      /* side s said EOF */
  int shut[2];     /* side s's EOF was passed on */
  int waiting;     /* on the list of EOFs to check again */
  uint64_t base_in[2], base_out[2]; /* received(), written() of side s when the relay began */
  struct conn* next_wait;
  size_t hello_len;
  char hello[HELLO_MAX];
};

static int ep, map_fd;
static struct sockaddr_in backend;
static struct conn* wait_list;

static long bpf(int cmd, union bpf_attr* a) { return syscall(__NR_bpf, cmd, a, sizeof *a); }

#define INSN(c, d, s, o, i) ((struct bpf_insn){.code = (c), .dst_reg = (d), .src_reg = (s), .off = (o), .imm = (i)})

/* The verdict: redirect the segment to the socket stored under this
 * socket's cookie; when there is none, it stays with this socket. A segment
 * without bytes (a bare FIN) is dropped: redirected, it would be sent on the
 * other socket after this process shut that down, and the kworker's EPIPE
 * would be reported as the socket's error. */
static int load_verdict(void) {
  union bpf_attr a;
  memset(&a, 0, sizeof a);
  a.map_type = BPF_MAP_TYPE_SOCKHASH;
  a.key_size = 8;
  a.value_size = 4;
  a.max_entries = 65536;
  map_fd = (int)bpf(BPF_MAP_CREATE, &a);
  if (map_fd < 0) return perror("bpf map"), -1;
  struct bpf_insn prog[] = {
      INSN(BPF_ALU64 | BPF_MOV | BPF_X, 6, 1, 0, 0),          /* r6 = ctx */
      INSN(BPF_LDX | BPF_MEM | BPF_W, 2, 1, offsetof(struct __sk_buff, len), 0),
      INSN(BPF_JMP | BPF_JNE | BPF_K, 2, 0, 2, 0),            /* bytes: on */
      INSN(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, SK_DROP),
      INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
      INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_get_socket_cookie),
      INSN(BPF_STX | BPF_MEM | BPF_DW, 10, 0, -8, 0),         /* *(u64*)(fp-8) = cookie */
      INSN(BPF_ALU64 | BPF_MOV | BPF_X, 1, 6, 0, 0),          /* r1 = ctx */
      INSN(BPF_LD | BPF_IMM | BPF_DW, 2, BPF_PSEUDO_MAP_FD, 0, map_fd),
      INSN(0, 0, 0, 0, 0),
      INSN(BPF_ALU64 | BPF_MOV | BPF_X, 3, 10, 0, 0),         /* r3 = fp - 8 */
      INSN(BPF_ALU64 | BPF_ADD | BPF_K, 3, 0, 0, -8),
      INSN(BPF_ALU64 | BPF_MOV | BPF_K, 4, 0, 0, 0),          /* flags: egress */
      INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_sk_redirect_hash),
      INSN(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, SK_PASS),    /* redirected, or kept */
      INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
  };
  static char log[65536];
  memset(&a, 0, sizeof a);
  a.prog_type = BPF_PROG_TYPE_SK_SKB;
  a.insns = (uint64_t)(uintptr_t)prog;
  a.insn_cnt = sizeof prog / sizeof prog[0];
  a.license = (uint64_t)(uintptr_t) "GPL";
  a.log_buf = (uint64_t)(uintptr_t)log;
  a.log_size = sizeof log;
  a.log_level = 1;
  int prog_fd = (int)bpf(BPF_PROG_LOAD, &a);
  if (prog_fd < 0) return fprintf(stderr, "bpf prog: %s\n%s\n", strerror(errno), log), -1;
  memset(&a, 0, sizeof a);
  a.target_fd = (uint32_t)map_fd;
  a.attach_bpf_fd = (uint32_t)prog_fd;
  a.attach_type = BPF_SK_SKB_VERDICT;
  if (bpf(BPF_PROG_ATTACH, &a) < 0) return perror("bpf attach"), -1;
  return 0;
}

static int map_put(uint64_t key, int fd) {
  union bpf_attr a;
  memset(&a, 0, sizeof a);
  uint32_t v = (uint32_t)fd;
  a.map_fd = (uint32_t)map_fd;
  a.key = (uint64_t)(uintptr_t)&key;
  a.value = (uint64_t)(uintptr_t)&v;
  a.flags = BPF_ANY;
  return (int)bpf(BPF_MAP_UPDATE_ELEM, &a);
}

static uint64_t cookie(int fd) {
  uint64_t c = 0;
  socklen_t len = sizeof c;
  getsockopt(fd, SOL_SOCKET, SO_COOKIE, &c, &len);
  return c;
}

static void conn_free(struct conn* c) {
  for (int s = 0; s < 2; s++)
    if (c->fd[s] >= 0) close(c->fd[s]); /* also drops it from the sockhash */
  free(c);
}

static int add(struct conn* c, int s, uint32_t ev) {
  struct epoll_event e = {.events = ev | EPOLLRDHUP | EPOLLET, .data.ptr = &c->ends[s]};
  return epoll_ctl(ep, EPOLL_CTL_ADD, c->fd[s], &e);
}

/* Bytes side s has received, and bytes put into side s's stream. */
static uint64_t received(int fd) {
  struct tcp_info ti;
  socklen_t len = sizeof ti;
  return getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0 ? 0 : ti.tcpi_bytes_received;
}
static uint64_t written(int fd) {
  struct tcp_info ti;
  socklen_t len = sizeof ti;
  int outq = 0;
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0 || ioctl(fd, SIOCOUTQ, &outq) < 0) return 0;
  return ti.tcpi_bytes_acked + (uint64_t)outq; /* acked first: a late ACK only makes this smaller */
}

/* Passes side s's EOF on when the kernel has moved all its bytes. 1: done,
 * 0: check again later. The counters count sequence numbers, so a SYN and a
 * FIN each add one, and differently for accepted and connected sockets: only
 * their growth since the relay began is compared, less the FIN on the source
 * and the hello this process wrote itself. */
static int pass_eof(struct conn* c, int s) {
  if (c->shut[s]) return 1;
  uint64_t out = written(c->fd[1 - s]) - c->base_out[1 - s] - (s == 0 ? c->hello_len : 0);
  if (out < received(c->fd[s]) - 1 - c->base_in[s]) return 0;
  shutdown(c->fd[1 - s], SHUT_WR);
  c->shut[s] = 1;
  return 1;
}

static int on_hello(struct conn* c) {
  int whole = floor_read_hello(c->fd[0], c->hello, &c->hello_len, NULL);
  if (whole <= 0) return whole;
  c->fd[1] = floor_connect(&backend);
  if (c->fd[1] < 0) return -1;
  c->state = 1;
  return add(c, 1, EPOLLOUT);
}

static int on_connected(struct conn* c) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(c->fd[1], SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err) return -1;
  /* Both in before the hello goes: the backend's answer is redirected from
   * its first segment. A client byte that arrived after the hello was read
   * is redirected with the client's next segment (lbtls sends none). */
  for (int s = 0; s < 2; s++) {
    c->base_in[s] = received(c->fd[s]);
    c->base_out[s] = written(c->fd[s]);
  }
  if (map_put(cookie(c->fd[0]), c->fd[1]) < 0 || map_put(cookie(c->fd[1]), c->fd[0]) < 0) return -1;
  c->state = 2;
  for (size_t off = 0; off < c->hello_len;) { /* a fresh socket takes 16 KiB */
    ssize_t n = write(c->fd[1], c->hello + off, c->hello_len - off);
    if (n <= 0) return -1;
    off += (size_t)n;
  }
  return 0;
}

static int after_eof(struct conn* c, int s) {
  c->eof[s] = 1;
  if (!pass_eof(c, s) && !c->waiting) {
    c->waiting = 1;
    c->next_wait = wait_list;
    wait_list = c;
  }
  return c->shut[0] && c->shut[1] ? -1 : 0;
}

static int on_event(struct end* e, uint32_t ev) {
  struct conn* c = e->c;
  if (c->state == 0) return e->side == 0 && (ev & (EPOLLIN | EPOLLRDHUP | EPOLLERR)) ? on_hello(c) : 0;
  if (c->state == 1) {
    if (e->side == 0) return (ev & (EPOLLERR | EPOLLHUP)) ? -1 : 0;
    return (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) ? on_connected(c) : 0;
  }
  if (ev & EPOLLERR) return -1;
  if ((ev & (EPOLLRDHUP | EPOLLHUP)) && !c->eof[e->side]) return after_eof(c, e->side);
  return 0;
}

int main(int argc, char** argv) {
  int lfd = floor_setup(argc, argv, SOCK_NONBLOCK, &backend);
  if (load_verdict() < 0) return 1;
  ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event le = {.events = EPOLLIN, .data.ptr = NULL};
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &le);
  struct epoll_event evs[256];
  for (;;) {
    int n = epoll_wait(ep, evs, 256, wait_list ? 1 : -1);
    if (n < 0 && errno != EINTR) return 1;
    struct conn* dead[512];
    int ndead = 0;
    for (int i = 0; i < n; i++) {
      struct end* e = evs[i].data.ptr;
      if (!e) {
        int fd;
        struct conn* c = floor_accept(lfd, NULL, sizeof *c, offsetof(struct conn, hello), &fd);
        if (!c) continue;
        c->fd[0] = fd;
        c->fd[1] = -1;
        for (int s = 0; s < 2; s++) c->ends[s] = (struct end){c, s};
        if (add(c, 0, EPOLLIN) < 0) conn_free(c);
        continue;
      }
      if (e->c->state < 0) continue;
      if (on_event(e, evs[i].events) < 0) {
        e->c->state = -1;
        dead[ndead++] = e->c; /* at most one per event: 256 */
      }
    }
    /* EOFs whose bytes were still on their way: check them again. */
    struct conn** p = &wait_list;
    while (*p) {
      struct conn* c = *p;
      int done = c->state < 0;
      for (int s = 0; s < 2 && !done; s++)
        if (c->eof[s] && !pass_eof(c, s)) goto next;
      if (!done && c->shut[0] && c->shut[1]) {
        if (ndead == (int)(sizeof dead / sizeof dead[0])) break; /* the rest next turn */
        c->state = -1;
        dead[ndead++] = c;
      }
      *p = c->next_wait;
      c->waiting = 0;
      continue;
    next:
      p = &c->next_wait;
    }
    for (int i = 0; i < ndead; i++) conn_free(dead[i]);
  }
}
