#include "qryptchat/log.hpp"

#include <libwebsockets.h>

#include <cstdarg>
#include <cstdio>
#include <cstring>

#include "qryptchat/util.hpp"

namespace qc {

LogLevel g_log_level = LogLevel::Info;

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
	int n = snprintf(line, sizeof line, "%s %s ", ts.c_str(), log_level_name(level));
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
	line[len++] = '\n';
	// One write per line so that lines from a crash handler or another
	// process sharing stderr do not interleave.
	fwrite(line, 1, len, stderr);
	fflush(stderr);
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
