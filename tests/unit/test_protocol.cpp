// protocol and json: every envelope rule of PROTOCOL.md §2–3 and the
// frame layout.
#include "cmocka.hpp"
#include "qryptchat/json.hpp"
#include "qryptchat/protocol.hpp"

using namespace qc;

namespace {

std::string text_of(const FramePtr &f) { return std::string(f->data(), f->size()); }

JsonDoc parse_frame(const FramePtr &f)
{
	JsonDoc d = json_parse(text_of(f));
	assert_non_null(d.get());
	return d;
}

bool is_iso_ms(std::string_view s)
{
	// 2026-11-27T10:15:30.123Z
	return s.size() == 24 && s[4] == '-' && s[10] == 'T' && s[19] == '.' && s[23] == 'Z';
}

} // namespace

static void test_valid_envelope(void **)
{
	Envelope e = parse_envelope(
		R"({"type":"send_message","payload":{"a":1},"requestId":"r1","timestamp":"x"})");
	assert_false(e.error.has_value());
	assert_int_equal(e.kind, ReqType::SendMessage);
	assert_str_eq(*e.request_id, "r1");
	assert_true(e.payload.is_object());
	assert_int_equal(*e.payload.get("a").integer(), 1);
}

static void test_payload_rules(void **)
{
	// missing or null payload: {}
	Envelope e = parse_envelope(R"({"type":"ping"})");
	assert_false(e.error.has_value());
	assert_false(e.payload.present());
	e = parse_envelope(R"({"type":"ping","payload":null})");
	assert_false(e.error.has_value());
	// any other type: INVALID_MESSAGE, with the requestId echoed
	for (const char *p : {"[]", "1", "\"x\"", "true"}) {
		e = parse_envelope(std::string(R"({"type":"ping","requestId":"q","payload":)") + p + "}");
		assert_true(e.error.has_value());
		assert_int_equal(e.error->code, Err::InvalidMessage);
		assert_str_eq(*e.request_id, "q");
	}
}

static void test_type_rules(void **)
{
	for (const char *t : {R"({"payload":{}})", R"({"type":5})", R"({"type":null})", R"({"type":["ping"]})"}) {
		Envelope e = parse_envelope(t);
		assert_true(e.error.has_value());
		assert_int_equal(e.error->code, Err::InvalidMessage);
	}
	Envelope e = parse_envelope(R"({"type":"fly","requestId":"z"})");
	assert_int_equal(e.error->code, Err::UnknownMessageType);
	assert_str_eq(e.error->message, "Unknown message type: fly");
	// Quotes and control characters escaped, cut at 64 characters
	e = parse_envelope("{\"type\":\"a\\\"b\\nc" + std::string(100, 'x') + "\"}");
	assert_int_equal(e.error->code, Err::UnknownMessageType);
	assert_str_eq(e.error->message,
		      "Unknown message type: a\\\"b\\x0ac" + std::string(59, 'x') + "...");
	// Type names are case-sensitive
	e = parse_envelope(R"({"type":"PING"})");
	assert_int_equal(e.error->code, Err::UnknownMessageType);
}

static void test_not_json(void **)
{
	for (const char *t : {"", "not json", "{", "[1,2]", "\"str\"", "42", "null", "{\"type\":\"ping\"} x"}) {
		Envelope e = parse_envelope(t);
		assert_true(e.error.has_value());
		assert_int_equal(e.error->code, Err::InvalidMessage);
		assert_false(e.request_id.has_value());
	}
	Envelope e = parse_envelope("nope");
	assert_str_eq(e.error->message, "Invalid message format");
	// deep nesting is refused by the parser, not by a crash
	std::string deep(5000, '[');
	e = parse_envelope(deep);
	assert_int_equal(e.error->code, Err::InvalidMessage);
}

static void test_request_id(void **)
{
	Envelope e = parse_envelope(R"({"type":"ping","requestId":12})");
	assert_false(e.request_id.has_value()); // non-strings are treated as absent
	e = parse_envelope(R"({"type":"ping","requestId":null})");
	assert_false(e.request_id.has_value());
	e = parse_envelope(R"({"type":"ping","requestId":""})");
	assert_str_eq(*e.request_id, "");
	assert_str_eq(reply_request_id(std::string("abc")), "abc");
	std::string fresh = reply_request_id(std::string(""));
	assert_int_equal(fresh.size(), 36);
	assert_true(fresh[14] == '4');
	assert_int_equal(reply_request_id(std::nullopt).size(), 36);
}

static void test_frame_layout(void **)
{
	FramePtr f = build_frame("pong", "r-1", [](JsonWriter &w) { w.begin_object().end_object(); });
	assert_int_equal(f->buf.size(), kFrameHeadroom + f->size());
	JsonDoc d = parse_frame(f);
	JsonRef r = json_root(d);
	assert_str_eq(std::string(r.get("type").str()), "pong");
	assert_true(r.get("payload").is_object());
	assert_str_eq(std::string(r.get("requestId").str()), "r-1");
	assert_true(is_iso_ms(r.get("timestamp").str()));
	assert_int_equal(r.size(), 4);
}

// RFC 6455 §5.2: the three length encodings, at their boundaries.
static void test_ws_text_header(void **)
{
	unsigned char h[qc::kMaxFrameHeader];
	assert_int_equal(qc::ws_text_header(0, h), 2);
	assert_int_equal(h[0], 0x81);
	assert_int_equal(h[1], 0);
	assert_int_equal(qc::ws_text_header(125, h), 2);
	assert_int_equal(h[1], 125);
	assert_int_equal(qc::ws_text_header(126, h), 4);
	assert_int_equal(h[1], 126);
	assert_int_equal(h[2], 0);
	assert_int_equal(h[3], 126);
	assert_int_equal(qc::ws_text_header(65535, h), 4);
	assert_int_equal(h[2], 0xff);
	assert_int_equal(h[3], 0xff);
	assert_int_equal(qc::ws_text_header(65536, h), 10);
	assert_int_equal(h[0], 0x81);
	assert_int_equal(h[1], 127);
	const unsigned char want[8] = {0, 0, 0, 0, 0, 1, 0, 0};
	assert_memory_equal(h + 2, want, 8);
	assert_int_equal(qc::ws_text_header(0x0102030405ULL, h), 10);
	const unsigned char want2[8] = {0, 0, 0, 1, 2, 3, 4, 5};
	assert_memory_equal(h + 2, want2, 8);
}

static void test_error_frame(void **)
{
	FramePtr f = build_error(make_error(Err::AccessDenied, "Access denied to conversation"),
				 std::string("req-9"));
	JsonDoc d = parse_frame(f);
	JsonRef r = json_root(d);
	assert_str_eq(std::string(r.get("type").str()), "error");
	assert_str_eq(std::string(r.get("requestId").str()), "req-9");
	JsonRef p = r.get("payload");
	assert_str_eq(std::string(p.get("error").str()), "Access denied to conversation");
	assert_str_eq(std::string(p.get("code").str()), "ACCESS_DENIED");
	assert_str_eq(std::string(p.get("requestId").str()), "req-9");
	// no requestId: payload.requestId null, envelope fresh
	f = build_error(make_error(Err::InvalidMessage, "Invalid message format"), std::nullopt);
	d = parse_frame(f);
	r = json_root(d);
	assert_true(r.get("payload").get("requestId").is_null());
	assert_int_equal(r.get("requestId").str().size(), 36);
	f = build_error(make_error(Err::InvalidMessage, "x"), std::string(""));
	d = parse_frame(f);
	assert_true(json_root(d).get("payload").get("requestId").is_null());
}

static void test_writer_escapes(void **)
{
	std::string out;
	JsonWriter w(out);
	w.begin_object()
		.field("s", std::string("q\"b\\\n\t\x01\xc3\xa9"))
		.field("n", int64_t(-42))
		.field("t", true)
		.field("o", std::optional<std::string>())
		.key("a")
		.begin_array()
		.value(1)
		.value("x")
		.end_array()
		.key("raw")
		.raw("{\"k\":[1]}")
		.end_object();
	assert_str_eq(out, "{\"s\":\"q\\\"b\\\\\\n\\t\\u0001\xc3\xa9\",\"n\":-42,\"t\":true,\"o\":null,"
			   "\"a\":[1,\"x\"],\"raw\":{\"k\":[1]}}");
	JsonDoc d = json_parse(out);
	assert_str_eq(std::string(json_root(d).get("s").str()), "q\"b\\\n\t\x01\xc3\xa9");
}

static void test_json_ref(void **)
{
	JsonDoc d = json_parse(R"({"i":3,"f":1.5,"big":9007199254740993,"neg":-2,"arr":[1,2],"o":{"k":"v"}})");
	JsonRef r = json_root(d);
	assert_int_equal(*r.get("i").integer(), 3);
	assert_false(r.get("f").integer().has_value());
	assert_false(r.get("big").integer().has_value());
	assert_int_equal(*r.get("neg").integer(), -2);
	assert_int_equal(r.get("arr").size(), 2);
	assert_false(r.get("missing").present());
	assert_false(r.get("i").get("x").present());
	assert_str_eq(r.get("o").print(), "{\"k\":\"v\"}");
	auto items = r.get("o").items();
	assert_str_eq(std::string(items[0].key()), "k");
	// Member names are case-sensitive
	assert_false(r.get("I").present());
}

// A "\u0000" inside a string is a NUL byte of it, not its end: every
// string reads byte-exact, wherever it sits and whatever comes before it.
static void test_json_nul_bytes(void **)
{
	const std::string n(1, '\0');
	JsonDoc d = json_parse(
		R"({"q":"a\"b\\","a":"x\u0000y","plain":"p","arr":["\u0000",{"d":"e\u0000\u0000"},"z"],)"
		R"("mix":"\u00e9\u0000\ud83d\ude00\n","tail":"\u0000"})");
	assert_non_null(d.get());
	JsonRef r = json_root(d);
	assert_true(r.get("q").str() == "a\"b\\");
	assert_true(r.get("a").str() == "x" + n + "y");
	assert_true(r.get("plain").str() == "p");
	assert_true(r.get("arr").items()[0].str() == n);
	assert_true(r.get("arr").items()[1].get("d").str() == "e" + n + n);
	assert_true(r.get("arr").items()[2].str() == "z");
	assert_true(r.get("mix").str() == "\xc3\xa9" + n + "\xf0\x9f\x98\x80\n");
	assert_true(r.get("tail").str() == n);
	// A raw NUL byte inside a string is kept as well.
	d = json_parse(std::string("{\"a\":\"x\0y\"}", 12));
	assert_true(json_root(d).get("a").str() == "x" + n + "y");
	// print() keeps it (as \u0000), in names' values at any depth.
	d = json_parse(R"({"k":["a\u0000b",1.5,true,null,{"m":"\u0000"}]})");
	assert_str_eq(json_root(d).print(), R"({"k":["a\u0000b",1.5,true,null,{"m":"\u0000"}]})");
	// A member name with a NUL is refused: names are matched as C
	// strings, so "type\u0000x" would pass for "type".
	for (const char *t : {R"({"type\u0000x":"ping"})", R"({"type":"ping","payload":{"a\u0000":1}})",
			      "{\"a\":[{\"b\\u0000\":2}]}"}) {
		assert_null(json_parse(t).get());
	}
	assert_null(json_parse(std::string("{\"a\0\":1}", 9)).get());
	// cJSON reads "\uzzzz" as U+0000; it is no escape, and refused.
	for (const char *t : {R"({"a":"\uzzzz"})", R"({"a":"x\u00zz"})", R"({"a":"\u00\"x"})",
			      R"({"a":"\ud83d\udezz"})", R"(["\u12"])"})
		assert_null(json_parse(t).get());
	assert_null(json_parse(std::string("{\"a\":\"\\ud8\0\0\0\0\0\0\0\0000\"}", 22)).get());
	// An escaped backslash before "u00zz" is no escape of it.
	d = json_parse(R"({"a":"\\u00zz","b":"\u0000"})");
	assert_true(json_root(d).get("a").str() == "\\u00zz");
	assert_true(json_root(d).get("b").str() == n);
	// In the envelope: a type with a NUL is no known type; a requestId
	// with one is echoed whole.
	Envelope e = parse_envelope(R"({"type":"ping\u0000","requestId":"r\u0000\u0001"})");
	assert_int_equal(e.error->code, Err::UnknownMessageType);
	assert_str_eq(e.error->message, "Unknown message type: ping\\x00");
	assert_true(*e.request_id == "r" + n + "\x01");
	FramePtr f = build_error(*e.error, e.request_id);
	assert_true(text_of(f).find(R"("requestId":"r\u0000\u0001")") != std::string::npos);
	e = parse_envelope(R"({"type\u0000":"auth"})");
	assert_int_equal(e.error->code, Err::InvalidMessage);
}

// "\ud800" alone is no character: the parser refuses it (so no string
// ever holds a surrogate encoded in UTF-8); a proper pair is one code
// point.
static void test_json_surrogates(void **)
{
	for (const char *t : {R"({"a":"\ud800"})", R"({"a":"\udc00"})", R"({"a":"\udbff\u0041"})",
			      R"({"a":"\ud800x"})", R"({"a":"x\udfff"})", R"({"a":"\ud800\ud800"})"})
		assert_null(json_parse(t).get());
	JsonDoc d = json_parse(R"({"a":"\ud83d\ude00","b":"\uDBFF\uDFFF"})");
	assert_true(json_root(d).get("a").str() == "\xf0\x9f\x98\x80");
	assert_true(json_root(d).get("b").str() == "\xf4\x8f\xbf\xbf");
	Envelope e = parse_envelope(R"({"type":"ping","requestId":"\ud800"})");
	assert_int_equal(e.error->code, Err::InvalidMessage);
	assert_false(e.request_id.has_value());
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid_envelope), cmocka_unit_test(test_payload_rules),
		cmocka_unit_test(test_type_rules),     cmocka_unit_test(test_not_json),
		cmocka_unit_test(test_request_id),     cmocka_unit_test(test_frame_layout),
		cmocka_unit_test(test_error_frame),    cmocka_unit_test(test_writer_escapes),
		cmocka_unit_test(test_json_ref),       cmocka_unit_test(test_ws_text_header),
		cmocka_unit_test(test_json_nul_bytes), cmocka_unit_test(test_json_surrogates),
	};
	return cmocka_run_group_tests_name("protocol", tests, nullptr, nullptr);
}
