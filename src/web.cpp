#include "qryptchat/web.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace qc {

namespace {

constexpr size_t kMaxSegments = 16;
constexpr size_t kMaxPathBytes = 512;

bool segment_ok(std::string_view seg)
{
	if (seg.empty() || seg[0] == '.')
		return false;
	for (char c : seg) {
		bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
			  c == '.' || c == '_' || c == '~' || c == '-';
		if (!ok)
			return false;
	}
	return true;
}

std::optional<std::string> canonical(const std::string &path)
{
	char buf[PATH_MAX];
	if (!realpath(path.c_str(), buf))
		return std::nullopt;
	return std::string(buf);
}

} // namespace

Result<std::string> web_root_resolve(const std::string &dir)
{
	auto real = canonical(dir);
	struct stat st;
	if (!real || stat(real->c_str(), &st) != 0)
		return make_error(Err::ServerError, "web_root " + dir + ": " + strerror(errno));
	if (!S_ISDIR(st.st_mode))
		return make_error(Err::ServerError, "web_root " + dir + ": not a directory");
	return *real;
}

std::optional<std::string> web_relative_path(std::string_view url_path)
{
	if (url_path.empty() || url_path[0] != '/' || url_path.size() > kMaxPathBytes)
		return std::nullopt;
	std::string rel;
	size_t segments = 0;
	size_t at = 1;
	while (at <= url_path.size()) {
		size_t end = url_path.find('/', at);
		if (end == std::string_view::npos)
			end = url_path.size();
		std::string_view seg = url_path.substr(at, end - at);
		bool last = end == url_path.size();
		if (seg.empty() && last)
			break; // a trailing '/': the directory's index
		if (!segment_ok(seg) || ++segments > kMaxSegments)
			return std::nullopt;
		rel += (rel.empty() ? "" : "/") + std::string(seg);
		if (last)
			return rel;
		at = end + 1;
	}
	return rel.empty() ? std::string("index.html") : rel + "/index.html";
}

const char *web_content_type(std::string_view name)
{
	static const struct {
		const char *ext, *type;
	} kTypes[] = {
		{".html", "text/html; charset=utf-8"},
		{".js", "text/javascript; charset=utf-8"},
		{".mjs", "text/javascript; charset=utf-8"},
		{".css", "text/css; charset=utf-8"},
		{".json", "application/json"},
		{".webmanifest", "application/manifest+json"},
		{".svg", "image/svg+xml"},
		{".png", "image/png"},
		{".ico", "image/x-icon"},
		{".txt", "text/plain; charset=utf-8"},
	};
	for (const auto &t : kTypes) {
		size_t n = strlen(t.ext);
		if (name.size() > n && name.substr(name.size() - n) == t.ext)
			return t.type;
	}
	return "application/octet-stream";
}

std::optional<WebFile> web_read(const std::string &root, std::string_view url_path)
{
	auto rel = web_relative_path(url_path);
	if (!rel)
		return std::nullopt;
	auto real = canonical(root + "/" + *rel);
	if (!real || real->compare(0, root.size() + 1, root + "/") != 0)
		return std::nullopt; // absent, or a link that leads out of the root
	int fd = open(real->c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return std::nullopt;
	WebFile f;
	struct stat st;
	bool ok = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
		  static_cast<size_t>(st.st_size) <= kMaxWebFileBytes;
	if (ok) {
		f.body.resize(static_cast<size_t>(st.st_size));
		size_t got = 0;
		while (got < f.body.size()) {
			ssize_t n = read(fd, &f.body[got], f.body.size() - got);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				break;
			got += static_cast<size_t>(n);
		}
		ok = got == f.body.size();
	}
	close(fd);
	if (!ok)
		return std::nullopt;
	f.type = web_content_type(*rel);
	char etag[64];
	snprintf(etag, sizeof etag, "\"%llx-%llx\"",
		 static_cast<unsigned long long>(st.st_mtim.tv_sec) * 1000000000ULL +
			 static_cast<unsigned long long>(st.st_mtim.tv_nsec),
		 static_cast<unsigned long long>(st.st_size));
	f.etag = etag;
	return f;
}

} // namespace qc
