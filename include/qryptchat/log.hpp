// log: levelled, one-line, escaped logging to stderr or a file.
//
// A line is "<ISO time> <level> <event> key=value ..." or, with
// log_format json, one JSON object per line with "ts", "level", "event"
// and one member per key.  The level is checked before anything is
// formatted (QC_LOG* macros).  Client-supplied strings must go through
// log_str() (quoted and escaped) so that nobody can forge a log line;
// tokens and message bodies are never logged.
#pragma once

#include <string>
#include <string_view>

namespace qc {

enum class LogLevel { Error = 0, Warn = 1, Info = 2, Debug = 3 };

// The current threshold; lines above it are dropped before formatting.
extern LogLevel g_log_level;

// "error", "warn", "info", "debug".
const char *log_level_name(LogLevel l);
bool parse_log_level(std::string_view s, LogLevel &out);

// Writes one line at `level` (printf format).  Use the macros instead.
void log_write(LogLevel level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// A client string as a quoted, escaped log field value.
std::string log_str(std::string_view s);

enum class LogFormat { Text, Json };
extern LogFormat g_log_format;
bool parse_log_format(std::string_view s, LogFormat &out); // "text", "json"

// One text line's body ("<event> key=value ...", values bare or as
// log_str() writes them) as the members of a JSON object, after "ts" and
// "level": `"event":"...","key":"value",...` (digits-only values as
// numbers, invalid UTF-8 as U+FFFD).
std::string log_body_json(std::string_view body);

// Sends lines to the file `path` (appended; created with mode 0640), or to
// stderr when `path` is empty.  Returns "" or the reason it could not be
// opened; the previous destination is then kept.
std::string log_set_file(const std::string &path);
// Opens the current file again, after logrotate moved it (SIGUSR1).
std::string log_reopen();

// Routes libwebsockets' own log output into ours (errors and warnings,
// plus notices at debug level).
void log_route_lws();

} // namespace qc

#define QC_LOG(level, ...)                                                                         \
	do {                                                                                       \
		if (static_cast<int>(level) <= static_cast<int>(::qc::g_log_level))                \
			::qc::log_write(level, __VA_ARGS__);                                       \
	} while (0)
#define QC_ERR(...) QC_LOG(::qc::LogLevel::Error, __VA_ARGS__)
#define QC_WARN(...) QC_LOG(::qc::LogLevel::Warn, __VA_ARGS__)
#define QC_INFO(...) QC_LOG(::qc::LogLevel::Info, __VA_ARGS__)
#define QC_DEBUG(...) QC_LOG(::qc::LogLevel::Debug, __VA_ARGS__)
