/* lb-netem: a user-space netem for the tests (the kernels here have no netem
 * qdisc and load no modules).
 *
 * It creates pairs of TAP devices, each end in a network namespace the test
 * made, and carries Ethernet frames between the two ends of a pair, in both
 * directions, impaired like netem would: lost, delayed (with jitter),
 * reordered and duplicated at given rates. On command it also drops the SYNs
 * sent to one IPv4 address, or every frame to or from one (a backend that
 * vanishes without a reset).
 *
 *   lb-netem --pair NS_A:TAP_A,NS_B:TAP_B [--pair ...]
 *            (NS: a name from `ip netns add`, or a path such as
 *            /proc/PID/fd/N when it starts with '/')
 *            [--loss PCT] [--delay MS] [--jitter MS] [--reorder PCT]
 *            [--duplicate PCT] [--seed N] [--queue FRAMES]
 *            [--control FILE] [--max-seconds S]
 *
 * The TAP devices exist while lb-netem runs; it prints "ready" once they all
 * exist, then the test gives them addresses and brings them up.
 *
 * Delay: every frame of one direction waits delay + uniform(-jitter, +jitter)
 * but never overtakes the one before it (netem with a rate behaves so), so
 * jitter alone does not reorder. Reordering: a frame chosen with --reorder is
 * sent at once, ahead of the frames queued before it. Duplication: the copy
 * follows the original. Loss is applied once per frame (a duplicate is not
 * lost separately). A full queue drops (counted, like a router's).
 *
 * Control: on SIGHUP it reads FILE, one rule a line, replacing every rule:
 *   drop_syn A.B.C.D     drop TCP SYNs (without ACK) sent to that address
 *   drop_all A.B.C.D     drop every frame to or from it (IPv4 and ARP)
 * and prints "control N rules R" (N counts the SIGHUPs handled) so the test
 * knows the rules are in force. SIGUSR1 prints the counters; so does the
 * exit. It ends by itself on SIGTERM/SIGINT, when its parent dies, or after
 * --max-seconds (default 3600).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#define MAX_TAPS 16
#define MAX_RULES 32
#define SLOT 2048 /* a frame: MTU 1500 + Ethernet header, and room to spare */

struct frame {
  uint64_t due_ns;
  uint16_t len;
};

/* One direction: frames read from tap `from`, written to tap `to`, in a ring. */
struct queue {
  int from, to;
  size_t cap, head, count;
  uint64_t last_due;
  struct frame* meta;
  unsigned char* data;
};

struct counters {
  unsigned long long in, out, lost, ruled, duplicated, reordered, overflow, write_err;
};

struct rule {
  int all; /* 1: drop_all, 0: drop_syn */
  uint32_t addr; /* network order */
};

static int taps[MAX_TAPS];
static int ntaps;
static struct queue queues[MAX_TAPS];
static struct counters stats;
static struct rule rules[MAX_RULES];
static int nrules;
static double p_loss, p_reorder, p_dup;
static double delay_ms, jitter_ms;
static const char* control_path;
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static volatile sig_atomic_t got_hup, got_usr1, got_stop;

static void on_signal(int sig) {
  if (sig == SIGHUP) got_hup = 1;
  else if (sig == SIGUSR1) got_usr1 = 1;
  else got_stop = 1;
}

static void die(const char* what) {
  fprintf(stderr, "lb-netem: %s: %s\n", what, strerror(errno));
  exit(1);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* xorshift64*: fast, and reproducible for a given --seed. */
static double uniform(void) {
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return (double)((rng_state * 2685821657736338717ull) >> 11) / 9007199254740992.0;
}

static int chance(double pct) { return pct > 0 && uniform() * 100.0 < pct; }

/* Creates TAP device `name` inside network namespace `ns` (ip netns's
 * /run/netns/NS, or a path to the namespace when NS starts with '/'); the
 * descriptor stays ours after we go back. */
static int open_tap(const char* ns, const char* name) {
  int self = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
  if (self < 0) die("/proc/self/ns/net");
  char path[256];
  /* A path (e.g. /proc/PID/fd/N of a namespace held by a descriptor, one
   * without a name), or a name made by `ip netns add`. */
  if (ns[0] == '/') snprintf(path, sizeof path, "%s", ns);
  else snprintf(path, sizeof path, "/run/netns/%s", ns);
  int target = open(path, O_RDONLY | O_CLOEXEC);
  if (target < 0) die(path);
  if (setns(target, CLONE_NEWNET) != 0) die("setns");
  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) die("/dev/net/tun");
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
  snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
  if (ioctl(fd, TUNSETIFF, &ifr) != 0) die("TUNSETIFF");
  if (setns(self, CLONE_NEWNET) != 0) die("setns back");
  close(self);
  close(target);
  return fd;
}

static void add_pair(const char* spec, size_t cap) {
  char buf[256];
  snprintf(buf, sizeof buf, "%s", spec);
  char* comma = strchr(buf, ',');
  if (!comma || ntaps + 2 > MAX_TAPS) {
    fprintf(stderr, "lb-netem: bad --pair %s (NS:TAP,NS:TAP)\n", spec);
    exit(2);
  }
  *comma = 0;
  char* ends[2] = {buf, comma + 1};
  int idx[2];
  for (int i = 0; i < 2; ++i) {
    char* colon = strchr(ends[i], ':');
    if (!colon) {
      fprintf(stderr, "lb-netem: bad --pair %s (NS:TAP,NS:TAP)\n", spec);
      exit(2);
    }
    *colon = 0;
    idx[i] = ntaps;
    taps[ntaps++] = open_tap(ends[i], colon + 1);
  }
  for (int i = 0; i < 2; ++i) {
    struct queue* q = &queues[idx[i]];
    q->from = idx[i];
    q->to = idx[1 - i];
    q->cap = cap;
    q->meta = calloc(cap, sizeof *q->meta);
    q->data = malloc(cap * SLOT);
    if (!q->meta || !q->data) die("queue memory");
  }
}

static int parse_rules(void) {
  FILE* f = fopen(control_path, "r");
  nrules = 0;
  if (!f) return 0;
  char line[256], verb[64], addr[64];
  while (fgets(line, sizeof line, f)) {
    if (sscanf(line, "%63s %63s", verb, addr) != 2 || nrules == MAX_RULES) continue;
    struct in_addr a;
    if (inet_pton(AF_INET, addr, &a) != 1) continue;
    if (strcmp(verb, "drop_all") == 0) rules[nrules++] = (struct rule){1, a.s_addr};
    else if (strcmp(verb, "drop_syn") == 0) rules[nrules++] = (struct rule){0, a.s_addr};
  }
  fclose(f);
  return nrules;
}

/* Whether a rule drops this frame. */
static int ruled_out(const unsigned char* f, size_t len) {
  if (nrules == 0 || len < 14) return 0;
  uint16_t type = (uint16_t)(f[12] << 8 | f[13]);
  if (type == 0x0806 && len >= 42) { /* ARP: sender IP at 28, target IP at 38 */
    uint32_t spa, tpa;
    memcpy(&spa, f + 28, 4);
    memcpy(&tpa, f + 38, 4);
    for (int i = 0; i < nrules; ++i)
      if (rules[i].all && (spa == rules[i].addr || tpa == rules[i].addr)) return 1;
    return 0;
  }
  if (type != 0x0800 || len < 34) return 0;
  const unsigned char* ip = f + 14;
  size_t ihl = (size_t)(ip[0] & 0x0f) * 4;
  uint32_t src, dst;
  memcpy(&src, ip + 12, 4);
  memcpy(&dst, ip + 16, 4);
  int syn = 0;
  if (ip[9] == 6 && len >= 14 + ihl + 14) {
    unsigned char flags = ip[ihl + 13];
    syn = (flags & 0x02) && !(flags & 0x10);
  }
  for (int i = 0; i < nrules; ++i) {
    if (rules[i].all && (src == rules[i].addr || dst == rules[i].addr)) return 1;
    if (!rules[i].all && syn && dst == rules[i].addr) return 1;
  }
  return 0;
}

static void send_now(int to, const unsigned char* f, size_t len) {
  if (write(taps[to], f, len) == (ssize_t)len) ++stats.out;
  else ++stats.write_err; /* the device is down, or its queue full: a lost frame */
}

static void enqueue(struct queue* q, const unsigned char* f, size_t len, uint64_t due) {
  if (q->count == q->cap) {
    ++stats.overflow;
    return;
  }
  size_t slot = (q->head + q->count) % q->cap;
  q->meta[slot].due_ns = due;
  q->meta[slot].len = (uint16_t)len;
  memcpy(q->data + slot * SLOT, f, len);
  ++q->count;
}

static void on_frame(struct queue* q, const unsigned char* f, size_t len, uint64_t now) {
  ++stats.in;
  if (ruled_out(f, len)) {
    ++stats.ruled;
    return;
  }
  if (chance(p_loss)) {
    ++stats.lost;
    return;
  }
  int copies = chance(p_dup) ? 2 : 1;
  if (copies == 2) ++stats.duplicated;
  if (chance(p_reorder)) {
    ++stats.reordered;
    for (int i = 0; i < copies; ++i) send_now(q->to, f, len);
    return;
  }
  double d = delay_ms + (jitter_ms > 0 ? (uniform() * 2.0 - 1.0) * jitter_ms : 0.0);
  uint64_t due = now + (uint64_t)(d > 0 ? d * 1e6 : 0);
  if (due < q->last_due) due = q->last_due;
  q->last_due = due;
  for (int i = 0; i < copies; ++i) enqueue(q, f, len, due);
}

static void flush_due(uint64_t now) {
  for (int i = 0; i < ntaps; ++i) {
    struct queue* q = &queues[i];
    while (q->count && q->meta[q->head].due_ns <= now) {
      send_now(q->to, q->data + q->head * SLOT, q->meta[q->head].len);
      q->head = (q->head + 1) % q->cap;
      --q->count;
    }
  }
}

static void print_stats(const char* when) {
  printf("%s in %llu out %llu lost %llu ruled %llu duplicated %llu reordered %llu overflow %llu write_errors %llu\n",
         when, stats.in, stats.out, stats.lost, stats.ruled, stats.duplicated, stats.reordered, stats.overflow,
         stats.write_err);
  fflush(stdout);
}

int main(int argc, char** argv) {
  double max_seconds = 3600;
  size_t cap = 8192;
  const char* pairs[MAX_TAPS / 2];
  int npairs = 0;
  for (int i = 1; i < argc; ++i) {
    const char* a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!v) {
      fprintf(stderr, "lb-netem: %s needs a value\n", a);
      return 2;
    }
    ++i;
    if (!strcmp(a, "--pair") && npairs < MAX_TAPS / 2) pairs[npairs++] = v;
    else if (!strcmp(a, "--loss")) p_loss = atof(v);
    else if (!strcmp(a, "--delay")) delay_ms = atof(v);
    else if (!strcmp(a, "--jitter")) jitter_ms = atof(v);
    else if (!strcmp(a, "--reorder")) p_reorder = atof(v);
    else if (!strcmp(a, "--duplicate")) p_dup = atof(v);
    else if (!strcmp(a, "--seed")) rng_state ^= strtoull(v, NULL, 10) * 0x2545f4914f6cdd1dull;
    else if (!strcmp(a, "--queue")) cap = strtoul(v, NULL, 10);
    else if (!strcmp(a, "--control")) control_path = v;
    else if (!strcmp(a, "--max-seconds")) max_seconds = atof(v);
    else {
      fprintf(stderr, "lb-netem: unknown option %s\n", a);
      return 2;
    }
  }
  if (npairs == 0 || cap == 0) {
    fprintf(stderr, "usage: lb-netem --pair NS_A:TAP_A,NS_B:TAP_B [--pair ...] [--loss PCT] [--delay MS]\n"
                    "       [--jitter MS] [--reorder PCT] [--duplicate PCT] [--seed N] [--queue FRAMES]\n"
                    "       [--control FILE] [--max-seconds S]\n");
    return 2;
  }
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (getppid() == 1) return 1; /* the parent is gone already */

  /* Signals are blocked except inside ppoll, so a flag set by a handler is
   * always seen before the next wait. */
  sigset_t block, during_wait;
  sigemptyset(&block);
  int sigs[] = {SIGHUP, SIGUSR1, SIGTERM, SIGINT};
  for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; ++i) {
    sigaddset(&block, sigs[i]);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(sigs[i], &sa, NULL);
  }
  sigprocmask(SIG_BLOCK, &block, &during_wait);
  sigdelset(&during_wait, SIGHUP);
  sigdelset(&during_wait, SIGUSR1);
  sigdelset(&during_wait, SIGTERM);
  sigdelset(&during_wait, SIGINT);

  for (int i = 0; i < npairs; ++i) add_pair(pairs[i], cap);
  printf("ready taps %d\n", ntaps);
  fflush(stdout);

  struct pollfd pfd[MAX_TAPS];
  for (int i = 0; i < ntaps; ++i) pfd[i] = (struct pollfd){.fd = taps[i], .events = POLLIN};
  static unsigned char buf[65536];
  const uint64_t end = now_ns() + (uint64_t)(max_seconds * 1e9);
  unsigned long controls = 0;

  while (!got_stop) {
    uint64_t now = now_ns();
    if (now >= end) {
      printf("max-seconds reached\n");
      break;
    }
    if (got_hup) {
      got_hup = 0;
      int n = control_path ? parse_rules() : 0;
      printf("control %lu rules %d\n", ++controls, n);
      fflush(stdout);
    }
    if (got_usr1) {
      got_usr1 = 0;
      print_stats("stats");
    }
    uint64_t wake = end;
    for (int i = 0; i < ntaps; ++i)
      if (queues[i].count && queues[i].meta[queues[i].head].due_ns < wake) wake = queues[i].meta[queues[i].head].due_ns;
    uint64_t wait = wake > now ? wake - now : 0;
    struct timespec ts = {.tv_sec = (time_t)(wait / 1000000000ull), .tv_nsec = (long)(wait % 1000000000ull)};
    int rc = ppoll(pfd, (nfds_t)ntaps, &ts, &during_wait);
    if (rc < 0 && errno != EINTR) die("ppoll");
    now = now_ns();
    if (rc > 0) {
      for (int i = 0; i < ntaps; ++i) {
        if (!(pfd[i].revents & POLLIN)) continue;
        for (int k = 0; k < 256; ++k) { /* bounded: the other taps get their turn */
          ssize_t n = read(taps[i], buf, sizeof buf);
          if (n <= 0) break;
          if ((size_t)n > SLOT) continue; /* larger than any frame we carry (no GSO here) */
          on_frame(&queues[i], buf, (size_t)n, now);
        }
      }
    }
    flush_due(now_ns());
  }
  print_stats("exit");
  return 0;
}
