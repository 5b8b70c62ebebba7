// The envelope and errors over a real WebSocket (PROTOCOL.md §1–3, §5 ping):
// lenient input, strict output, AUTH_REQUIRED, UNKNOWN_MESSAGE_TYPE,
// binary frames, fragmentation, max_message_bytes, UTF-8.
#include "common.hpp"

using namespace qc::test;

namespace {

bool is_uuid_v4(const std::string &s)
{
	return s.size() == 36 && s[8] == '-' && s[13] == '-' && s[14] == '4' && s[18] == '-' &&
	       s[23] == '-';
}

bool is_iso_ms(const std::string &s)
{
	return s.size() == 24 && s[4] == '-' && s[7] == '-' && s[10] == 'T' && s[13] == ':' &&
	       s[16] == ':' && s[19] == '.' && s[23] == 'Z';
}

// Every outbound frame has exactly the four envelope fields.
void assert_strict(const cJSON *j)
{
	assert_int_equal(jsize(j, ""), 4);
	assert_false(jstr(j, "type").empty());
	assert_non_null(jget(j, "payload"));
	assert_true(cJSON_IsObject(jget(j, "payload")));
	assert_false(jstr(j, "requestId").empty());
	assert_true(is_iso_ms(jstr(j, "timestamp")));
}

} // namespace

static void test_ping_pong_request_ids(void **state)
{
	ServerProcess *s = &shared_server(state);
	auto c = ws(*s);
	// echoed when a non-empty string
	assert_true(c->send_text(R"({"type":"ping","payload":{},"requestId":"abc-1","timestamp":"2026-01-01T00:00:00.000Z"})"));
	Json j = expect_frame(*c, "pong");
	assert_strict(j.get());
	assert_str_eq(jstr(j.get(), "requestId"), "abc-1");
	assert_int_equal(jsize(j.get(), "payload"), 0);
	// fresh (UUID v4) when null, empty, absent or not a string
	for (const char *req : {R"({"type":"ping","requestId":null})", R"({"type":"ping","requestId":""})",
				R"({"type":"ping"})", R"({"type":"ping","requestId":42})",
				R"({"type":"ping","payload":null})"}) {
		assert_true(c->send_text(req));
		j = expect_frame(*c, "pong");
		assert_strict(j.get());
		assert_true(is_uuid_v4(jstr(j.get(), "requestId")));
	}
}

static void test_invalid_messages(void **state)
{
	ServerProcess *s = &shared_server(state);
	auto c = ws(*s);
	struct Case {
		const char *text;
		const char *rid; // expected payload.requestId, nullptr = null
	};
	const Case cases[] = {
		{"not json", nullptr},
		{"[1,2,3]", nullptr},
		{"\"just a string\"", nullptr},
		{"{\"payload\":{},\"requestId\":\"r1\"}", "r1"},        // no type
		{"{\"type\":7,\"requestId\":\"r2\"}", "r2"},            // type not a string
		{"{\"type\":\"ping\",\"payload\":[],\"requestId\":\"r3\"}", "r3"}, // payload array
		{"{\"type\":\"ping\",\"payload\":\"x\",\"requestId\":\"r4\"}", "r4"},
		{"{\"type\":\"ping\"} trailing", nullptr},
	};
	for (const auto &k : cases) {
		assert_true(c->send_text(k.text));
		Json j = expect_error(*c, "INVALID_MESSAGE");
		assert_strict(j.get());
		if (k.rid) {
			assert_str_eq(jstr(j.get(), "requestId"), k.rid);
			assert_str_eq(jstr(j.get(), "payload.requestId"), k.rid);
		} else {
			assert_true(jnull(j.get(), "payload.requestId"));
			assert_true(is_uuid_v4(jstr(j.get(), "requestId")));
		}
	}
	assert_true(c->send_text("{{"));
	Json j = expect_error(*c, "INVALID_MESSAGE");
	assert_str_eq(jstr(j.get(), "payload.error"), "Invalid message format");
	expect_quiet(*c); // still open and usable
}

static void test_unknown_type_before_auth(void **state)
{
	ServerProcess *s = &shared_server(state);
	auto c = ws(*s);
	send_request(*c, "teleport", "{}", "u1");
	Json j = expect_error(*c, "UNKNOWN_MESSAGE_TYPE");
	assert_str_eq(jstr(j.get(), "payload.error"), "Unknown message type: teleport");
	assert_str_eq(jstr(j.get(), "requestId"), "u1");
	// quotes and control characters escaped, cut at 64 characters
	std::string evil = "a\\\"b\\u0001" + std::string(80, 'z');
	assert_true(c->send_text("{\"type\":\"" + evil + "\"}"));
	j = expect_error(*c, "UNKNOWN_MESSAGE_TYPE");
	assert_str_eq(jstr(j.get(), "payload.error"),
		      "Unknown message type: a\\\"b\\x01" + std::string(60, 'z') + "...");
}

static void test_auth_required_for_every_request(void **state)
{
	ServerProcess *s = &shared_server(state);
	auto c = ws(*s);
	for (const char *t : {"load_conversations", "create_conversation", "join_conversation",
			      "leave_conversation", "send_message", "load_messages", "load_more_messages",
			      "typing_start", "typing_stop"}) {
		send_request(*c, t, "{\"conversationId\":\"x\"}", std::string("q-") + t);
		Json j = expect_error(*c, "AUTH_REQUIRED");
		assert_str_eq(jstr(j.get(), "requestId"), std::string("q-") + t);
	}
	expect_quiet(*c); // ping needs no authentication
}

static void test_binary_frames(void **state)
{
	ServerProcess *s = &shared_server(state);
	auto c = ws(*s);
	assert_true(c->send_binary(std::string("\x01\x02\x03", 3)));
	Json j = expect_error(*c, "INVALID_MESSAGE");
	assert_str_eq(jstr(j.get(), "payload.error"), "binary frames are not supported");
	expect_quiet(*c); // the connection stays open
}

static void test_fragmented_message(void **state)
{
	ServerProcess *s = &shared_server(state);
	auto c = ws(*s);
	assert_true(c->send_frame(1, "{\"type\":\"pi", false));
	assert_true(c->send_frame(0, "ng\",\"requestId\"", false));
	assert_true(c->send_frame(9, "interleaved ping")); // control frames may interleave
	assert_true(c->send_frame(0, ":\"frag\"}", true));
	Json j = expect_frame(*c, "pong");
	assert_str_eq(jstr(j.get(), "requestId"), "frag");
	// A fragmented binary message is one refusal.
	assert_true(c->send_frame(2, "ab", false));
	assert_true(c->send_frame(0, "cd", true));
	expect_error(*c, "INVALID_MESSAGE");
	expect_quiet(*c);
}

// At max_message_bytes a message is served; one byte more closes with 1009.
static void test_max_message_bytes(void **)
{
	auto s = start_server({{"max_message_bytes", "1K"}});
	auto c = ws(*s);
	std::string head = "{\"type\":\"ping\",\"requestId\":\"";
	std::string tail = "\"}";
	std::string exact = head + std::string(1024 - head.size() - tail.size(), 'x') + tail;
	assert_int_equal(exact.size(), 1024);
	assert_true(c->send_text(exact));
	expect_frame(*c, "pong");
	// N+1, split over fragments so the server must count across them
	std::string over = head + std::string(1025 - head.size() - tail.size(), 'x') + tail;
	assert_true(c->send_frame(1, over.substr(0, 600), false));
	assert_true(c->send_frame(0, over.substr(600), true));
	expect_close(*c, 1009);
	// A binary message over the limit too
	auto b = ws(*s);
	assert_true(b->send_binary(std::string(2000, 'b')));
	expect_close(*b, 1009);
	Json st = http_json(http_request(s->port(), "GET", "/stats"));
	assert_int_equal(jnum(st.get(), "closedTooBig"), 2);
}

// RFC 3629 UTF-8 only: over-long forms, UTF-16 surrogates, code points
// above U+10FFFF and bytes that never occur close with 1007, wherever they
// are in the message, fragments included; a character split across two
// fragments is fine.
static void test_invalid_utf8_closes(void **state)
{
	ServerProcess *s = &shared_server(state);
	const std::string head = "{\"type\":\"ping\",\"requestId\":\"";
	const std::string tail = "\"}";
	const char *const bad[] = {
		"\xc3\x28",         // a lead byte without its continuation
		"\xc0\xaf",         // over-long '/', two bytes
		"\xc1\xbf",         // over-long, two bytes
		"\xe0\x80\xaf",     // over-long '/', three bytes
		"\xf0\x80\x80\xaf", // over-long '/', four bytes
		"\xed\xa0\x80",     // U+D800, a UTF-16 surrogate
		"\xed\xbf\xbf",     // U+DFFF
		"\xf4\x90\x80\x80", // U+110000
		"\xf5\x80\x80\x80", // a lead byte past U+10FFFF
		"\x80",             // a continuation byte alone
		"\xfe", "\xff",
	};
	for (const char *b : bad) {
		auto c = ws(*s);
		assert_true(c->send_text(head + b + tail));
		expect_close(*c, 1007);
		// in a later fragment of a message whose first one was fine
		c = ws(*s);
		assert_true(c->send_frame(1, head + "fine", false));
		assert_true(c->send_frame(0, std::string(b) + tail, true));
		expect_close(*c, 1007);
	}
	// A sequence cut short by the end of the message.
	for (const char *cut : {"\xc3", "\xe2\x82", "\xf0\x9f\x98"}) {
		auto c = ws(*s);
		assert_true(c->send_text(head + "x" + tail + cut));
		expect_close(*c, 1007);
		// by the end of a fragment, and not continued in the next one
		c = ws(*s);
		assert_true(c->send_frame(1, head + cut, false));
		assert_true(c->send_frame(0, tail, true));
		expect_close(*c, 1007);
	}
	// A character split across fragments is one valid character.
	auto c = ws(*s);
	assert_true(c->send_frame(1, head + "\xf0\x9f", false));
	assert_true(c->send_frame(0, "\x98", false));
	assert_true(c->send_frame(0, "\x80\xe2\x82" , false));
	assert_true(c->send_frame(0, "\xac" + tail, true));
	Json j = expect_frame(*c, "pong");
	assert_str_eq(jstr(j.get(), "requestId"), "\xf0\x9f\x98\x80\xe2\x82\xac");
	// The largest code point and U+FFFF are characters.
	assert_true(c->send_text(head + "\xf4\x8f\xbf\xbf\xef\xbf\xbf" + tail));
	j = expect_frame(*c, "pong");
	assert_str_eq(jstr(j.get(), "requestId"), "\xf4\x8f\xbf\xbf\xef\xbf\xbf");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ping_pong_request_ids),
		cmocka_unit_test(test_invalid_messages),
		cmocka_unit_test(test_unknown_type_before_auth),
		cmocka_unit_test(test_auth_required_for_every_request),
		cmocka_unit_test(test_binary_frames),
		cmocka_unit_test(test_fragmented_message),
		cmocka_unit_test(test_max_message_bytes),
		cmocka_unit_test(test_invalid_utf8_closes),
	};
	return cmocka_run_group_tests_name("envelope", tests, shared_server_setup, shared_server_teardown);
}
