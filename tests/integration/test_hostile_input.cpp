// Client-controlled bytes against every sink they can reach (SECURITY.md,
// "Input"): the log (escaped, never a raw control byte or a forged line),
// stored and echoed JSON strings (NUL bytes kept byte-exact, ids with a
// NUL refused, lone surrogate escapes refused), SQL (metacharacters stored
// and matched literally), and HTTP answers (nothing of the request echoed).
// Invalid UTF-8 in text frames is in test_envelope.
#include <cstring>

#include "common.hpp"

using namespace qc::test;

namespace {

char g_why[8192];

// Well-formed UTF-8 (RFC 3629), written here without the server's code.
bool utf8_ok(const std::string &s)
{
	size_t i = 0;
	while (i < s.size()) {
		unsigned char c = static_cast<unsigned char>(s[i]);
		size_t n;
		unsigned long cp, min;
		if (c < 0x80) {
			i++;
			continue;
		} else if ((c & 0xe0) == 0xc0) {
			n = 2, cp = c & 0x1f, min = 0x80;
		} else if ((c & 0xf0) == 0xe0) {
			n = 3, cp = c & 0x0f, min = 0x800;
		} else if ((c & 0xf8) == 0xf0) {
			n = 4, cp = c & 0x07, min = 0x10000;
		} else {
			return false;
		}
		if (i + n > s.size())
			return false;
		for (size_t k = 1; k < n; k++) {
			unsigned char cc = static_cast<unsigned char>(s[i + k]);
			if ((cc & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (cc & 0x3f);
		}
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		i += n;
	}
	return true;
}

// A timestamp no real log line of this run starts with: injected text
// pretends to be a line from then.
const char kForgedStamp[] = "2001-01-01T00:00:00.000Z";

// Every line of the log was written by the server: it starts with a
// timestamp and a level, holds no control character (the newline ending
// it aside), no C1 control, no U+2028/U+2029, and is valid UTF-8.
void assert_log_clean(const std::string &log)
{
	bool ok = true;
	{
		size_t start = 0;
		int line = 0;
		while (ok && start < log.size()) {
			size_t nl = log.find('\n', start);
			std::string l = log.substr(start, nl == std::string::npos ? std::string::npos : nl - start);
			start = nl == std::string::npos ? log.size() : nl + 1;
			line++;
			const char *why = nullptr;
			bool stamp = l.size() > 30 && l[4] == '-' && l[7] == '-' && l[10] == 'T' &&
				     l[13] == ':' && l[16] == ':' && l[19] == '.' && l[23] == 'Z' && l[24] == ' ';
			if (!stamp || l.compare(0, strlen(kForgedStamp), kForgedStamp) == 0)
				why = "a line the server did not write";
			else if (l.compare(25, 6, "error ") != 0 && l.compare(25, 5, "warn ") != 0 &&
				 l.compare(25, 5, "info ") != 0 && l.compare(25, 6, "debug ") != 0)
				why = "no level";
			else if (!utf8_ok(l))
				why = "not UTF-8";
			for (size_t i = 0; !why && i < l.size(); i++) {
				unsigned char c = static_cast<unsigned char>(l[i]);
				if (c < 0x20 || c == 0x7f)
					why = "a control character";
				else if (c == 0xc2 && i + 1 < l.size() &&
					 static_cast<unsigned char>(l[i + 1]) >= 0x80 &&
					 static_cast<unsigned char>(l[i + 1]) <= 0x9f)
					why = "a C1 control character";
				else if (c == 0xe2 && l.compare(i, 3, "\xe2\x80\xa8") == 0)
					why = "U+2028";
				else if (c == 0xe2 && l.compare(i, 3, "\xe2\x80\xa9") == 0)
					why = "U+2029";
			}
			if (why) {
				ok = false;
				snprintf(g_why, sizeof g_why, "log line %d has %s: %.2000s", line, why,
					 l.c_str());
			}
		}
	}
	if (!ok)
		fail_msg("%s", g_why);
}

// The next frame, which must be a text frame of valid UTF-8 holding JSON of
// this type; returns its text byte for byte.
std::string next_raw(WsClient &c, const std::string &type)
{
	std::string raw;
	bool ok = false;
	{
		WsEvent ev = c.recv(5000);
		Json j = ev.kind == WsEvent::Text ? parse_json(ev.data) : nullptr;
		const cJSON *t = j ? cJSON_GetObjectItemCaseSensitive(j.get(), "type") : nullptr;
		if (ev.kind != WsEvent::Text)
			snprintf(g_why, sizeof g_why, "expected %s, got event %d (%d %.200s)",
				 type.c_str(), static_cast<int>(ev.kind), ev.close_code, ev.data.c_str());
		else if (!utf8_ok(ev.data))
			snprintf(g_why, sizeof g_why, "a frame that is not UTF-8: %.2000s", ev.data.c_str());
		else if (!cJSON_IsString(t) || (!type.empty() && type != t->valuestring))
			snprintf(g_why, sizeof g_why, "expected %s, got %.2000s", type.c_str(),
				 ev.data.c_str());
		else
			ok = true;
		raw = ev.data;
	}
	if (!ok)
		fail_msg("%s", g_why);
	return raw;
}

void expect_raw_error(WsClient &c, const std::string &code)
{
	std::string raw = next_raw(c, "error");
	assert_contains(raw, "\"code\":\"" + code + "\"");
}

std::string conv_of(const std::string &raw)
{
	Json j = parse_json(raw);
	return jstr(j.get(), "payload.conversation.id");
}

std::string conv_field(const std::string &conv, const std::string &more = "")
{
	return "{\"conversationId\":" + jquote(conv) + (more.empty() ? "" : "," + more) + "}";
}

// `a` creates a group with `b`, which is online and joins it.  Returns
// the conversation id.
std::string group_of_two(WsClient &a, WsClient &b, const std::string &b_id,
			 const std::string &name_json = "\"g\"")
{
	send_request(a, "create_conversation",
		     "{\"type\":\"group\",\"participantIds\":[" + jquote(b_id) + "],\"name\":" + name_json + "}",
		     "create");
	std::string conv = conv_of(next_raw(a, "conversation_created"));
	next_raw(b, "conversation_created");
	send_request(b, "join_conversation", conv_field(conv), "join");
	next_raw(b, "conversation_joined");
	return conv;
}

const std::string N(1, '\0');

} // namespace

// ---------------------------------------------------------------- the log

// A token's sub is logged (auth, conversation_created): its control
// characters come out escaped, and the line it tries to start never exists.
static void test_log_escapes_sub(void **)
{
	auto s = start_server();
	std::string sub = std::string("hx\x1b[31m\r\n") + kForgedStamp +
			  " info auth session=1 user=admin\x07\x7f\xc2\x9b\xe2\x80\xa8" + "end";
	auto a = connect_as(s->port(), sub);
	auto b = connect_as(s->port(), "hx-other");
	send_request(*a, "create_conversation", "{\"participantIds\":[\"hx-other\"]}", "c");
	next_raw(*a, "conversation_created");
	std::string escaped = std::string("\"hx\\x1b[31m\\x0d\\x0a") + kForgedStamp +
			      " info auth session=1 user=admin\\x07\\x7f\\xc2\\x9b\\xe2\\x80\\xa8end\"";
	assert_true(s->wait_log("user=" + escaped));
	assert_true(s->wait_log("by=" + escaped));
	assert_log_clean(s->log());
}

// The Origin of a refused upgrade is logged: escaped (and lowercased).
static void test_log_escapes_origin(void **)
{
	auto s = start_server({{"allowed_origins", "https://ok.example"}});
	HttpResponse r;
	std::string origin = "https://Evil.example\x1b[31m\x01\x7f\xc2\x9b\xff\t2001";
	assert_null(WsClient::connect(s->port(), "/ws", {{"Origin", origin}}, &r).get());
	assert_int_equal(r.status, 403);
	assert_true(s->wait_log(
		"status=403 origin=\"https://evil.example\\x1b[31m\\x01\\x7f\\xc2\\x9b\\xff\\x092001\""));
	// A bare CR ends the header line for the HTTP parser: what follows is
	// never taken as part of the value, let alone as a log line.
	assert_null(WsClient::connect(s->port(), "/ws",
				      {{"Origin", std::string("https://a\r") + kForgedStamp + " info x"}}, &r)
			    .get());
	assert_int_equal(r.status, 403);
	assert_true(s->wait_log("status=403 origin=\"https://a\""));
	// A line cut at the log's line limit is cut between characters:
	// escaped separators (12 bytes each) push a run of 3-byte characters
	// across the limit.
	std::string wide = "https://";
	for (int i = 0; i < 160; i++)
		wide += "\xe2\x80\xa8";
	for (int i = 0; i < 32; i++)
		wide += "\xe6\x97\xa5";
	assert_null(WsClient::connect(s->port(), "/ws", {{"Origin", wide}}, &r).get());
	assert_int_equal(r.status, 403);
	assert_true(s->wait_log("origin=\"https://\\xe2\\x80\\xa8"));
	assert_log_clean(s->log());
}

// From a trusted proxy, X-Forwarded-For names the client: only an address
// that parses is believed, and the logged peer is that address as
// formatted by the server, never the header's text.
static void test_log_forwarded_for(void **)
{
	auto s = start_server({{"trusted_proxies", "127.0.0.1"}});
	std::string hostile = std::string("203.0.113.7, 198.51.100.2\x1b[31m\r\n") + kForgedStamp + " info x";
	// The CR LF ends the header: the request carries a second line that is
	// no header at all.  Either way the peer is the proxy itself.
	auto a = WsClient::connect(s->port(), "/ws", {{"X-Forwarded-For", hostile}});
	auto b = ws(*s, "/ws", {{"X-Forwarded-For", "203.0.113.7, 198.51.100.2\x1b[31m\x01"}});
	auto c = ws(*s, "/ws", {{"X-Forwarded-For", "198.51.100.9"}});
	assert_true(s->wait_log("peer=198.51.100.9"));
	assert_true(s->log().find("198.51.100.2") == std::string::npos);
	assert_true(s->log().find("203.0.113.7") == std::string::npos);
	assert_log_clean(s->log());
}

// What is never logged stays out of the log in any form: request types,
// requestIds, conversation ids, content, close reasons, URL paths.
static void test_log_unlogged_input(void **)
{
	auto s = start_server();
	std::string evil = std::string("\x1b[31m\r\n") + kForgedStamp + " error FORGED\x7f\xc2\x9b";
	auto a = connect_as(s->port(), "hx-quiet");
	send_request(*a, evil, "{}", evil);
	expect_raw_error(*a, "UNKNOWN_MESSAGE_TYPE");
	send_request(*a, "join_conversation", conv_field(evil), evil);
	expect_raw_error(*a, "ACCESS_DENIED");
	send_request(*a, "create_conversation", "{\"participantIds\":[" + jquote(evil) + "]}", evil);
	expect_raw_error(*a, "USER_NOT_FOUND");
	send_request(*a, "send_message", conv_field(evil, "\"content\":" + jquote(evil)), evil);
	expect_raw_error(*a, "ACCESS_DENIED");
	send_request(*a, "auth", "{\"token\":" + jquote(evil) + "}", evil);
	expect_raw_error(*a, "INVALID_TOKEN");
	assert_true(a->send_close(1000, "bye\x1b[31m\r\n2001"));
	expect_close(*a, 0);
	assert_int_equal(http_request(s->port(), "GET", "/x\x1b[31m\x01%0d%0a2001").status, 404);
	HttpResponse r;
	assert_null(WsClient::connect(s->port(), "/x\x1b[31m", {}, &r).get());
	auto b = ws(*s, std::string("/ws?x=\x1b[31m%0d%0a") + kForgedStamp);
	expect_quiet(*b);
	assert_true(s->wait_log("auth_failed"));
	assert_true(s->log().find("FORGED") == std::string::npos);
	assert_log_clean(s->log());
}

// ---------------------------------------------------------------- JSON strings

// "\u0000" inside a string is a byte of it: content, per-recipient copies,
// metadata, names, clientMessageId and requestId are stored and returned
// byte for byte, in the reply, the push and a later load.
static void test_nul_bytes_kept(void **state)
{
	ServerProcess &s = shared_server(state);
	auto bob = connect_as(s.port(), "nul-bob");
	auto alice = connect_as(s.port(), "nul-alice");
	std::string conv = group_of_two(*alice, *bob, "nul-bob", "\"n\\u0000m\"");

	std::string rid = "r" + N + "q";
	send_request(*alice, "send_message",
		     conv_field(conv, "\"content\":\"a\\u0000b\",\"clientMessageId\":\"c\\u0000d\","
				      "\"metadata\":{\"k\":\"v\\u0000w\",\"list\":[\"\\u0000\",1]}"),
		     rid);
	auto check = [](const std::string &raw) {
		assert_contains(raw, "\"encrypted_content\":\"a\\u0000b\"");
		assert_contains(raw, "\"client_message_id\":\"c\\u0000d\"");
		assert_contains(raw, "\"metadata\":{\"k\":\"v\\u0000w\",\"list\":[\"\\u0000\",1]}");
	};
	std::string sent = next_raw(*alice, "message_sent");
	assert_contains(sent, "\"requestId\":\"r\\u0000q\"");
	check(sent);
	check(next_raw(*alice, "message_received"));
	check(next_raw(*bob, "message_received"));
	send_request(*bob, "load_messages", conv_field(conv), "l");
	check(next_raw(*bob, "messages_loaded"));
	send_request(*bob, "load_conversations", "{}", "lc");
	std::string list = next_raw(*bob, "conversations_loaded");
	assert_contains(list, "\"name\":\"n\\u0000m\"");
	assert_contains(list, "\"latest_message_content\":\"a\\u0000b\"");

	// The idempotency key is matched whole: "c\0e" is another key than
	// "c\0d", and "c\0d" again is the first message.
	send_request(*alice, "send_message", conv_field(conv, "\"content\":\"x\",\"clientMessageId\":\"c\\u0000e\""), "e");
	std::string other = next_raw(*alice, "message_sent");
	assert_contains(other, "\"seq\":2");
	assert_contains(other, "\"client_message_id\":\"c\\u0000e\"");
	next_raw(*alice, "message_received");
	next_raw(*bob, "message_received");
	send_request(*alice, "send_message", conv_field(conv, "\"content\":\"y\",\"clientMessageId\":\"c\\u0000d\""), "d");
	std::string again = next_raw(*alice, "message_sent");
	assert_contains(again, "\"seq\":1");
	check(again);
	expect_quiet(*bob);

	// Per-recipient copies, each with its own NUL.
	send_request(*alice, "send_message",
		     conv_field(conv, "\"encryptedContents\":{\"nul-alice\":\"x\\u0000A\",\"nul-bob\":\"\\u0000B\"}"),
		     "copies");
	next_raw(*alice, "message_sent");
	assert_contains(next_raw(*alice, "message_received"), "\"encrypted_content\":\"x\\u0000A\"");
	assert_contains(next_raw(*bob, "message_received"), "\"encrypted_content\":\"\\u0000B\"");
	send_request(*bob, "load_messages", conv_field(conv, "\"afterSeq\":2"), "l2");
	assert_contains(next_raw(*bob, "messages_loaded"), "\"encrypted_content\":\"\\u0000B\"");
}

// Ids (conversations, messages, users) never hold a NUL: one that does is
// refused as INVALID_DATA, never cut at the NUL into another, real id.  A
// member name with a NUL makes the message invalid.
static void test_nul_in_ids_refused(void **state)
{
	ServerProcess &s = shared_server(state);
	auto bob = connect_as(s.port(), "nid-bob");
	auto alice = connect_as(s.port(), "nid-alice");
	std::string conv = group_of_two(*alice, *bob, "nid-bob");
	send_request(*alice, "send_message", conv_field(conv, "\"content\":\"first\""), "m");
	Json sent = parse_json(next_raw(*alice, "message_sent"));
	std::string msg = jstr(sent.get(), "payload.message.id");
	next_raw(*alice, "message_received");
	next_raw(*bob, "message_received");

	send_request(*alice, "join_conversation", conv_field(conv + N + "x"), "j");
	expect_raw_error(*alice, "INVALID_DATA");
	send_request(*alice, "load_messages", conv_field(N), "j0");
	expect_raw_error(*alice, "INVALID_DATA");
	send_request(*alice, "create_conversation", "{\"participantIds\":[" + jquote("nid-bob" + N) + "]}", "c");
	expect_raw_error(*alice, "INVALID_DATA");
	send_request(*alice, "send_message", conv_field(conv, "\"content\":\"r\",\"replyToId\":" + jquote(msg + N)), "r");
	expect_raw_error(*alice, "INVALID_DATA");
	send_request(*alice, "load_more_messages", conv_field(conv, "\"beforeMessageId\":" + jquote(msg + N)), "b");
	expect_raw_error(*alice, "INVALID_DATA");
	send_request(*alice, "send_message",
		     conv_field(conv, "\"encryptedContents\":{\"nid-alice\":\"a\",\"nid-bob\\u0000\":\"b\"}"), "e");
	expect_raw_error(*alice, "INVALID_MESSAGE");
	assert_true(alice->send_text("{\"type\\u0000\":\"ping\",\"requestId\":\"k\"}"));
	expect_raw_error(*alice, "INVALID_MESSAGE");
	// A type with a NUL is no known type; its name comes back escaped.
	send_request(*alice, "ping" + N, "{}", "t");
	std::string raw = next_raw(*alice, "error");
	assert_contains(raw, "\"code\":\"UNKNOWN_MESSAGE_TYPE\"");
	assert_contains(raw, "Unknown message type: ping\\\\x00");
	// A token whose sub holds a NUL is refused.
	send_request(*alice, "auth", "{\"token\":" + jquote(token_for("nid-alice" + N + "admin")) + "}", "a");
	expect_raw_error(*alice, "INVALID_TOKEN");
	expect_quiet(*bob);
	send_request(*bob, "load_messages", conv_field(conv), "l");
	assert_contains(next_raw(*bob, "messages_loaded"), "\"hasMore\":false");
}

// A requestId with quotes, backslashes, control characters and non-ASCII
// comes back as the same string, in a reply and in an error.
static void test_request_id_round_trip(void **state)
{
	ServerProcess &s = shared_server(state);
	auto c = ws(s);
	const std::string rids[] = {
		"q\"b\\s/\n\r\t\b\f\x01\x1f\x7f \xc2\x85 \xc3\xa9 \xe6\x97\xa5 \xf0\x9f\x98\x80 \xe2\x80\xa8 \xef\xbf\xbf",
		std::string(300, '"') + std::string(300, '\\'),
	};
	for (const auto &rid : rids) {
		send_request(*c, "ping", "{}", rid);
		Json j = parse_json(next_raw(*c, "pong"));
		assert_true(jstr(j.get(), "requestId") == rid);
		send_request(*c, "load_conversations", "{}", rid);
		j = parse_json(next_raw(*c, "error"));
		assert_true(jstr(j.get(), "requestId") == rid);
		assert_true(jstr(j.get(), "payload.requestId") == rid);
	}
	// Escapes in, the same characters out.
	assert_true(c->send_text(R"({"type":"ping","requestId":"\u00e9\u65e5\ud83d\ude00\u0022\u005c\u001b"})"));
	Json j = parse_json(next_raw(*c, "pong"));
	assert_str_eq(jstr(j.get(), "requestId"), "\xc3\xa9\xe6\x97\xa5\xf0\x9f\x98\x80\"\\\x1b");
}

// "\ud800" is valid UTF-8 on the wire but no character: the message is
// refused whole (INVALID_MESSAGE), so no string holding a surrogate is
// ever stored or sent on; so is "\u" without four hex digits.  A proper
// pair is one character.
static void test_lone_surrogate_escapes(void **state)
{
	ServerProcess &s = shared_server(state);
	auto bob = connect_as(s.port(), "sur-bob");
	auto alice = connect_as(s.port(), "sur-alice");
	std::string conv = group_of_two(*alice, *bob, "sur-bob");
	for (const char *content : {"\\ud800", "x\\udc00", "\\ud800\\u0041", "\\udbff\\udbff"}) {
		assert_true(alice->send_text("{\"type\":\"send_message\",\"requestId\":\"s\",\"payload\":" +
					     conv_field(conv, "\"content\":\"" + std::string(content) + "\"") + "}"));
		std::string raw = next_raw(*alice, "error");
		assert_contains(raw, "\"code\":\"INVALID_MESSAGE\"");
		assert_contains(raw, "\"requestId\":null");
	}
	assert_true(alice->send_text(R"({"type":"ping","requestId":"\udfff"})"));
	expect_raw_error(*alice, "INVALID_MESSAGE");
	// Nor is a "\u" without four hex digits an escape (of a NUL or else).
	assert_true(alice->send_text(R"({"type":"ping","requestId":"\u00zz"})"));
	expect_raw_error(*alice, "INVALID_MESSAGE");
	assert_true(alice->send_text("{\"type\":\"ping\",\"requestId\":\"\\ud8" + N + N + N + N + "00\"}"));
	expect_raw_error(*alice, "INVALID_MESSAGE");
	expect_quiet(*bob);
	send_request(*alice, "send_message", conv_field(conv, "\"content\":\"\\ud83d\\ude00\""), "ok");
	assert_contains(next_raw(*alice, "message_sent"), "\"encrypted_content\":\"\xf0\x9f\x98\x80\"");
	next_raw(*alice, "message_received");
	assert_contains(next_raw(*bob, "message_received"), "\"encrypted_content\":\"\xf0\x9f\x98\x80\"");
	send_request(*bob, "load_messages", conv_field(conv), "l");
	Json page = parse_json(next_raw(*bob, "messages_loaded"));
	assert_int_equal(jsize(page.get(), "payload.messages"), 1);
}

// A name taken from a token is text sent to every client: the default
// username is cut at characters, not bytes, and a token whose claims are
// not UTF-8 is refused.
static void test_token_text_is_utf8(void **state)
{
	ServerProcess &s = shared_server(state);
	std::string sub = "u\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9";
	auto c = ws(s);
	send_request(*c, "auth", "{\"token\":" + jquote(token_for(sub)) + "}", "a");
	Json j = parse_json(next_raw(*c, "auth_success"));
	assert_str_eq(jstr(j.get(), "payload.user.username"),
		      "user_u\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9");
	auto d = ws(s);
	send_request(*d, "auth", "{\"token\":" + jquote(token_for("utf-bad", 3600, "\"name\":\"x\xff\"")) + "}", "b");
	expect_raw_error(*d, "INVALID_TOKEN");
	send_request(*d, "auth", "{\"token\":" + jquote(token_for("utf-bad\xc3")) + "}", "b");
	expect_raw_error(*d, "INVALID_TOKEN");
	// Other users see the name too.
	auto e = connect_as(s.port(), "utf-friend");
	send_request(*e, "create_conversation", "{\"participantIds\":[" + jquote(sub) + "]}", "c");
	assert_contains(next_raw(*e, "conversation_created"), "\"username\":\"user_u\xc3\xa9");
	next_raw(*c, "conversation_created");
}

// ---------------------------------------------------------------- SQL

// SQL and LIKE metacharacters are data: stored and matched literally.
static void test_sql_metacharacters_literal(void **state)
{
	ServerProcess &s = shared_server(state);
	const std::string drop = "'); DROP TABLE messages; --";
	auto pct = connect_as(s.port(), "sql-%");
	auto und = connect_as(s.port(), "sql-_");
	auto quote = connect_as(s.port(), "sql-' OR '1'='1");
	auto owner = connect_as(s.port(), "sql-owner");
	// Ids that a LIKE pattern or an injected condition would match.
	for (const char *id : {"sql-%owner", "SQL-%", "sql-_x", "sql-' OR '1'='1' --", "%", "_"}) {
		send_request(*owner, "create_conversation", std::string("{\"participantIds\":[") + jquote(id) + "]}", "nf");
		expect_raw_error(*owner, "USER_NOT_FOUND");
	}
	send_request(*owner, "create_conversation",
		     "{\"type\":\"group\",\"participantIds\":[\"sql-%\",\"sql-_\",\"sql-' OR '1'='1\"],\"name\":" +
			     jquote("Robert'); DROP TABLE conversations; --") + "}",
		     "g");
	std::string conv = conv_of(next_raw(*owner, "conversation_created"));
	for (auto *c : {pct.get(), und.get(), quote.get()})
		next_raw(*c, "conversation_created");
	for (const std::string &cid : {std::string("%"), std::string("' OR '1'='1"), std::string("_")}) {
		send_request(*pct, "join_conversation", conv_field(cid), "j");
		expect_raw_error(*pct, "ACCESS_DENIED");
	}
	// Contents and idempotency keys with metacharacters.
	const std::string contents[] = {drop, "%", "_", "\\", "' OR '1'='1"};
	const std::string keys[] = {"%", "_", "'", "%%", "' OR '1'='1"};
	for (int i = 0; i < 5; i++) {
		send_request(*owner, "send_message",
			     conv_field(conv, "\"content\":" + jquote(contents[i]) + ",\"clientMessageId\":" + jquote(keys[i])),
			     "m");
		Json j = parse_json(next_raw(*owner, "message_sent"));
		assert_int_equal(jnum(j.get(), "payload.message.seq"), i + 1);
		next_raw(*owner, "message_received");
	}
	send_request(*owner, "send_message", conv_field(conv, "\"content\":\"again\",\"clientMessageId\":\"%\""), "m");
	Json again = parse_json(next_raw(*owner, "message_sent"));
	assert_int_equal(jnum(again.get(), "payload.message.seq"), 1);
	send_request(*owner, "load_messages", conv_field(conv, "\"beforeMessageId\":\"%\""), "b");
	expect_raw_error(*owner, "MESSAGE_NOT_FOUND");
	// Everything is still there, and reads back as sent.
	send_request(*pct, "load_messages", conv_field(conv), "l");
	Json page = parse_json(next_raw(*pct, "messages_loaded"));
	assert_int_equal(jsize(page.get(), "payload.messages"), 5);
	for (int i = 0; i < 5; i++) {
		std::string at = "payload.messages." + std::to_string(i);
		assert_str_eq(jstr(page.get(), at + ".encrypted_content"), contents[i]);
		assert_str_eq(jstr(page.get(), at + ".client_message_id"), keys[i]);
	}
	send_request(*quote, "load_conversations", "{}", "lc");
	Json list = parse_json(next_raw(*quote, "conversations_loaded"));
	assert_int_equal(jsize(list.get(), "payload.conversations"), 1);
	assert_str_eq(jstr(list.get(), "payload.conversations.0.name"), "Robert'); DROP TABLE conversations; --");
	assert_int_equal(jnum(list.get(), "payload.conversations.0.participant_count"), 4);
}

// ---------------------------------------------------------------- HTTP

namespace {

const char kMark[] = "zqmark";

// Nothing of the request comes back: no header name or value and no byte
// of the body holds the marker, and the body is the fixed one (status -1:
// whatever libwebsockets answers itself).
void assert_no_echo(const HttpResponse &r, int status, const std::string &body)
{
	bool ok = (status < 0 || r.status == status) && (body.empty() || r.body == body);
	std::string all = r.body;
	for (const auto &h : r.headers)
		all += "\n" + h.first + ": " + h.second;
	for (auto &ch : all)
		ch = static_cast<char>(tolower(static_cast<unsigned char>(ch)));
	if (all.find(kMark) != std::string::npos || all.find("injected") != std::string::npos)
		ok = false;
	if (!ok) {
		snprintf(g_why, sizeof g_why, "expected HTTP %d %s, got %d with:\n%.4000s", status,
			 body.c_str(), r.status, all.c_str());
		fail_msg("%s", g_why);
	}
}

Headers hostile_headers(bool with_origin)
{
	std::string m = kMark;
	Headers h = {
		{"X-Forwarded-For", "198.51.100.1\x1b[31m" + m + "\x01\x7f, 203.0.113.5"},
		{"User-Agent", m + "\x1b]0;title\x07\xc2\x9b"},
		{"X-" + m, m + "\r\nX-Injected: " + m},
		{"Cookie", "a=" + m + "; sb-access-token=" + m},
	};
	if (with_origin)
		h.push_back({"Origin", "https://" + m + ".example\x1b[31m\x01"});
	return h;
}

} // namespace

static void test_http_echoes_nothing(void **)
{
	auto s = start_server({{"allowed_origins", "https://ok.example"}, {"trusted_proxies", "127.0.0.1"},
			       {"max_connections_per_ip", "1"}, {"connection_rate_per_ip", "0"},
			       {"admin_allow", "10.0.0.0/8"}});
	std::string m = kMark;
	const Headers h = hostile_headers(true);
	assert_no_echo(http_request(s->port(), "GET", "/health", h), 200, "");
	assert_no_echo(http_request(s->port(), "GET", "/stats", h), 403, "{\"error\":\"forbidden\"}");
	assert_no_echo(http_request(s->port(), "GET", "/metrics", h), 403, "{\"error\":\"forbidden\"}");
	assert_no_echo(http_request(s->port(), "GET", "/ws", h), 426,
		       "{\"error\":\"this endpoint speaks WebSocket: send an Upgrade request\"}");
	assert_no_echo(http_request(s->port(), "POST", "/health", h), 405, "{\"error\":\"method not allowed\"}");
	assert_no_echo(http_request(s->port(), "GET", "/" + m, h), 404, "{\"error\":\"not found\"}");
	assert_no_echo(http_request(s->port(), "GET", "/" + m + "%0d%0aX-Injected:%20" + m, h), 404,
		       "{\"error\":\"not found\"}");
	assert_no_echo(http_request(s->port(), "GET", "/health?" + m + "=%0d%0a" + m, h), 200, "");
	assert_no_echo(http_request(s->port(), "HEAD", "/" + m, h), 404, "");
	assert_no_echo(http_request(s->port(), m, "/" + m, h), -1, "");
	// Refused upgrades: 404, 403, 401, 429.
	HttpResponse r;
	assert_null(WsClient::connect(s->port(), "/" + m, h, &r).get());
	assert_no_echo(r, 404, "{\"error\":\"not found\"}");
	assert_null(WsClient::connect(s->port(), "/ws", h, &r).get());
	assert_no_echo(r, 403, "{\"error\":\"origin not allowed\"}");
	Headers bearer = hostile_headers(false);
	bearer.push_back({"Authorization", "Bearer " + m + "\x1b.x.y"});
	assert_null(WsClient::connect(s->port(), "/ws", bearer, &r).get());
	assert_no_echo(r, 401, "{\"error\":\"invalid or expired token\"}");
	assert_str_eq(r.header("www-authenticate"), "Bearer");
	auto held = ws(*s, "/ws", {{"X-Forwarded-For", "203.0.113.5"}});
	assert_null(WsClient::connect(s->port(), "/ws?" + m, hostile_headers(false), &r).get());
	assert_no_echo(r, 429, "{\"error\":\"too many connections from this address\"}");
	assert_str_eq(r.header("retry-after"), "60");
	// 503
	auto full = start_server({{"max_connections", "1"}});
	auto only = ws(*full);
	assert_null(WsClient::connect(full->port(), "/ws", hostile_headers(false), &r).get());
	assert_no_echo(r, 503, "{\"error\":\"server is at max_connections\"}");
	assert_log_clean(s->log());
	assert_log_clean(full->log());
}

int main(void)
{
	const struct CMUnitTest own[] = {
		cmocka_unit_test(test_log_escapes_sub),
		cmocka_unit_test(test_log_escapes_origin),
		cmocka_unit_test(test_log_forwarded_for),
		cmocka_unit_test(test_log_unlogged_input),
		cmocka_unit_test(test_http_echoes_nothing),
	};
	const struct CMUnitTest shared[] = {
		cmocka_unit_test(test_nul_bytes_kept),
		cmocka_unit_test(test_nul_in_ids_refused),
		cmocka_unit_test(test_request_id_round_trip),
		cmocka_unit_test(test_lone_surrogate_escapes),
		cmocka_unit_test(test_token_text_is_utf8),
		cmocka_unit_test(test_sql_metacharacters_literal),
	};
	int failed = cmocka_run_group_tests_name("hostile input (log, HTTP)", own, nullptr, nullptr);
	failed += cmocka_run_group_tests_name("hostile input (JSON, SQL)", shared, shared_server_setup,
					      shared_server_teardown);
	return failed;
}
