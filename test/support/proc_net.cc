#include "test/support/proc_net.h"

#include <filesystem>
#include <fstream>
#include <sstream>

namespace lb::test {

namespace {

unsigned long hex(const std::string& s, size_t from = 0, size_t count = std::string::npos) {
  return std::stoul(s.substr(from, count), nullptr, 16);
}

uint16_t port_of(const std::string& address) {
  size_t colon = address.rfind(':');
  return colon == std::string::npos ? 0 : static_cast<uint16_t>(hex(address, colon + 1));
}

}  // namespace

std::vector<ProcNetRow> proc_net_rows(const std::string& table, const std::string& proc) {
  std::vector<ProcNetRow> rows;
  for (const char* family : {"", "6"}) {
    std::ifstream f(proc + "/net/" + table + family);
    std::string line;
    std::getline(f, line);  // the header
    while (std::getline(f, line)) {
      // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ... (UDP: ... drops)
      std::istringstream in(line);
      std::vector<std::string> w;
      for (std::string word; in >> word;) w.push_back(word);
      if (w.size() < 10) continue;
      const size_t qc = w[4].find(':'), tc = w[5].find(':');
      if (qc == std::string::npos || tc == std::string::npos) continue;
      ProcNetRow r;
      r.local = w[1];
      r.remote = w[2];
      r.local_port = port_of(w[1]);
      r.remote_port = port_of(w[2]);
      r.state = static_cast<unsigned>(hex(w[3]));
      r.tx_queue = hex(w[4], 0, qc);
      r.rx_queue = hex(w[4], qc + 1);
      r.timer_active = static_cast<int>(hex(w[5], 0, tc));
      r.timer_when = static_cast<long>(hex(w[5], tc + 1));
      r.inode = w[9];
      if (table == "udp" && w.size() >= 13) r.drops = std::stoull(w.back());
      rows.push_back(std::move(r));
    }
  }
  return rows;
}

std::set<std::string> socket_inodes(pid_t pid) {
  std::set<std::string> inodes;
  std::error_code ec;
  const std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    auto link = std::filesystem::read_symlink(e.path(), ec).string();
    if (!ec && link.rfind("socket:[", 0) == 0) inodes.insert(link.substr(8, link.size() - 9));
  }
  return inodes;
}

std::set<std::string> bound_socket_inodes(pid_t pid, const std::string& table, uint16_t port) {
  const std::set<std::string> held = socket_inodes(pid);
  std::set<std::string> out;
  for (const auto& r : proc_net_rows(table, "/proc/" + std::to_string(pid)))
    if (r.local_port == port && held.count(r.inode) && (table != "tcp" || r.state == kTcpListen))
      out.insert(r.inode);
  return out;
}

long tcp_receive_queue(uint16_t port, uint16_t remote) {
  for (const auto& r : proc_net_rows("tcp"))
    if (r.local_port == port && r.remote_port == remote) return static_cast<long>(r.rx_queue);
  return -1;
}

bool lb_has_read(const Socket& client, uint16_t lb_port, Deadline deadline) {
  const uint16_t port = local_port(client);
  return wait_until([&] { return tcp_receive_queue(lb_port, port) == 0; }, deadline);
}

}  // namespace lb::test
