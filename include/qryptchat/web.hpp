// web: the static files of the web client (web_root), as the HTTP routes
// serve them.  Maps a request path to a file inside the root, never
// outside it, and says how to send it.  No sockets here.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "qryptchat/util.hpp"

namespace qc {

// Largest file served; the web client's files are a few tens of KB.
constexpr size_t kMaxWebFileBytes = 1024 * 1024;

// The canonical path of a web root directory, or an error naming it.
Result<std::string> web_root_resolve(const std::string &dir);

// The file a request path names, relative to the root: "/" and paths
// ending in "/" name that directory's index.html.  nullopt for anything
// that is not plainly a file below the root: a segment that is empty (but
// the last), "." or "..", or starts with "." (hidden files); a byte
// outside [A-Za-z0-9._~-] in a segment; more than 16 segments or 512
// bytes.  The path arrives already percent-decoded (lws decodes it), so
// "%2e%2e" is seen as "..".
std::optional<std::string> web_relative_path(std::string_view url_path);

// Content type for a file name, by extension (UTF-8 for text types).
const char *web_content_type(std::string_view name);

struct WebFile {
	std::string body;
	const char *type = "application/octet-stream";
	std::string etag; // strong validator: "\"<mtime ns hex>-<size hex>\""
};

// Reads the file `url_path` names under `root` (as returned by
// web_root_resolve).  nullopt when there is no such regular file inside
// the root (symbolic links are followed only while they stay inside it),
// or it is larger than kMaxWebFileBytes.
std::optional<WebFile> web_read(const std::string &root, std::string_view url_path);

// Headers every web client response carries: a strict
// Content-Security-Policy (scripts, styles, images and WebSocket
// connections from this origin only), no framing, no referrer.
constexpr const char *kWebCsp = "default-src 'none'; script-src 'self'; style-src 'self'; "
				"img-src 'self' data:; connect-src 'self'; manifest-src 'self'; "
				"base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

} // namespace qc
