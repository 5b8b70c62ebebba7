#include "qryptchat/log.hpp"

#include <fcntl.h>
#include <libwebsockets.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>

#include "qryptchat/util.hpp"

namespace qc {

LogLevel g_log_level = LogLevel::Info;
LogFormat g_log_format = LogFormat::Text;

namespace {

int g_log_fd = 2;          // stderr, or the log file
std::string g_log_path;    // "" for stderr

void json_string(std::string &out, std::string_view s)
{
	out.push_back('"');
	size_t i = 0;
	while (i < s.size()) {
		unsigned char c = static_cast<unsigned char>(s[i]);
		if (c < 0x80) {
			if (c == '"' || c == '\\') {
				out.push_back('\\');
				out.push_back(static_cast<char>(c));
			} else if (c < 0x20 || c == 0x7f) {
				char buf[8];
				snprintf(buf, sizeof buf, "\\u%04x", c);
				out += buf;
			} else {
				out.push_back(static_cast<char>(c));
			}
			i++;
			continue;
		}
		// A whole, shortest-form UTF-8 sequence, or U+FFFD for this byte.
		size_t n = c >= 0xf0 && c <= 0xf4 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 && c <= 0xdf ? 2 : 0;
		bool ok = n > 0 && i + n <= s.size();
		for (size_t k = 1; ok && k < n; k++)
			ok = (static_cast<unsigned char>(s[i + k]) & 0xc0) == 0x80;
		if (ok && n == 3) {
			unsigned char c1 = static_cast<unsigned char>(s[i + 1]);
			ok = !(c == 0xe0 && c1 < 0xa0) && !(c == 0xed && c1 >= 0xa0);
		}
		if (ok && n == 4) {
			unsigned char c1 = static_cast<unsigned char>(s[i + 1]);
			ok = !(c == 0xf0 && c1 < 0x90) && !(c == 0xf4 && c1 >= 0x90);
		}
		// C1 controls and the line and paragraph separators are escaped
		// too: a terminal or a JSON-in-JavaScript reader could act on them.
		unsigned char c1 = ok && n >= 2 ? static_cast<unsigned char>(s[i + 1]) : 0;
		unsigned char c2 = ok && n >= 3 ? static_cast<unsigned char>(s[i + 2]) : 0;
		if (ok && n == 2 && c == 0xc2 && c1 < 0xa0) {
			char buf[8];
			snprintf(buf, sizeof buf, "\\u%04x", c1);
			out += buf;
			i += n;
		} else if (ok && n == 3 && c == 0xe2 && c1 == 0x80 && (c2 == 0xa8 || c2 == 0xa9)) {
			out += c2 == 0xa8 ? "\\u2028" : "\\u2029";
			i += n;
		} else if (ok) {
			out.append(s.data() + i, n);
			i += n;
		} else {
			out += "\\ufffd";
			i++;
		}
	}
	out.push_back('"');
}

// Undoes escape_text(): \" \\ and \xNN.
std::string unescape(std::string_view s)
{
	std::string out;
	for (size_t i = 0; i < s.size(); i++) {
		if (s[i] != '\\' || i + 1 >= s.size()) {
			out.push_back(s[i]);
			continue;
		}
		char e = s[++i];
		auto hex = [](char h) {
			return h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : -1;
		};
		if (e == 'x' && i + 2 < s.size() && hex(s[i + 1]) >= 0 && hex(s[i + 2]) >= 0) {
			out.push_back(static_cast<char>(hex(s[i + 1]) * 16 + hex(s[i + 2])));
			i += 2;
		} else {
			out.push_back(e);
		}
	}
	return out;
}

bool all_digits(std::string_view v)
{
	if (v.empty() || v.size() > 18 || (v.size() > 1 && v[0] == '0'))
		return false;
	for (char c : v)
		if (c < '0' || c > '9')
			return false;
	return true;
}

} // namespace

bool parse_log_format(std::string_view s, LogFormat &out)
{
	if (s == "text")
		out = LogFormat::Text;
	else if (s == "json")
		out = LogFormat::Json;
	else
		return false;
	return true;
}

std::string log_body_json(std::string_view body)
{
	std::string out, rest;
	size_t i = 0;
	auto skip_spaces = [&] {
		while (i < body.size() && body[i] == ' ')
			i++;
	};
	skip_spaces();
	size_t end = body.find(' ', i);
	std::string_view event = body.substr(i, end == std::string_view::npos ? body.npos : end - i);
	if (event.find('=') != std::string_view::npos) {
		event = "";
	} else {
		i = end == std::string_view::npos ? body.size() : end;
	}
	out += "\"event\":";
	json_string(out, event);
	while (skip_spaces(), i < body.size()) {
		size_t eq = body.find('=', i), sp = body.find(' ', i);
		if (eq == std::string_view::npos || (sp != std::string_view::npos && sp < eq)) {
			// A word that is not key=value: kept in "text".
			size_t e = sp == std::string_view::npos ? body.size() : sp;
			rest += (rest.empty() ? "" : " ") + std::string(body.substr(i, e - i));
			i = e;
			continue;
		}
		std::string_view key = body.substr(i, eq - i);
		i = eq + 1;
		std::string value;
		bool quoted = i < body.size() && body[i] == '"';
		if (quoted) {
			size_t j = i + 1;
			while (j < body.size() && body[j] != '"')
				j += body[j] == '\\' ? 2 : 1;
			value = unescape(body.substr(i + 1, std::min(j, body.size()) - i - 1));
			i = j + 1;
		} else {
			size_t e = body.find(' ', i);
			if (e == std::string_view::npos)
				e = body.size();
			value = std::string(body.substr(i, e - i));
			i = e;
		}
		out.push_back(',');
		json_string(out, key);
		out.push_back(':');
		if (!quoted && all_digits(value))
			out += value;
		else
			json_string(out, value);
	}
	if (!rest.empty()) {
		out += ",\"text\":";
		json_string(out, rest);
	}
	return out;
}

std::string log_set_file(const std::string &path)
{
	int fd = 2;
	if (!path.empty()) {
		fd = open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
		if (fd < 0)
			return path + ": " + strerror(errno);
	}
	if (g_log_fd != 2)
		close(g_log_fd);
	g_log_fd = fd;
	g_log_path = path;
	return "";
}

std::string log_reopen() { return log_set_file(g_log_path); }

const char *log_level_name(LogLevel l)
{
	switch (l) {
	case LogLevel::Error: return "error";
	case LogLevel::Warn: return "warn";
	case LogLevel::Info: return "info";
	case LogLevel::Debug: return "debug";
	}
	return "info";
}

bool parse_log_level(std::string_view s, LogLevel &out)
{
	for (auto l : {LogLevel::Error, LogLevel::Warn, LogLevel::Info, LogLevel::Debug})
		if (s == log_level_name(l)) {
			out = l;
			return true;
		}
	return false;
}

void log_write(LogLevel level, const char *fmt, ...)
{
	char line[2048];
	std::string ts = iso8601_ms(now_ms());
	int n = g_log_format == LogFormat::Text
			? snprintf(line, sizeof line, "%s %s ", ts.c_str(), log_level_name(level))
			: 0;
	va_list ap;
	va_start(ap, fmt);
	int m = vsnprintf(line + n, sizeof line - static_cast<size_t>(n) - 1, fmt, ap);
	va_end(ap);
	size_t len = static_cast<size_t>(n) + (m < 0 ? 0 : static_cast<size_t>(m));
	if (len > sizeof line - 2) {
		// vsnprintf cut the line: drop a character it cut in two, so that
		// the line stays valid UTF-8.
		len = sizeof line - 2;
		size_t lead = len - 1;
		while (lead > 0 && (static_cast<unsigned char>(line[lead]) & 0xc0) == 0x80)
			lead--;
		unsigned char c = static_cast<unsigned char>(line[lead]);
		size_t need = c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
		if (lead + need > len)
			len = lead;
	}
	std::string json;
	const char *out = line;
	if (g_log_format == LogFormat::Json) {
		json = "{\"ts\":\"" + ts + "\",\"level\":\"" + log_level_name(level) + "\"," +
		       log_body_json(std::string_view(line, len)) + "}\n";
		out = json.data();
		len = json.size();
	} else {
		line[len++] = '\n';
	}
	// One write per line so that lines from a crash handler or another
	// process sharing the file do not interleave.
	while (write(g_log_fd, out, len) < 0 && errno == EINTR) {
	}
}

std::string log_str(std::string_view s) { return "\"" + escape_text(s, 200) + "\""; }

namespace {

void lws_emit(int level, const char *line)
{
	// lws lines end with a newline and carry no user data we must hide.
	size_t len = strlen(line);
	while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
		len--;
	std::string text(line, len);
	// lws warns about every refused upgrade and dropped peer: that is
	// per-connection noise for an operator, so only its errors rise above
	// debug.
	if (level & LLL_ERR)
		QC_ERR("lws msg=%s", log_str(text).c_str());
	else
		QC_DEBUG("lws msg=%s", log_str(text).c_str());
}

} // namespace

void log_route_lws()
{
	int mask = LLL_ERR | LLL_WARN;
	lws_set_log_level(mask, lws_emit);
}

} // namespace qc
