// auth: a valid token and every way one can be wrong.
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "cmocka.hpp"
#include "qryptchat/auth.hpp"

using namespace qc;

namespace {

const std::string kSecret = "unit-test-secret-0123456789abcdef0123";
const int64_t kNow = 1795774530; // 2026-11-27T10:15:30Z

// Signs with HMAC-SHA256 whatever the header claims (to build hostile tokens).
std::string sign(const std::string &header, const std::string &claims,
		 const std::string &secret = kSecret)
{
	std::string input = base64url_encode(header) + "." + base64url_encode(claims);
	unsigned char mac[32];
	unsigned int len = 0;
	HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
	     reinterpret_cast<const unsigned char *>(input.data()), input.size(), mac, &len);
	return input + "." + base64url_encode(std::string(reinterpret_cast<char *>(mac), len));
}

const std::string kHs256 = R"({"alg":"HS256","typ":"JWT"})";

AuthParams params()
{
	AuthParams p;
	p.secret = kSecret;
	p.leeway_s = 30;
	return p;
}

std::string claims(const std::string &extra = "", int64_t exp_offset = 3600)
{
	return "{\"sub\":\"user-1\",\"exp\":" + std::to_string(kNow + exp_offset) +
	       (extra.empty() ? "" : "," + extra) + "}";
}

Err verify(const std::string &token, const AuthParams &p = params())
{
	auto r = verify_jwt(token, p, kNow);
	return r ? Err::None : r.error().code;
}

} // namespace

static void test_valid(void **)
{
	auto r = verify_jwt(sign(kHs256, claims("\"iat\":" + std::to_string(kNow))), params(), kNow);
	assert_true(r.ok());
	assert_str_eq(r->sub, "user-1");
	assert_int_equal(*r->exp, kNow + 3600);
	assert_false(r->hints.username.has_value());
	// typ is not required; a Supabase-style token with extra claims passes.
	assert_int_equal(verify(sign(R"({"alg":"HS256"})", claims("\"role\":\"authenticated\""))),
			 Err::None);
	// The token subcommand's signer produces tokens the verifier accepts.
	assert_int_equal(verify(sign_jwt_hs256(claims(), kSecret)), Err::None);
}

static void test_malformed(void **)
{
	std::string good = sign(kHs256, claims());
	assert_int_equal(verify(""), Err::InvalidToken);
	assert_int_equal(verify("abc"), Err::InvalidToken);
	assert_int_equal(verify("a.b"), Err::InvalidToken);              // two segments
	assert_int_equal(verify(good + ".x"), Err::InvalidToken);        // four segments
	assert_int_equal(verify("!!!." + good.substr(good.find('.') + 1)), Err::InvalidToken);
	std::string padded = good;
	padded.insert(padded.find('.'), "=");                            // padding is not base64url
	assert_int_equal(verify(padded), Err::InvalidToken);
	assert_int_equal(verify(sign("not json", claims())), Err::InvalidToken);
	assert_int_equal(verify(sign(kHs256, "[1,2]")), Err::InvalidToken);
	assert_int_equal(verify(std::string(kMaxTokenBytes + 1, 'a')), Err::InvalidToken);
}

static void test_algorithms(void **)
{
	assert_int_equal(verify(sign(R"({"alg":"none"})", claims())), Err::InvalidToken);
	assert_int_equal(verify(sign(R"({"alg":"HS512"})", claims())), Err::InvalidToken);
	assert_int_equal(verify(sign(R"({"alg":"hs256"})", claims())), Err::InvalidToken);
	assert_int_equal(verify(sign(R"({"typ":"JWT"})", claims())), Err::InvalidToken);
	assert_int_equal(verify(sign(R"({"alg":256})", claims())), Err::InvalidToken);
	assert_int_equal(verify(sign(R"({"alg":"HS256","crit":["b64"]})", claims())),
			 Err::InvalidToken);
	// alg none with an empty signature, the classic attack
	std::string none = base64url_encode(R"({"alg":"none"})") + "." + base64url_encode(claims()) + ".";
	assert_int_equal(verify(none), Err::InvalidToken);
	auto r = verify_jwt(sign(R"({"alg":"HS512"})", claims()), params(), kNow);
	assert_str_eq(r.error().message, "Invalid token: unsupported algorithm");
}

static void test_signature(void **)
{
	assert_int_equal(verify(sign(kHs256, claims(), kSecret + "x")), Err::InvalidToken);
	std::string t = sign(kHs256, claims());
	t.back() = t.back() == 'A' ? 'B' : 'A';
	assert_int_equal(verify(t), Err::InvalidToken);
	// A valid signature over different claims
	std::string other = sign(kHs256, claims("\"admin\":true"));
	std::string spliced = t.substr(0, t.rfind('.')) + other.substr(other.rfind('.'));
	assert_int_equal(verify(spliced), Err::InvalidToken);
	// Truncated signature
	std::string cut = sign(kHs256, claims());
	cut.resize(cut.size() - 4);
	assert_int_equal(verify(cut), Err::InvalidToken);
}

static void test_expiry_and_leeway(void **)
{
	// exp: valid until exp + leeway (exclusive)
	assert_int_equal(verify(sign(kHs256, claims("", -31))), Err::TokenExpired);
	assert_int_equal(verify(sign(kHs256, claims("", -30))), Err::TokenExpired);
	assert_int_equal(verify(sign(kHs256, claims("", -29))), Err::None);
	assert_int_equal(verify(sign(kHs256, "{\"sub\":\"u\",\"exp\":\"soon\"}")), Err::InvalidToken);
	// Missing exp: refused unless jwt_require_exp no
	assert_int_equal(verify(sign(kHs256, R"({"sub":"u"})")), Err::InvalidToken);
	AuthParams lax = params();
	lax.require_exp = false;
	assert_int_equal(verify(sign(kHs256, R"({"sub":"u"})"), lax), Err::None);
	// nbf in the future beyond the leeway: TOKEN_EXPIRED
	assert_int_equal(verify(sign(kHs256, claims("\"nbf\":" + std::to_string(kNow + 31)))),
			 Err::TokenExpired);
	assert_int_equal(verify(sign(kHs256, claims("\"nbf\":" + std::to_string(kNow + 30)))),
			 Err::None);
	// iat in the future beyond the leeway: INVALID_TOKEN
	assert_int_equal(verify(sign(kHs256, claims("\"iat\":" + std::to_string(kNow + 31)))),
			 Err::InvalidToken);
	assert_int_equal(verify(sign(kHs256, claims("\"iat\":" + std::to_string(kNow + 30)))),
			 Err::None);
	// Zero leeway
	AuthParams strict = params();
	strict.leeway_s = 0;
	assert_int_equal(verify(sign(kHs256, claims("", 0)), strict), Err::TokenExpired);
	assert_int_equal(verify(sign(kHs256, claims("", 1)), strict), Err::None);
	auto r = verify_jwt(sign(kHs256, claims("", -100)), params(), kNow);
	assert_str_eq(r.error().message, "Token expired");
}

static void test_audience_issuer(void **)
{
	AuthParams p = params();
	p.audience = "authenticated";
	assert_int_equal(verify(sign(kHs256, claims()), p), Err::InvalidToken);
	assert_int_equal(verify(sign(kHs256, claims("\"aud\":\"authenticated\"")), p), Err::None);
	assert_int_equal(verify(sign(kHs256, claims("\"aud\":\"other\"")), p), Err::InvalidToken);
	assert_int_equal(verify(sign(kHs256, claims("\"aud\":[\"x\",\"authenticated\"]")), p), Err::None);
	assert_int_equal(verify(sign(kHs256, claims("\"aud\":[\"x\",\"y\"]")), p), Err::InvalidToken);
	assert_int_equal(verify(sign(kHs256, claims("\"aud\":[]")), p), Err::InvalidToken);
	// aud is ignored when not configured
	assert_int_equal(verify(sign(kHs256, claims("\"aud\":\"other\""))), Err::None);
	p = params();
	p.issuer = "https://x.supabase.co/auth/v1";
	assert_int_equal(verify(sign(kHs256, claims()), p), Err::InvalidToken);
	assert_int_equal(verify(sign(kHs256, claims("\"iss\":\"https://x.supabase.co/auth/v1\"")), p),
			 Err::None);
	assert_int_equal(verify(sign(kHs256, claims("\"iss\":\"https://evil\"")), p), Err::InvalidToken);
}

static void test_sub(void **)
{
	std::string exp = "\"exp\":" + std::to_string(kNow + 60);
	assert_int_equal(verify(sign(kHs256, "{" + exp + "}")), Err::InvalidToken);
	assert_int_equal(verify(sign(kHs256, "{\"sub\":\"\"," + exp + "}")), Err::InvalidToken);
	assert_int_equal(verify(sign(kHs256, "{\"sub\":42," + exp + "}")), Err::InvalidToken);
	std::string s128(128, 's'), s129(129, 's');
	assert_int_equal(verify(sign(kHs256, "{\"sub\":\"" + s128 + "\"," + exp + "}")), Err::None);
	assert_int_equal(verify(sign(kHs256, "{\"sub\":\"" + s129 + "\"," + exp + "}")),
			 Err::InvalidToken);
	// An id holds no NUL: such a sub is refused, not cut at the NUL.
	assert_int_equal(verify(sign(kHs256, "{\"sub\":\"user-1\\u0000x\"," + exp + "}")),
			 Err::InvalidToken);
	// Control characters are the issuer's business: kept as they are.
	auto r = verify_jwt(sign(kHs256, "{\"sub\":\"a\\nb\\u001b\"," + exp + "}"), params(), kNow);
	assert_true(r.ok());
	assert_str_eq(r->sub, "a\nb\x1b");
}

// The claims must be UTF-8 (RFC 7519): what is taken from them goes out in
// text frames.  Raw bytes that are not UTF-8 refuse the token; escapes
// that would decode to a lone UTF-16 surrogate do too (the parser refuses
// them).
static void test_claims_utf8(void **)
{
	std::string exp = "\"exp\":" + std::to_string(kNow + 60);
	assert_int_equal(verify(sign(kHs256, "{\"sub\":\"caf\xc3\xa9\"," + exp + "}")), Err::None);
	for (const char *bad : {"\xff", "\xc3", "\xc0\xaf", "\xe0\x80\xaf", "\xed\xa0\x80",
				"\xf4\x90\x80\x80"}) {
		assert_int_equal(verify(sign(kHs256, "{\"sub\":\"u" + std::string(bad) + "\"," + exp + "}")),
				 Err::InvalidToken);
		// in a hint as well: the whole token is refused
		assert_int_equal(verify(sign(kHs256, claims("\"name\":\"n" + std::string(bad) + "\""))),
				 Err::InvalidToken);
	}
	assert_int_equal(verify(sign(kHs256, claims(R"("name":"\ud800")"))), Err::InvalidToken);
	// A hint keeps a NUL (it is text, not an id).
	auto r = verify_jwt(sign(kHs256, claims(R"("name":"a\u0000b")")), params(), kNow);
	assert_true(r.ok());
	assert_true(*r->hints.display_name == std::string("a\0b", 3));
}

static void test_profile_hints(void **)
{
	auto r = verify_jwt(sign(kHs256, claims(R"("email":"a@b.c","preferred_username":"pref","name":"Plain",)"
						R"("user_metadata":{"username":"meta","full_name":"Full","avatar_url":"https://x/a.png"})")),
			    params(), kNow);
	assert_true(r.ok());
	assert_str_eq(*r->hints.username, "meta");
	assert_str_eq(*r->hints.display_name, "Full");
	assert_str_eq(*r->hints.email, "a@b.c");
	assert_str_eq(*r->hints.avatar_url, "https://x/a.png");
	r = verify_jwt(sign(kHs256, claims(R"("preferred_username":"pref","name":"Plain","user_metadata":{"display_name":"Disp","full_name":"Full"})")),
		       params(), kNow);
	assert_str_eq(*r->hints.username, "pref");
	assert_str_eq(*r->hints.display_name, "Disp");
	r = verify_jwt(sign(kHs256, claims(R"("name":"Plain","user_metadata":{"username":7})")), params(), kNow);
	assert_false(r->hints.username.has_value());
	assert_str_eq(*r->hints.display_name, "Plain");
	assert_false(r->hints.email.has_value());
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid),        cmocka_unit_test(test_malformed),
		cmocka_unit_test(test_algorithms),   cmocka_unit_test(test_signature),
		cmocka_unit_test(test_expiry_and_leeway), cmocka_unit_test(test_audience_issuer),
		cmocka_unit_test(test_sub),          cmocka_unit_test(test_profile_hints),
		cmocka_unit_test(test_claims_utf8),
	};
	return cmocka_run_group_tests_name("auth", tests, nullptr, nullptr);
}
