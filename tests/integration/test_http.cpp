// HTTP on the WebSocket port (PROTOCOL.md §9): /health, /stats, /metrics,
// the admin_allow rule (and trusted proxies), 426, 404, 405, and the web
// client's files under web_root.
#include <sys/stat.h>
#include <unistd.h>

#include "common.hpp"

using namespace qc::test;

static void test_health(void **)
{
	auto s = start_server();
	auto r = http_request(s->port(), "GET", "/health");
	assert_int_equal(r.status, 200);
	assert_str_eq(r.header("content-type"), "application/json");
	Json j = http_json(r);
	assert_str_eq(jstr(j.get(), "status"), "ok");
	assert_str_eq(jstr(j.get(), "database"), "ok");
	assert_int_equal(jnum(j.get(), "connections"), 0);
	assert_true(jnum(j.get(), "uptime_s") >= 0);
	// connections counts open WebSockets
	auto c1 = ws(*s);
	auto c2 = ws(*s, "/");
	j = http_json(http_request(s->port(), "GET", "/health"));
	assert_int_equal(jnum(j.get(), "connections"), 2);
	// HEAD: headers only
	r = http_request(s->port(), "HEAD", "/health");
	assert_int_equal(r.status, 200);
	assert_true(r.body.empty());
}

static void test_stats_shape(void **)
{
	auto s = start_server();
	auto a = connect_as(s->port(), "stats-user-a");
	auto b = ws(*s); // unauthenticated
	auto r = http_request(s->port(), "GET", "/stats");
	assert_int_equal(r.status, 200);
	Json j = http_json(r);
	assert_int_equal(jnum(j.get(), "totalConnections"), 2);
	assert_int_equal(jnum(j.get(), "authenticatedConnections"), 1);
	assert_int_equal(jnum(j.get(), "roomStats.totalConnections"), 0);
	assert_int_equal(jnum(j.get(), "roomStats.totalRooms"), 0);
	assert_int_equal(jnum(j.get(), "roomStats.totalUsers"), 1);
	assert_str_eq(jstr(j.get(), "roomStats.onlineUsers.0"), "stats-user-a");
	assert_int_equal(jnum(j.get(), "authSuccess"), 1);
	assert_true(jget(j.get(), "messagesStored") != nullptr);
	assert_true(jget(j.get(), "deliveries") != nullptr);
	assert_true(jget(j.get(), "typingPushes") != nullptr);
	assert_true(jget(j.get(), "slowConsumersClosed") != nullptr);
	assert_int_equal(jnum(j.get(), "errors.AUTH_REQUIRED"), 0);
	send_request(*b, "load_conversations");
	expect_error(*b, "AUTH_REQUIRED");
	j = http_json(http_request(s->port(), "GET", "/stats"));
	assert_int_equal(jnum(j.get(), "errors.AUTH_REQUIRED"), 1);
}

static void test_metrics(void **)
{
	auto s = start_server();
	auto a = connect_as(s->port(), "metrics-user");
	auto r = http_request(s->port(), "GET", "/metrics");
	assert_int_equal(r.status, 200);
	assert_contains(r.header("content-type"), "text/plain");
	assert_contains(r.body, "# TYPE qryptchatd_messages_stored_total counter\n");
	assert_contains(r.body, "qryptchatd_connections 1\n");
	assert_contains(r.body, "qryptchatd_authenticated_connections 1\n");
	assert_contains(r.body, "qryptchatd_errors_total{code=\"RATE_LIMITED\"} 0\n");
	assert_contains(r.body, "qryptchatd_database_up 1\n");
}

static void test_admin_allow(void **)
{
	// Loopback is not in the list: /stats and /metrics are refused, /health is not.
	auto s = start_server({{"admin_allow", "10.0.0.0/8"}});
	assert_int_equal(http_request(s->port(), "GET", "/stats").status, 403);
	assert_int_equal(http_request(s->port(), "GET", "/metrics").status, 403);
	assert_int_equal(http_request(s->port(), "GET", "/health").status, 200);
	// A forwarded address is not believed from an untrusted peer.
	assert_int_equal(http_request(s->port(), "GET", "/stats", {{"X-Forwarded-For", "10.1.2.3"}}).status, 403);
}

static void test_trusted_proxy(void **)
{
	auto s = start_server({{"admin_allow", "10.1.2.3"}, {"trusted_proxies", "127.0.0.1 192.168.0.0/16"}});
	assert_int_equal(http_request(s->port(), "GET", "/stats").status, 403);
	assert_int_equal(http_request(s->port(), "GET", "/stats", {{"X-Forwarded-For", "10.1.2.3"}}).status, 200);
	// The rightmost address that is not a trusted proxy is the client.
	assert_int_equal(http_request(s->port(), "GET", "/stats",
				      {{"X-Forwarded-For", "10.1.2.3, 192.168.1.1"}})
				 .status,
			 200);
	assert_int_equal(http_request(s->port(), "GET", "/stats",
				      {{"X-Forwarded-For", "10.1.2.3, 172.16.0.9"}})
				 .status,
			 403);
}

static void test_routes(void **)
{
	auto s = start_server();
	auto r = http_request(s->port(), "GET", "/ws");
	assert_int_equal(r.status, 426);
	assert_str_eq(r.header("upgrade"), "websocket");
	assert_int_equal(http_request(s->port(), "GET", "/").status, 426); // no web_root
	assert_int_equal(http_request(s->port(), "GET", "/nope").status, 404);
	assert_int_equal(http_request(s->port(), "GET", "/health/x").status, 404);
	assert_int_equal(http_request(s->port(), "POST", "/health").status, 405);
	assert_int_equal(http_request(s->port(), "GET", "/health?x=1").status, 200);
	// A WebSocket upgrade on another path is refused with 404.
	HttpResponse refused;
	assert_null(WsClient::connect(s->port(), "/chat", {}, &refused).get());
	assert_int_equal(refused.status, 404);
	// Query strings are allowed on the WebSocket paths.
	assert_non_null(WsClient::connect(s->port(), "/ws?v=1").get());
	assert_non_null(WsClient::connect(s->port(), "/?v=1").get());
}

// The web client's files under web_root: content types, validators,
// security headers, and nothing outside the root or hidden.
static void test_web_client(void **)
{
	std::string root = make_temp_dir();
	std::string outside = make_temp_dir();
	write_file(root + "/index.html", "<!doctype html><title>chat</title>");
	write_file(root + "/app.js", "export const x = 1;\n");
	write_file(root + "/style.css", "body{}");
	assert_int_equal(mkdir((root + "/img").c_str(), 0755), 0);
	write_file(root + "/img/logo.svg", "<svg/>");
	write_file(root + "/.secret", "hidden");
	write_file(outside + "/passwd", "outside the root");
	assert_int_equal(symlink((outside + "/passwd").c_str(), (root + "/escape.txt").c_str()), 0);
	assert_int_equal(symlink("app.js", (root + "/alias.js").c_str()), 0);
	auto s = start_server({{"web_root", root}});

	auto r = http_request(s->port(), "GET", "/");
	assert_int_equal(r.status, 200);
	assert_str_eq(r.body, "<!doctype html><title>chat</title>");
	assert_str_eq(r.header("content-type"), "text/html; charset=utf-8");
	assert_contains(r.header("content-security-policy"), "default-src 'none'");
	assert_contains(r.header("content-security-policy"), "connect-src 'self'");
	assert_contains(r.header("content-security-policy"), "frame-ancestors 'none'");
	assert_str_eq(r.header("x-content-type-options"), "nosniff");
	assert_str_eq(r.header("x-frame-options"), "DENY");
	assert_str_eq(r.header("cache-control"), "no-cache");
	std::string etag = r.header("etag");
	assert_true(etag.size() > 2 && etag.front() == '"');
	assert_int_equal(http_request(s->port(), "GET", "/index.html").status, 200);
	assert_int_equal(http_request(s->port(), "GET", "/?token=abc").status, 200);

	// Revalidation, and HEAD.
	r = http_request(s->port(), "GET", "/", {{"If-None-Match", etag}});
	assert_int_equal(r.status, 304);
	assert_str_eq(r.body, "");
	assert_int_equal(http_request(s->port(), "GET", "/", {{"If-None-Match", "\"x\""}}).status, 200);
	r = http_request(s->port(), "HEAD", "/app.js");
	assert_int_equal(r.status, 200);
	assert_str_eq(r.body, "");

	struct {
		const char *path, *type;
	} types[] = {{"/app.js", "text/javascript; charset=utf-8"},
		     {"/style.css", "text/css; charset=utf-8"},
		     {"/img/logo.svg", "image/svg+xml"},
		     {"/alias.js", "text/javascript; charset=utf-8"}};
	for (const auto &t : types) {
		r = http_request(s->port(), "GET", t.path);
		assert_int_equal(r.status, 200);
		assert_str_eq(r.header("content-type"), t.type);
	}
	// Nothing outside the root, nothing hidden, no directory listing.
	// (lws folds "/x/../" itself, so such a path may land on the index.)
	for (const char *bad : {"/../", "/../../etc/passwd", "/.secret", "/img/../.secret",
				"/escape.txt", "/img", "/img/", "/%2e%2e/%2e%2e/etc/passwd",
				"/img/..%2f..%2fetc%2fpasswd", "/%2esecret", "//etc/passwd", "/nope.js"}) {
		r = http_request(s->port(), "GET", bad);
		bool index = r.status == 200 && r.body == "<!doctype html><title>chat</title>";
		if (!index && r.status != 404 && r.status != 403 && r.status != 400)
			fail_msg("GET %s: %d %s", bad, r.status, r.body.c_str());
	}
	// A NUL in the path: lws drops the connection before any route runs.
	assert_int_not_equal(http_request(s->port(), "GET", "/app.js%00.txt").status, 200);
	assert_int_equal(http_request(s->port(), "POST", "/app.js").status, 405);
	// The WebSocket and the other routes are unchanged.
	assert_int_equal(http_request(s->port(), "GET", "/ws").status, 426);
	assert_int_equal(http_request(s->port(), "GET", "/health").status, 200);
	assert_non_null(WsClient::connect(s->port(), "/").get());
	assert_non_null(WsClient::connect(s->port(), "/ws").get());
	s.reset();
	remove_tree(root);
	remove_tree(outside);
}

// A web_root that does not exist: a warning, and the server runs without it.
static void test_web_root_missing(void **)
{
	auto s = start_server({{"web_root", "/nonexistent/qryptchatd-web"}});
	assert_true(s->wait_log("web_root_unavailable"));
	assert_int_equal(http_request(s->port(), "GET", "/").status, 426);
	assert_int_equal(http_request(s->port(), "GET", "/app.js").status, 404);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_health),      cmocka_unit_test(test_stats_shape),
		cmocka_unit_test(test_metrics),     cmocka_unit_test(test_admin_allow),
		cmocka_unit_test(test_trusted_proxy), cmocka_unit_test(test_routes),
		cmocka_unit_test(test_web_client),  cmocka_unit_test(test_web_root_missing),
	};
	return cmocka_run_group_tests_name("http", tests, nullptr, nullptr);
}
