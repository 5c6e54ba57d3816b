// The kernel's socket tables (/proc/net/{tcp,tcp6,udp,udp6}) read for tests:
// what a process holds, which socket serves a port, what waits in a queue.
// One parser for every table row, so each helper asks its question of rows
// rather than of text.
//
// Thread rules: free functions, thread-safe (each call reads the files anew).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "test/support/deadline.h"
#include "test/support/net.h"

namespace lb::test {

// One row of a /proc/net socket table (IPv4 and IPv6 alike).
struct ProcNetRow {
  std::string local, remote;  // as the kernel writes them: "0100007F:1F90"
  uint16_t local_port = 0, remote_port = 0;
  unsigned state = 0;  // TCP: 1 ESTABLISHED ... 10 LISTEN; UDP: 7 unconnected, 1 connected
  unsigned long tx_queue = 0, rx_queue = 0;
  int timer_active = 0;  // TCP: 0 none, 1 retransmit, 2 keepalive, 4 zero-window probe
  long timer_when = 0;   // clock ticks until it fires
  std::string inode;
  uint64_t drops = 0;  // UDP: datagrams dropped on a full receive buffer
};

constexpr unsigned kTcpEstablished = 1, kTcpListen = 10;

// Every row of `table` ("tcp" or "udp": the IPv4 and IPv6 files both) as seen
// from `proc` ("/proc" for this network namespace, "/proc/PID" for the one
// process PID is in).
std::vector<ProcNetRow> proc_net_rows(const std::string& table, const std::string& proc = "/proc");

// The inodes of the sockets process `pid` holds open (from /proc/PID/fd).
std::set<std::string> socket_inodes(pid_t pid);

// The inodes of the sockets of `table` bound to local port `port` that
// process `pid` holds (TCP: listening ones only): the sockets of one of its
// binds.
std::set<std::string> bound_socket_inodes(pid_t pid, const std::string& table, uint16_t port);

// Bytes waiting in the receive queue of the TCP connection from local port
// `port` to remote port `remote` (/proc/net/tcp and tcp6), -1 when there is
// none: 0 once the process holding it (lb) has read what was sent to it.
long tcp_receive_queue(uint16_t port, uint16_t remote);
// Whether lb (listening on `lb_port`) has read everything `client` sent it
// by the deadline: the kernel's receive queue of lb's end is empty.
bool lb_has_read(const Socket& client, uint16_t lb_port, Deadline deadline);

}  // namespace lb::test
