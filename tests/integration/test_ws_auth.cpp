// Authentication over a real WebSocket (PROTOCOL.md §4): the auth request,
// tokens at upgrade (header, query, cookie), re-authentication, the auth
// timeout, the failed-attempt limit and token expiry (4001 or refuse).
#include "common.hpp"

using namespace qc::test;

namespace {

std::string auth_payload(const std::string &token) { return "{\"token\":" + jquote(token) + "}"; }

} // namespace

static void test_auth_success_and_user(void **state)
{
	auto c = ws(shared_server(state));
	send_request(*c, "auth", auth_payload(token_for("0f8fad5b-d9cb-469f-a165-70867728950e")), "a1");
	Json j = expect_frame(*c, "auth_success");
	assert_str_eq(jstr(j.get(), "requestId"), "a1");
	assert_str_eq(jstr(j.get(), "payload.user.id"), "0f8fad5b-d9cb-469f-a165-70867728950e");
	assert_str_eq(jstr(j.get(), "payload.user.username"), "user_0f8fad5b"); // default
	assert_str_eq(jstr(j.get(), "payload.user.display_name"), "user_0f8fad5b");
	assert_true(jnull(j.get(), "payload.user.email"));
	assert_true(jnull(j.get(), "payload.user.avatar_url"));
	// Now authenticated: requests work.
	send_request(*c, "load_conversations");
	expect_frame(*c, "conversations_loaded");
}

static void test_profile_hints(void **state)
{
	auto c = ws(shared_server(state));
	send_request(*c, "auth",
		     auth_payload(token_for("hinted", 3600,
					    R"("email":"h@example.org","user_metadata":{"username":"hina","full_name":"Hina H.","avatar_url":"https://x/h.png"})")));
	Json j = expect_frame(*c, "auth_success");
	assert_str_eq(jstr(j.get(), "payload.user.username"), "hina");
	assert_str_eq(jstr(j.get(), "payload.user.display_name"), "Hina H.");
	assert_str_eq(jstr(j.get(), "payload.user.email"), "h@example.org");
	assert_str_eq(jstr(j.get(), "payload.user.avatar_url"), "https://x/h.png");
	// A later token without hints keeps the stored values.
	auto d = ws(shared_server(state));
	send_request(*d, "auth", auth_payload(token_for("hinted", 3600, R"("preferred_username":"hina2")")));
	j = expect_frame(*d, "auth_success");
	assert_str_eq(jstr(j.get(), "payload.user.username"), "hina2");
	assert_str_eq(jstr(j.get(), "payload.user.display_name"), "Hina H.");
	assert_str_eq(jstr(j.get(), "payload.user.email"), "h@example.org");
}

static void test_auth_failures_keep_socket_open(void **state)
{
	auto c = ws(shared_server(state));
	send_request(*c, "auth", "{}", "m1");
	expect_error(*c, "MISSING_TOKEN");
	send_request(*c, "auth", "{\"token\":\"\"}");
	expect_error(*c, "MISSING_TOKEN");
	send_request(*c, "auth", "{\"token\":42}");
	expect_error(*c, "MISSING_TOKEN");
	send_request(*c, "load_conversations");
	expect_error(*c, "AUTH_REQUIRED"); // still unauthenticated
	auto d = ws(shared_server(state));
	send_request(*d, "auth", auth_payload("not.a.jwt"));
	expect_error(*d, "INVALID_TOKEN");
	// signed with another secret
	std::string forged = sign_jwt(R"({"alg":"HS256"})",
				      "{\"sub\":\"x\",\"exp\":" + std::to_string(now_s() + 60) + "}",
				      "another-secret-0123456789abcdef0123456");
	send_request(*d, "auth", auth_payload(forged));
	Json j = expect_error(*d, "INVALID_TOKEN");
	assert_contains(jstr(j.get(), "payload.error"), "Invalid token");
	assert_true(jstr(j.get(), "payload.error").find(forged) == std::string::npos);
	send_request(*d, "load_conversations");
	expect_error(*d, "AUTH_REQUIRED");
}

static void test_expired_and_not_yet_valid(void **state)
{
	auto c = ws(shared_server(state));
	send_request(*c, "auth", auth_payload(token_for("late", -100)));
	expect_error(*c, "TOKEN_EXPIRED");
	std::string nbf = sign_jwt(R"({"alg":"HS256"})",
				   "{\"sub\":\"early\",\"exp\":" + std::to_string(now_s() + 3600) +
					   ",\"nbf\":" + std::to_string(now_s() + 600) + "}",
				   kTestSecret);
	send_request(*c, "auth", auth_payload(nbf));
	expect_error(*c, "TOKEN_EXPIRED");
	std::string none = sign_jwt(R"({"alg":"none"})", "{\"sub\":\"x\",\"exp\":" + std::to_string(now_s() + 60) + "}",
				    kTestSecret);
	send_request(*c, "auth", auth_payload(none));
	expect_error(*c, "INVALID_TOKEN");
	std::string noexp = sign_jwt(R"({"alg":"HS256"})", "{\"sub\":\"x\"}", kTestSecret);
	send_request(*c, "auth", auth_payload(noexp));
	expect_error(*c, "INVALID_TOKEN");
}

static void test_reauth(void **state)
{
	auto c = connect_as(shared_server(state).port(), "re-user");
	// the same sub again: fine
	send_request(*c, "auth", auth_payload(token_for("re-user", 7200)), "again");
	Json j = expect_frame(*c, "auth_success");
	assert_str_eq(jstr(j.get(), "requestId"), "again");
	// another sub: refused, still authenticated as before
	send_request(*c, "auth", auth_payload(token_for("someone-else")));
	j = expect_error(*c, "INVALID_DATA");
	assert_str_eq(jstr(j.get(), "payload.error"), "already authenticated as another user");
	// a failed re-authentication leaves the connection authenticated
	send_request(*c, "auth", auth_payload("garbage"));
	expect_error(*c, "INVALID_TOKEN");
	send_request(*c, "load_conversations");
	expect_frame(*c, "conversations_loaded");
}

static void test_upgrade_tokens(void **state)
{
	ServerProcess &s = shared_server(state);
	std::string t = token_for("upgrader");
	struct Way {
		std::string target;
		Headers headers;
	};
	const Way ways[] = {
		{"/ws", {{"Authorization", "Bearer " + t}}},
		{"/ws", {{"Authorization", "bEaReR    " + t}}},
		{"/ws?token=" + t, {}},
		{"/?x=1&token=" + t, {}},
		{"/ws", {{"Cookie", "theme=dark; sb-access-token=" + t + "; other=1"}}},
		// another scheme falls through to the query
		{"/ws?token=" + t, {{"Authorization", "Basic dXNlcjpwYXNz"}}},
	};
	for (const auto &w : ways) {
		auto c = WsClient::connect(s.port(), w.target, w.headers);
		assert_non_null(c.get());
		Json j = expect_frame(*c, "auth_success"); // the first frame
		assert_str_eq(jstr(j.get(), "payload.user.id"), "upgrader");
		assert_int_equal(jstr(j.get(), "requestId").size(), 36);
		send_request(*c, "load_conversations");
		expect_frame(*c, "conversations_loaded");
	}
	// Without any token: an ordinary unauthenticated socket.
	auto plain = WsClient::connect(s.port(), "/ws", {{"Authorization", "Bearer "}});
	assert_non_null(plain.get());
	expect_quiet(*plain);
	// An invalid token at upgrade: 401.
	for (const auto &w : {Way{"/ws", {{"Authorization", "Bearer nope"}}}, Way{"/ws?token=nope", {}},
			      Way{"/ws", {{"Cookie", "sb-access-token=" + token_for("late", -100)}}}}) {
		HttpResponse r;
		assert_null(WsClient::connect(s.port(), w.target, w.headers, &r).get());
		assert_int_equal(r.status, 401);
		assert_str_eq(r.header("www-authenticate"), "Bearer");
	}
}

static void test_auth_timeout(void **)
{
	auto s = start_server({{"auth_timeout", "300ms"}});
	auto idle = ws(*s);
	auto authed = connect_as(s->port(), "quick");
	expect_close(*idle, 1008, 5000);
	expect_quiet(*authed); // an authenticated socket is not affected
	Json st = http_json(http_request(s->port(), "GET", "/stats"));
	assert_int_equal(jnum(st.get(), "closedAuthTimeout"), 1);
}

// After max_auth_failures consecutive failures: closed with 1008; a
// success in between resets the count.
static void test_failed_attempt_limit(void **)
{
	auto s = start_server({{"max_auth_failures", "3"}});
	auto c = ws(*s);
	for (int i = 0; i < 2; i++) {
		send_request(*c, "auth", auth_payload("bad"));
		expect_error(*c, "INVALID_TOKEN");
	}
	send_request(*c, "auth", auth_payload(token_for("resetter")));
	expect_frame(*c, "auth_success");
	for (int i = 0; i < 2; i++) {
		send_request(*c, "auth", auth_payload("bad"));
		expect_error(*c, "INVALID_TOKEN");
	}
	expect_quiet(*c); // 2 < 3: still open
	send_request(*c, "auth", "{}");
	expect_error(*c, "MISSING_TOKEN"); // the third: the error, then the close
	expect_close(*c, 1008);
	// the default is 5
	auto d = start_server();
	auto e = ws(*d);
	for (int i = 0; i < 4; i++) {
		send_request(*e, "auth", auth_payload("bad"));
		expect_error(*e, "INVALID_TOKEN");
	}
	expect_quiet(*e);
	send_request(*e, "auth", auth_payload("bad"));
	expect_error(*e, "INVALID_TOKEN");
	expect_close(*e, 1008);
}

static void test_token_expiry_closes_4001(void **)
{
	auto s = start_server({{"jwt_leeway", "0"}});
	auto c = ws(*s);
	send_request(*c, "auth", auth_payload(token_for("short-lived", 2)));
	expect_frame(*c, "auth_success");
	auto other = connect_as(s->port(), "long-lived");
	expect_close(*c, 4001, 6000);
	expect_quiet(*other);
	// A fresh token before expiry extends the connection.
	auto d = ws(*s);
	send_request(*d, "auth", auth_payload(token_for("renewer", 2)));
	expect_frame(*d, "auth_success");
	send_request(*d, "auth", auth_payload(token_for("renewer", 3600)));
	expect_frame(*d, "auth_success");
	WsEvent e = d->recv(3500);
	assert_int_equal(e.kind, WsEvent::Timeout); // not closed when the first token expired
}

static void test_token_expiry_refuse_mode(void **)
{
	auto s = start_server({{"jwt_leeway", "0"}, {"jwt_expiry_action", "refuse"}});
	auto c = ws(*s);
	send_request(*c, "auth", auth_payload(token_for("refused", 2)));
	expect_frame(*c, "auth_success");
	// Wait for the expiry to pass: the server tells by refusing.
	for (int i = 0;; i++) {
		WsEvent e = c->recv(300);
		assert_int_equal(e.kind, WsEvent::Timeout);
		send_request(*c, "load_conversations", "{}", "probe");
		Json j = expect_frame(*c);
		if (jstr(j.get(), "type") == "error") {
			assert_str_eq(jstr(j.get(), "payload.code"), "TOKEN_EXPIRED");
			break;
		}
		assert_true(i < 20);
	}
	expect_quiet(*c); // ping still answered, connection open
	Json st = http_json(http_request(s->port(), "GET", "/stats"));
	assert_int_equal(jnum(st.get(), "authenticatedConnections"), 1); // still counts
	send_request(*c, "auth", auth_payload(token_for("refused", 3600)));
	expect_frame(*c, "auth_success");
	send_request(*c, "load_conversations");
	expect_frame(*c, "conversations_loaded");
}

static void test_audience_and_issuer(void **)
{
	auto s = start_server({{"jwt_audience", "authenticated"}, {"jwt_issuer", "https://example.supabase.co/auth/v1"}});
	auto c = ws(*s);
	send_request(*c, "auth", auth_payload(token_for("aud-user")));
	expect_error(*c, "INVALID_TOKEN");
	send_request(*c, "auth",
		     auth_payload(token_for("aud-user", 3600,
					    R"("aud":["authenticated"],"iss":"https://example.supabase.co/auth/v1")")));
	expect_frame(*c, "auth_success");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_auth_success_and_user),
		cmocka_unit_test(test_profile_hints),
		cmocka_unit_test(test_auth_failures_keep_socket_open),
		cmocka_unit_test(test_expired_and_not_yet_valid),
		cmocka_unit_test(test_reauth),
		cmocka_unit_test(test_upgrade_tokens),
		cmocka_unit_test(test_auth_timeout),
		cmocka_unit_test(test_failed_attempt_limit),
		cmocka_unit_test(test_token_expiry_closes_4001),
		cmocka_unit_test(test_token_expiry_refuse_mode),
		cmocka_unit_test(test_audience_and_issuer),
	};
	return cmocka_run_group_tests_name("auth", tests, shared_server_setup, shared_server_teardown);
}
