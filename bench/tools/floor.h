/* What floor.c and floor_uring.c share: the command line, the listening
 * socket, the backend's address and when the client's first TLS record is
 * whole. Header-only: each yardstick is built from its one .c file. */
#ifndef LB_BENCH_FLOOR_H
#define LB_BENCH_FLOOR_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

#define HELLO_MAX 16389 /* one record: 5-byte header and up to 2^14 bytes */

/* Parses `NAME LISTEN_PORT BACKEND_PORT`, ignores SIGPIPE, fills *backend
 * (127.0.0.1) and returns the listening socket on 127.0.0.1 (TCP_NODELAY,
 * which accepted sockets inherit), or exits. */
static int floor_setup(int argc, char** argv, int sock_flags, struct sockaddr_in* backend) {
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
static int floor_hello_whole(const char* hello, size_t len) {
  if (len < 5) return 0;
  size_t need = 5 + (((size_t)(unsigned char)hello[3] << 8) | (unsigned char)hello[4]);
  if (hello[0] != 0x16 || need > HELLO_MAX) return -1;
  return len >= need;
}

#endif
