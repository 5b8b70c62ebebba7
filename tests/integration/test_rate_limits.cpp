// Per-connection request rates (PROTOCOL.md §8, docs/PROTOCOL.md §12 7-8):
// the general bucket (RATE_LIMITED at the burst, 1008 on sustained abuse),
// the typing bucket (refusals only), each at its limit and one past it.
#include "common.hpp"

using namespace qc::test;

// rate_limit 1 per second refills far slower than a test sends, so the
// bucket holds exactly rate_burst requests here.
static void test_general_bucket(void **)
{
	auto s = start_server({{"rate_limit", "1"}, {"rate_burst", "10"}});
	auto c = connect_as(s->port(), "rl-a"); // the auth request took one token
	for (int i = 0; i < 9; i++)
		send_request(*c, "ping", "{}", "p" + std::to_string(i));
	for (int i = 0; i < 9; i++) {
		Json j = expect_frame(*c, "pong");
		assert_str_eq(jstr(j.get(), "requestId"), "p" + std::to_string(i));
	}
	send_request(*c, "ping", "{}", "over");
	Json e = expect_error(*c, "RATE_LIMITED");
	assert_str_eq(jstr(e.get(), "payload.requestId"), "over");
	// Invalid messages count too.
	c->send_text("not json");
	expect_error(*c, "RATE_LIMITED");
	// Typing has its own bucket: still served.
	send_request(*c, "typing_start", "{\"conversationId\":\"nowhere\"}");
	expect_error(*c, "ACCESS_DENIED");
	Json st = http_json(http_request(s->port(), "GET", "/stats"));
	assert_int_equal(jnum(st.get(), "rateLimited"), 2);
	assert_int_equal(jnum(st.get(), "errors.RATE_LIMITED"), 2);
}

// More than 2 x rate_burst refusals within 10 s close the connection.
static void test_abuse_closes_1008(void **)
{
	auto s = start_server({{"rate_limit", "1"}, {"rate_burst", "5"}});
	auto c = connect_as(s->port(), "rl-abuse");
	auto other = connect_as(s->port(), "rl-other");
	for (int i = 0; i < 4; i++) // the rest of the burst
		send_request(*c, "ping");
	for (int i = 0; i < 4; i++)
		expect_frame(*c, "pong");
	// 10 refusals (2 x burst) are answered; the 11th closes.
	for (int i = 0; i < 11; i++)
		send_request(*c, "ping");
	for (int i = 0; i < 10; i++)
		expect_error(*c, "RATE_LIMITED");
	WsEvent ev;
	do
		ev = c->recv(5000);
	while (ev.kind == WsEvent::Text); // nothing else is owed, but be lenient
	assert_int_equal(ev.kind, WsEvent::Close);
	assert_int_equal(ev.close_code, 1008);
	assert_str_eq(ev.data, "rate limit abuse");
	// Only that connection.
	send_request(*other, "ping");
	expect_frame(*other, "pong");
	Json st = http_json(http_request(s->port(), "GET", "/stats"));
	assert_int_equal(jnum(st.get(), "closedAbuse"), 1);
}

static void test_typing_bucket(void **)
{
	auto s = start_server({{"typing_rate", "1"}, {"typing_burst", "3"}});
	auto c = connect_as(s->port(), "rl-typist");
	auto d = connect_as(s->port(), "rl-peer");
	send_request(*c, "create_conversation", "{\"participantIds\":[\"rl-peer\"]}");
	Json cc = expect_frame(*c, "conversation_created");
	std::string conv = jstr(cc.get(), "payload.conversation.id");
	std::string p = "{\"conversationId\":" + jquote(conv) + "}";
	for (int i = 0; i < 3; i++)
		send_request(*c, i % 2 ? "typing_stop" : "typing_start", p);
	expect_frame(*c, "typing_start");
	expect_frame(*c, "typing_stop");
	expect_frame(*c, "typing_start");
	// Past the typing burst: refused, never closed, and other requests
	// are still served.
	for (int i = 0; i < 20; i++)
		send_request(*c, "typing_start", p);
	for (int i = 0; i < 20; i++)
		expect_error(*c, "RATE_LIMITED");
	send_request(*c, "ping");
	expect_frame(*c, "pong");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_general_bucket),
		cmocka_unit_test(test_abuse_closes_1008),
		cmocka_unit_test(test_typing_bucket),
	};
	return cmocka_run_group_tests_name("rate limits", tests, nullptr, nullptr);
}
