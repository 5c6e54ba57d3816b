/* What floor.c and floor_uring.c share: the command line, the listening
 * socket, the backend's address and when the client's first TLS record is
 * whole. Header-only: each yardstick is built from its one .c file. */
#ifndef LB_BENCH_FLOOR_H
#define LB_BENCH_FLOOR_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define HELLO_MAX 16389 /* one record: 5-byte header and up to 2^14 bytes */

/* Parses `NAME LISTEN_PORT BACKEND_PORT`, ignores SIGPIPE, fills *backend
 * (127.0.0.1) and returns the listening socket on 127.0.0.1 (TCP_NODELAY,
 * which accepted sockets inherit), or exits. */
static inline int floor_setup(int argc, char** argv, int sock_flags, struct sockaddr_in* backend) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s LISTEN_PORT BACKEND_PORT\n", argv[0]);
    exit(2);
  }
  signal(SIGPIPE, SIG_IGN);
  *backend = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
  backend->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | sock_flags, 0);
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  setsockopt(lfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (lfd < 0 || bind(lfd, (struct sockaddr*)&a, sizeof a) < 0 || listen(lfd, 4096) < 0) {
    perror("listen");
    exit(1);
  }
  return lfd;
}

/* 1: the first record is whole in hello[0, len); 0: more is needed; -1: not
 * a TLS handshake record. */
static inline int floor_hello_whole(const char* hello, size_t len) {
  if (len < 5) return 0;
  size_t need = 5 + (((size_t)(unsigned char)hello[3] << 8) | (unsigned char)hello[4]);
  if (hello[0] != 0x16 || need > HELLO_MAX) return -1;
  return len >= need;
}

/* Reads the rest of the client's first record into hello after its first
 * *len bytes, from the non-blocking fd: 1 when it is whole (*full, unless
 * full is NULL: the last read filled the room, so bytes may be left
 * behind), 0 when more is needed, -1 to close. */
static inline int floor_read_hello(int fd, char* hello, size_t* len, int* full) {
  for (;;) {
    size_t room = HELLO_MAX - *len;
    ssize_t n = read(fd, hello + *len, room);
    if (n < 0) return errno == EAGAIN ? 0 : -1;
    if (n == 0) return -1;
    *len += (size_t)n;
    int whole = floor_hello_whole(hello, *len);
    if (whole) {
      if (full) *full = (size_t)n == room;
      return whole;
    }
  }
}

/* A non-blocking TCP_NODELAY socket connecting to *to; -1 on failure. */
static inline int floor_connect(const struct sockaddr_in* to) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(fd, (const struct sockaddr*)to, sizeof *to) < 0 && errno != EINPROGRESS) {
    close(fd);
    return -1;
  }
  return fd;
}

/* Accepts one client (its address into *peer unless NULL) into a fresh
 * connection of `size` bytes whose first `clear` bytes are zeroed, with
 * *fd set; NULL when there is no client or no memory. */
static inline void* floor_accept(int lfd, struct sockaddr_in* peer, size_t size, size_t clear, int* fd) {
  socklen_t len = sizeof *peer;
  *fd = accept4(lfd, (struct sockaddr*)peer, peer ? &len : NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (*fd < 0) return NULL;
  void* c = malloc(size);
  if (!c) {
    close(*fd);
    return NULL;
  }
  memset(c, 0, clear);
  return c;
}

#endif
