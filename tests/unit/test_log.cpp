// log: the JSON rendering of a line's body, and log_str escaping that it
// undoes.
#include "cmocka.hpp"
#include "qryptchat/log.hpp"

using namespace qc;

static void test_body_json(void **)
{
	assert_str_eq(log_body_json("auth session=12 peer=127.0.0.1 user=\"alice\""),
		      "\"event\":\"auth\",\"session\":12,\"peer\":\"127.0.0.1\",\"user\":\"alice\"");
	assert_str_eq(log_body_json("shutdown"), "\"event\":\"shutdown\"");
	// Quoted values come back as the client sent them, JSON-escaped.
	std::string nasty = std::string("a\"b\\c\nd\x1b[31m") + "\x7f" + "é";
	assert_str_eq(log_body_json("ev user=" + log_str(nasty)),
		      "\"event\":\"ev\",\"user\":\"a\\\"b\\\\c\\u000ad\\u001b[31m\\u007fé\"");
	// Digits only (no sign, no leading zero) are numbers; anything else a string.
	assert_str_eq(log_body_json("e a=0 b=007 c=-1 d=1.5"),
		      "\"event\":\"e\",\"a\":0,\"b\":\"007\",\"c\":\"-1\",\"d\":\"1.5\"");
	// Invalid UTF-8 (a lone continuation byte, an over-long form, a
	// surrogate) becomes U+FFFD; valid sequences pass.
	assert_str_eq(log_body_json("e v=\"\x80 \xc0\xaf \xed\xa0\x80 \xf0\x9f\x98\x80\""),
		      "\"event\":\"e\",\"v\":\"\\ufffd \\ufffd\\ufffd \\ufffd\\ufffd\\ufffd \xf0\x9f\x98\x80\"");
	// C1 controls and U+2028/U+2029 are escaped in JSON as well.
	assert_str_eq(log_body_json("e v=\"\xc2\x9b[2J \xe2\x80\xa8\xe2\x80\xa9\""),
		      "\"event\":\"e\",\"v\":\"\\u009b[2J \\u2028\\u2029\"");
	assert_str_eq(log_body_json("e v=" + log_str("\xc2\x9b")), "\"event\":\"e\",\"v\":\"\\u009b\"");
	// Words that are not key=value are kept as text.
	assert_str_eq(log_body_json("e a=1 stray words"), "\"event\":\"e\",\"a\":1,\"text\":\"stray words\"");
	assert_str_eq(log_body_json("k=v"), "\"event\":\"\",\"k\":\"v\"");
	// A quoted value that hides a '"' and spaces stays one value.
	assert_str_eq(log_body_json("e m=" + log_str("x\" y=1 z")), "\"event\":\"e\",\"m\":\"x\\\" y=1 z\"");
}

static void test_formats(void **)
{
	LogFormat f;
	assert_true(parse_log_format("json", f));
	assert_int_equal(static_cast<int>(f), static_cast<int>(LogFormat::Json));
	assert_true(parse_log_format("text", f));
	assert_int_equal(static_cast<int>(f), static_cast<int>(LogFormat::Text));
	assert_false(parse_log_format("xml", f));
	assert_false(log_set_file("/nonexistent-dir/x.log").empty());
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_body_json),
		cmocka_unit_test(test_formats),
	};
	return cmocka_run_group_tests_name("log", tests, nullptr, nullptr);
}
