// Shared by the integration tests: cmocka, the support library, and
// shorthands for starting a server and talking to it.
#pragma once
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
extern "C" {
#include <cmocka.h>
}
// clang-format on

#include <poll.h>
#include <sqlite3.h>

#include <csignal>
#include <string>

#include "../support/chat.hpp"
#include "../support/jwt.hpp"
#include "../support/spawn.hpp"
#include "../support/wsclient.hpp"

namespace qc::test {

// Built with AddressSanitizer (make SANITIZE=address...): then so is the
// server, and its RSS says more about ASan than about the server.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kUnderAsan = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kUnderAsan = true;
#else
constexpr bool kUnderAsan = false;
#endif
#else
constexpr bool kUnderAsan = false;
#endif

inline std::unique_ptr<ServerProcess> start_server(
	std::vector<std::pair<std::string, std::string>> config = {})
{
	ServerOptions o;
	o.config = std::move(config);
	return ServerProcess::start(o);
}

inline std::unique_ptr<WsClient> ws(const ServerProcess &s, const std::string &target = "/ws",
				    const Headers &h = {})
{
	auto c = WsClient::connect(s.port(), target, h);
	if (!c)
		fail_msg("WebSocket connection to %s refused", target.c_str());
	return c;
}

// JSON body of an HTTP response.
inline Json http_json(const HttpResponse &r)
{
	Json j = parse_json(r.body);
	if (!j)
		fail_msg("HTTP %d body is not JSON: %s", r.status, r.body.c_str());
	return j;
}

// A number from the server's /stats, by dotted path.
inline int stat_of(const ServerProcess &s, const std::string &path)
{
	return static_cast<int>(jnum(http_json(http_request(s.port(), "GET", "/stats")).get(), path));
}

// The server sees a close asynchronously: polls /stats until it counts
// `want` WebSocket connections (5 s at most).
inline void wait_connections(const ServerProcess &s, int want)
{
	int n = -1;
	for (int i = 0; i < 500 && n != want; i++) {
		if (i)
			poll(nullptr, 0, 10);
		n = stat_of(s, "totalConnections");
	}
	assert_int_equal(n, want);
}

// PRAGMA integrity_check of a database file (opened read-only) is "ok".
inline void expect_integrity_ok(const std::string &db_path)
{
	sqlite3 *db = nullptr;
	assert_int_equal(sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
	sqlite3_stmt *st = nullptr;
	assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, nullptr), SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	assert_string_equal(reinterpret_cast<const char *>(sqlite3_column_text(st, 0)), "ok");
	sqlite3_finalize(st);
	sqlite3_close(db);
}

// A cmocka group fixture: one server with the defaults for every test of
// the group, reached with shared_server(state).
inline int shared_server_setup(void **state)
{
	*state = new std::unique_ptr<ServerProcess>(start_server());
	return 0;
}

inline int shared_server_teardown(void **state)
{
	delete static_cast<std::unique_ptr<ServerProcess> *>(*state);
	return 0;
}

inline ServerProcess &shared_server(void **state)
{
	return **static_cast<std::unique_ptr<ServerProcess> *>(*state);
}

// Chat request helpers shared by the chat and cluster tests.

// A JSON array of strings.
inline std::string ids_json(const std::vector<std::string> &ids)
{
	std::string out = "[";
	for (const auto &id : ids)
		out += (out.size() > 1 ? "," : "") + jquote(id);
	return out + "]";
}

// {"conversationId": conv, <more>}
inline std::string conv_payload(const std::string &conv, const std::string &more = "")
{
	return "{\"conversationId\":" + jquote(conv) + (more.empty() ? "" : "," + more) + "}";
}

// The `seq` of every message in a messages_loaded frame, in order.
inline std::vector<int> seqs(const cJSON *j)
{
	std::vector<int> out;
	int n = jsize(j, "payload.messages");
	for (int i = 0; i < n; i++)
		out.push_back(static_cast<int>(jnum(j, "payload.messages." + std::to_string(i) + ".seq")));
	return out;
}

// from, from + 1, ..., to.
inline std::vector<int> range(int from, int to)
{
	std::vector<int> v;
	for (int i = from; i <= to; i++)
		v.push_back(i);
	return v;
}

} // namespace qc::test

#define assert_str_eq(a, b) assert_string_equal(std::string(a).c_str(), std::string(b).c_str())
#define assert_contains(hay, needle)                                                               \
	do {                                                                                       \
		std::string h_ = (hay), n_ = (needle);                                             \
		if (h_.find(n_) == std::string::npos)                                              \
			fail_msg("expected to find \"%s\" in:\n%s", n_.c_str(), h_.c_str());       \
	} while (0)
