// util: ids, timestamps, base64url, durations, sizes, addresses, escaping.
#include <cstdio>
#include <set>

#include "cmocka.hpp"
#include "qryptchat/util.hpp"

using namespace qc;

static void test_iso8601(void **)
{
	assert_str_eq(iso8601_ms(0), "1970-01-01T00:00:00.000Z");
	assert_str_eq(iso8601_ms(1795774530123), "2026-11-27T10:15:30.123Z");
	assert_str_eq(iso8601_ms(999), "1970-01-01T00:00:00.999Z");
}

static bool is_uuid(const std::string &s, char version)
{
	if (s.size() != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-')
		return false;
	for (size_t i = 0; i < s.size(); i++) {
		if (i == 8 || i == 13 || i == 18 || i == 23)
			continue;
		char c = s[i];
		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
			return false;
	}
	return s[14] == version && (s[19] == '8' || s[19] == '9' || s[19] == 'a' || s[19] == 'b');
}

static void test_uuid_v4(void **)
{
	std::set<std::string> seen;
	for (int i = 0; i < 1000; i++) {
		std::string u = uuid_v4();
		assert_true(is_uuid(u, '4'));
		assert_true(seen.insert(u).second);
	}
}

static void test_uuid_v7_ordered(void **)
{
	std::string prev;
	for (int i = 0; i < 10000; i++) {
		std::string u = uuid_v7();
		assert_true(is_uuid(u, '7'));
		assert_true(u > prev); // strictly increasing, even within one ms
		prev = u;
	}
	// The first 48 bits are the millisecond time.
	std::string u = uuid_v7_at(0x0123456789ab + 1000000000000LL);
	assert_true(is_uuid(u, '7'));
}

static void test_base64url(void **)
{
	assert_str_eq(base64url_encode(""), "");
	assert_str_eq(base64url_encode("f"), "Zg");
	assert_str_eq(base64url_encode("fo"), "Zm8");
	assert_str_eq(base64url_encode("foo"), "Zm9v");
	assert_str_eq(base64url_encode("\xfb\xff"), "-_8");
	assert_str_eq(*base64url_decode("Zm9vYmFy"), "foobar");
	assert_str_eq(*base64url_decode("-_8"), "\xfb\xff");
	assert_false(base64url_decode("Zm9v=").has_value());   // padding refused
	assert_false(base64url_decode("Zm+v").has_value());    // '+' is base64, not base64url
	assert_false(base64url_decode("Z").has_value());       // impossible length
	assert_false(base64url_decode("Zh").has_value());      // non-zero trailing bits
	assert_false(base64url_decode("Zm 9v").has_value());
}

static void test_durations(void **)
{
	assert_int_equal(*parse_duration_ms("250ms"), 250);
	assert_int_equal(*parse_duration_ms("10"), 10000);
	assert_int_equal(*parse_duration_ms("10s"), 10000);
	assert_int_equal(*parse_duration_ms("30d"), 30LL * 24 * 3600 * 1000);
	assert_int_equal(*parse_duration_ms("5m"), 300000);
	assert_int_equal(*parse_duration_ms("2h"), 7200000);
	assert_int_equal(*parse_duration_ms(" 3S "), 3000);
	assert_false(parse_duration_ms("").has_value());
	assert_false(parse_duration_ms("-1s").has_value());
	assert_false(parse_duration_ms("1.5s").has_value());
	assert_false(parse_duration_ms("5w").has_value());
	assert_false(parse_duration_ms("99999999999999999999h").has_value());
	assert_str_eq(format_duration_ms(250), "250ms");
	assert_str_eq(format_duration_ms(30000), "30s");
	assert_str_eq(format_duration_ms(120000), "2m");
	assert_str_eq(format_duration_ms(3600000), "1h");
	assert_str_eq(format_duration_ms(0), "0s");
}

static void test_sizes(void **)
{
	assert_int_equal(*parse_size("4096"), 4096);
	assert_int_equal(*parse_size("64K"), 65536);
	assert_int_equal(*parse_size("4m"), 4 * 1024 * 1024);
	assert_false(parse_size("4G").has_value());
	assert_false(parse_size("K").has_value());
	assert_str_eq(format_size(262144), "256K");
	assert_str_eq(format_size(4194304), "4M");
	assert_str_eq(format_size(1000), "1000");
}

static void test_lists(void **)
{
	auto l = split_list(" a, b ,,c\td ");
	assert_int_equal(l.size(), 4);
	assert_str_eq(l[0], "a");
	assert_str_eq(l[3], "d");
	assert_true(split_list("").empty());
}

static void test_cidr(void **)
{
	auto lo = parse_cidr("127.0.0.0/8");
	assert_true(lo.has_value());
	assert_true(cidr_contains(*lo, *parse_ip("127.1.2.3")));
	assert_false(cidr_contains(*lo, *parse_ip("128.0.0.1")));
	// IPv4-mapped IPv6 peers match IPv4 ranges.
	assert_true(cidr_contains(*lo, *parse_ip("::ffff:127.0.0.1")));
	auto v6 = parse_cidr("fd00::/8");
	assert_true(cidr_contains(*v6, *parse_ip("fd12::1")));
	assert_false(cidr_contains(*v6, *parse_ip("fe80::1")));
	assert_false(cidr_contains(*v6, *parse_ip("10.0.0.1")));
	auto one = parse_cidr("::1");
	assert_int_equal(one->prefix, 128);
	assert_true(cidr_contains(*one, *parse_ip("::1")));
	auto odd = parse_cidr("10.0.0.0/9");
	assert_true(cidr_contains(*odd, *parse_ip("10.127.255.255")));
	assert_false(cidr_contains(*odd, *parse_ip("10.128.0.0")));
	assert_false(parse_cidr("10.0.0.0/33").has_value());
	assert_false(parse_cidr("10.0.0/8").has_value());
	assert_false(parse_cidr("example.org").has_value());
	assert_str_eq(format_cidr(*parse_cidr("10.0.0.0/8")), "10.0.0.0/8");
	assert_str_eq(format_cidr(*parse_cidr("::1")), "::1");
}

static void test_escape(void **)
{
	assert_str_eq(escape_text("a\"b\\c\n"), "a\\\"b\\\\c\\x0a");
	assert_str_eq(escape_text("abcdef", 3), "abc...");
	// Cut at code points, never inside a UTF-8 sequence.
	assert_str_eq(escape_text("\xc3\xa9\xc3\xa9\xc3\xa9", 2), "\xc3\xa9\xc3\xa9...");
	assert_int_equal(utf8_length("\xc3\xa9t\xc3\xa9"), 3);
}

// What a log line must never carry raw: every C0 control, DEL, the C1
// controls (U+0080..U+009F: U+009B is a CSI), the Unicode line and
// paragraph separators, and bytes that are not UTF-8.
static void test_escape_controls(void **)
{
	for (int c = 0; c < 0x20; c++) {
		char want[8];
		snprintf(want, sizeof want, "\\x%02x", c);
		assert_str_eq(escape_text(std::string(1, static_cast<char>(c))), want);
	}
	assert_true(escape_text(std::string("a\0b", 3)) == "a\\x00b");
	assert_str_eq(escape_text("x\x1b[31mred\r\n2026-01-01 info forged\x7f"),
		      "x\\x1b[31mred\\x0d\\x0a2026-01-01 info forged\\x7f");
	assert_str_eq(escape_text("\xc2\x9b" "31m \xc2\x85 \xc2\xa0"), "\\xc2\\x9b" "31m \\xc2\\x85 \xc2\xa0");
	assert_str_eq(escape_text("a\xe2\x80\xa8" "b\xe2\x80\xa9" "c"), "a\\xe2\\x80\\xa8" "b\\xe2\\x80\\xa9" "c");
	// Bytes that are not UTF-8, one by one; valid text around them is kept.
	assert_str_eq(escape_text("\xff\xc3(\xc3\xa9\xc0\xaf\xed\xa0\x80\xf4\x90\x80\x80\xe2\x82"),
		      "\\xff\\xc3(\xc3\xa9\\xc0\\xaf\\xed\\xa0\\x80\\xf4\\x90\\x80\\x80\\xe2\\x82");
	// Non-ASCII text, emoji included, passes unchanged.
	assert_str_eq(escape_text("\xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80"),
		      "\xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80");
	// Whatever goes in, what comes out is printable ASCII or valid UTF-8.
	std::string all;
	for (int c = 0; c < 256; c++)
		all.push_back(static_cast<char>(c));
	std::string out = escape_text(all, all.size());
	assert_true(utf8_valid(out));
	for (unsigned char c : out)
		assert_true(c >= 0x20 && c != 0x7f);
}

static void test_utf8(void **)
{
	assert_true(utf8_valid(""));
	assert_true(utf8_valid("plain \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf"));
	assert_true(utf8_valid(std::string("a\0b", 3)));
	for (const char *bad : {
		     "\x80",             // a continuation byte alone
		     "\xc0\xaf",         // over-long '/'
		     "\xc1\xbf",         // over-long
		     "\xe0\x80\xaf",     // over-long '/'
		     "\xf0\x80\x80\xaf", // over-long '/'
		     "\xed\xa0\x80",     // U+D800, a UTF-16 surrogate
		     "\xed\xbf\xbf",     // U+DFFF
		     "\xf4\x90\x80\x80", // U+110000
		     "\xf5\x80\x80\x80", "\xfe", "\xff",
		     "\xc3",             // truncated at the end
		     "\xe2\x82", "\xf0\x9f\x98",
		     "\xc3(",            // a lead byte without its continuation
	     }) {
		assert_false(utf8_valid(bad));
		assert_false(utf8_valid(std::string("ok ") + bad + " ok"));
	}
	// A prefix is cut at code points, never inside a sequence.
	assert_str_eq(utf8_prefix("\xc3\xa9\xc3\xa9\xc3\xa9", 2), "\xc3\xa9\xc3\xa9");
	assert_str_eq(utf8_prefix("a\xf0\x9f\x98\x80" "bcdefghij", 8), "a\xf0\x9f\x98\x80" "bcdefg");
	assert_str_eq(utf8_prefix("short", 8), "short");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_iso8601),   cmocka_unit_test(test_uuid_v4),
		cmocka_unit_test(test_uuid_v7_ordered), cmocka_unit_test(test_base64url),
		cmocka_unit_test(test_durations), cmocka_unit_test(test_sizes),
		cmocka_unit_test(test_lists),     cmocka_unit_test(test_cidr),
		cmocka_unit_test(test_escape),    cmocka_unit_test(test_escape_controls),
		cmocka_unit_test(test_utf8),
	};
	return cmocka_run_group_tests_name("util", tests, nullptr, nullptr);
}
