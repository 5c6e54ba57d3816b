// HTTP/1.1 response framing for the admin server.
//
// Pure functions, no I/O: the server calls them on its loop thread, tests call
// them directly. Every response carries Content-Type and Content-Length
// (except where RFC 9110 forbids a body: 204 and 304), so a keep-alive client
// always knows where the next response starts.
#pragma once

#include <string>
#include <string_view>

#include "core/admin/http_server.h"

namespace lb::admin {

struct ResponseFraming {
  bool head = false;      // answering HEAD: the headers a GET would get, no body
  bool close = false;     // last response on this connection: "Connection: close"
  int version_minor = 1;  // a kept-alive HTTP/1.0 client needs "Connection: keep-alive"
};

// Canonical reason phrase for a status ("OK", "Not Found", ...); "" if unknown.
const char* reason_phrase(int status);

// Status line, headers and body, ready to write. A response the handler got
// wrong (status outside 200..599, a control byte in content_type) becomes a
// 500: a handler bug must never corrupt the framing of the connection.
std::string serialize_response(const HttpResponse& response, const ResponseFraming& framing);

// The plain-text answer to a request the server refuses itself (parse errors,
// handler exceptions): "<status> <reason>: <detail>\n".
HttpResponse error_response(int status, std::string_view detail);

}  // namespace lb::admin
