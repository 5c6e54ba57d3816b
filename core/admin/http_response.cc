#include "core/admin/http_response.h"

#include <string_view>

namespace lb::admin {
namespace {

bool valid_header_value(std::string_view v) {
  for (char ch : v) {
    auto c = static_cast<unsigned char>(ch);
    if ((c < 0x20 && c != '\t') || c == 0x7f) return false;
  }
  return true;
}

// RFC 9110 token characters.
bool valid_header_name(std::string_view n) {
  if (n.empty()) return false;
  for (char ch : n) {
    auto c = static_cast<unsigned char>(ch);
    bool ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              std::string_view("!#$%&'*+-.^_`|~").find(ch) != std::string_view::npos;
    if (!ok) return false;
  }
  return true;
}

}  // namespace

const char* reason_phrase(int status) {
  switch (status) {
    case 100:
      return "Continue";
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 202:
      return "Accepted";
    case 204:
      return "No Content";
    case 301:
      return "Moved Permanently";
    case 302:
      return "Found";
    case 304:
      return "Not Modified";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 409:
      return "Conflict";
    case 411:
      return "Length Required";
    case 413:
      return "Content Too Large";
    case 415:
      return "Unsupported Media Type";
    case 422:
      return "Unprocessable Content";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "";
  }
}

std::string serialize_response(const HttpResponse& response, const ResponseFraming& framing) {
  if (response.status < 200 || response.status > 599 || !valid_header_value(response.content_type)) {
    return serialize_response(error_response(500, "invalid response from handler"), framing);
  }
  for (const auto& [name, value] : response.headers) {
    if (!valid_header_name(name) || !valid_header_value(value))
      return serialize_response(error_response(500, "invalid response header from handler"), framing);
  }
  // RFC 9110 §15.3.5, §15.4.5: 204 and 304 carry no content. A 304's length
  // would have to be the 200's, which we do not know: send none.
  const bool no_content = response.status == 204 || response.status == 304;
  const bool send_body = !framing.head && !no_content;

  std::string out;
  out.reserve(160 + 64 * response.headers.size() + (send_body ? response.body.size() : 0));
  out += "HTTP/1.1 ";
  out += std::to_string(response.status);
  out += ' ';
  out += reason_phrase(response.status);
  out += "\r\n";
  if (!response.content_type.empty() && !no_content) {
    out += "Content-Type: ";
    out += response.content_type;
    out += "\r\n";
  }
  if (!no_content) {
    out += "Content-Length: ";
    out += std::to_string(response.body.size());
    out += "\r\n";
  }
  for (const auto& [name, value] : response.headers) {
    out += name;
    out += ": ";
    out += value;
    out += "\r\n";
  }
  // Answers are live state (health, counters): no cache may keep them.
  out += "Cache-Control: no-store\r\n";
  if (framing.close) {
    out += "Connection: close\r\n";
  } else if (framing.version_minor == 0) {
    out += "Connection: keep-alive\r\n";
  }
  out += "\r\n";
  if (send_body) out += response.body;
  return out;
}

HttpResponse error_response(int status, std::string_view detail) {
  HttpResponse r;
  r.status = status;
  r.body = std::to_string(status);
  r.body += ' ';
  r.body += reason_phrase(status);
  if (!detail.empty()) {
    r.body += ": ";
    r.body += detail;
  }
  r.body += '\n';
  return r;
}

}  // namespace lb::admin
