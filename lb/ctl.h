// `lb ctl`: the admin API from the command line, with no other tool.
//
//   lb ctl [-c PATH] [--admin ADDR] [--token-file PATH] COMMAND
//     status [--json] [--rates]      listeners, pools, backends (or the API's JSON)
//     drain POOL BACKEND             POST {"state":"drain"}
//     activate POOL BACKEND          POST {"state":"active"}
//     weight POOL BACKEND N          POST {"weight":N}
//     upgrade                        POST /api/v1/upgrade, then wait for the new program
//
// The admin address is [admin].listen of the configuration (default
// /etc/lb/lb.toml; only its [admin] table is read) unless --admin gives one;
// the bearer token comes from --token-file, else from that table's
// api_token_file. Exit codes: 0 success, 1 the API refused or could not be
// reached (its error on stderr), 2 bad command line.
//
// Thread: runs on the calling thread with blocking sockets; no libuv.
#pragma once

#include <cstdio>
#include <string>
#include <vector>

namespace lb::app {

// `args` are the words after "ctl". Output goes to `out`, errors to `err`.
int run_ctl(const std::vector<std::string>& args, std::FILE* out = stdout, std::FILE* err = stderr);

}  // namespace lb::app
