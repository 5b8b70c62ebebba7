// Refused upgrades (PROTOCOL.md §1): allowed_origins (403), max_connections
// (503), per-address connections and new connections per minute (429, with
// Retry-After), each at its limit and one past it, with the JSON body and
// the /stats counter that goes with it; and the memory of the addresses
// seen, which must not grow with every new one.
#include <cstdio>

#include "common.hpp"

using namespace qc::test;

namespace {

void expect_refused(const ServerProcess &s, int status, const Headers &h = {},
		    HttpResponse *out = nullptr)
{
	HttpResponse r;
	auto c = WsClient::connect(s.port(), "/ws", h, &r);
	if (c)
		fail_msg("the upgrade was accepted; expected HTTP %d", status);
	assert_int_equal(r.status, status);
	Json body = http_json(r);
	assert_true(jstr(body.get(), "error").size() > 0);
	if (out)
		*out = r;
}

} // namespace

static void test_allowed_origins(void **)
{
	auto s = start_server({{"allowed_origins", "https://chat.example.org, https://other.example.org"}});
	// Listed origins pass; so does an upgrade without Origin (not a browser).
	assert_non_null(ws(*s, "/ws", {{"Origin", "https://chat.example.org"}}).get());
	assert_non_null(ws(*s, "/ws", {{"Origin", "https://other.example.org"}}).get());
	assert_non_null(ws(*s, "/ws").get());
	// Anything else is 403: another host, scheme or port.
	expect_refused(*s, 403, {{"Origin", "https://evil.example.org"}});
	expect_refused(*s, 403, {{"Origin", "http://chat.example.org"}});
	expect_refused(*s, 403, {{"Origin", "https://chat.example.org:8443"}});
	assert_int_equal(stat_of(*s, "refusedOrigin"), 3);
	// Empty (the default) allows any origin.
	auto open = start_server();
	assert_non_null(ws(*open, "/ws", {{"Origin", "https://anywhere.example"}}).get());
}

static void test_max_connections(void **)
{
	auto s = start_server({{"max_connections", "2"}});
	auto a = ws(*s), b = ws(*s);
	HttpResponse r;
	expect_refused(*s, 503, {}, &r);
	assert_int_equal(stat_of(*s, "refusedMaxConnections"), 1);
	// Plain HTTP is not a WebSocket connection: still served.
	assert_int_equal(http_request(s->port(), "GET", "/health").status, 200);
	// A slot freed is a slot taken.
	a.reset();
	wait_connections(*s, 1);
	auto c = ws(*s);
	assert_non_null(c.get());
	expect_refused(*s, 503);
}

static void test_per_address_connections(void **)
{
	auto s = start_server({{"max_connections_per_ip", "3"}, {"connection_rate_per_ip", "0"}});
	auto a = ws(*s), b = ws(*s), c = ws(*s);
	HttpResponse r;
	expect_refused(*s, 429, {}, &r);
	assert_str_eq(r.header("retry-after"), "60");
	assert_int_equal(stat_of(*s, "refusedPerIp"), 1);
	c.reset();
	wait_connections(*s, 2);
	assert_non_null(ws(*s).get());
}

static void test_per_address_rate(void **)
{
	// A bucket of 4 new connections, refilled at 4 per minute.
	auto s = start_server({{"connection_rate_per_ip", "4"}});
	for (int i = 0; i < 4; i++)
		assert_non_null(ws(*s).get()); // each closed again at once
	HttpResponse r;
	expect_refused(*s, 429, {}, &r);
	assert_str_eq(r.header("retry-after"), "60");
	assert_int_equal(stat_of(*s, "refusedPerIp"), 1);
	// Plain HTTP requests do not count.
	for (int i = 0; i < 10; i++)
		assert_int_equal(http_request(s->port(), "GET", "/health").status, 200);
}

// Behind a trusted proxy the limits apply to the address it names in
// X-Forwarded-For; from anyone else the header is ignored.
static void test_limits_behind_a_proxy(void **)
{
	auto s = start_server({{"max_connections_per_ip", "1"}, {"connection_rate_per_ip", "0"},
			       {"trusted_proxies", "127.0.0.1"}});
	auto a = ws(*s, "/ws", {{"X-Forwarded-For", "203.0.113.7"}});
	auto b = ws(*s, "/ws", {{"X-Forwarded-For", "203.0.113.8"}});
	expect_refused(*s, 429, {{"X-Forwarded-For", "203.0.113.7"}});
	// The rightmost address not a trusted proxy is the client.
	expect_refused(*s, 429, {{"X-Forwarded-For", "198.51.100.1, 203.0.113.8"}});
	auto c = ws(*s, "/ws", {{"X-Forwarded-For", "203.0.113.8, 127.0.0.1, 203.0.113.9"}});
	assert_non_null(c.get());

	auto direct = start_server({{"max_connections_per_ip", "1"}, {"connection_rate_per_ip", "0"}});
	auto d = ws(*direct, "/ws", {{"X-Forwarded-For", "203.0.113.7"}});
	expect_refused(*direct, 429, {{"X-Forwarded-For", "203.0.113.8"}}); // both are 127.0.0.1
}

// The table of client addresses forgets an address once nothing is left
// to remember of it: no open connection, and a new-connection bucket that
// has refilled (the soak test found it keeping every address it had ever
// seen, over 100 bytes each, for good).  Two rounds of fresh addresses,
// each refused at upgrade (a bad token) after its entry was made: the
// second reuses the memory of the first, where it used to add its own
// (2 MB here).  The rate bucket (1000000 a minute) refills in
// microseconds; that the wait for a refill is honoured is
// test_per_address_rate's business.  Not under AddressSanitizer, whose
// quarantine keeps freed memory from being reused.
static void test_addresses_are_forgotten(void **)
{
	if (kUnderAsan)
		skip();
	auto s = start_server({{"connection_rate_per_ip", "1000000"},
			       {"trusted_proxies", "127.0.0.1"},
			       {"log_level", "warn"}});
	const int per_round = 15000;
	long after_first = 0;
	for (int round = 0; round < 2; round++) {
		for (int i = 0; i < per_round; i++) {
			char ip[64];
			std::snprintf(ip, sizeof ip, "2001:db8:aaaa:bbbb:cccc:%x:%x:%x", round + 1,
				      i >> 8, (i & 255) + 1);
			HttpResponse r;
			auto c = WsClient::connect(s->port(), "/ws",
						   {{"X-Forwarded-For", ip}, {"Authorization", "Bearer x"}},
						   &r);
			if (c || r.status != 401)
				fail_msg("%s: expected a refusal with 401, got %d", ip, r.status);
		}
		assert_int_equal(stat_of(*s, "refusedToken"), (round + 1) * per_round);
		long rss = process_rss_kb(s->pid());
		std::printf("after round %d: RSS %ld kB\n", round + 1, rss);
		if (round == 0)
			after_first = rss;
		else if (rss - after_first > 1024)
			fail_msg("RSS grew by %ld kB with %d more fresh addresses", rss - after_first,
				 per_round);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_allowed_origins),
		cmocka_unit_test(test_max_connections),
		cmocka_unit_test(test_per_address_connections),
		cmocka_unit_test(test_per_address_rate),
		cmocka_unit_test(test_limits_behind_a_proxy),
		cmocka_unit_test(test_addresses_are_forgotten),
	};
	return cmocka_run_group_tests_name("upgrade limits", tests, nullptr, nullptr);
}
