// Fuzz target: the JWT verifier.
//
// The first byte picks the mode and the verifier's settings; the rest is
// either
//   - (even first byte) a token, verified with a key that signed none of
//     them: it must never be accepted, whatever its header or claims; or
//   - (odd first byte) a header JSON text, the byte 0x1e, and a claims JSON
//     text, which the harness encodes and signs with the verifier's key,
//     so that the claim checks behind the signature are reached.  When the
//     verifier accepts one, its claims must keep their documented bounds,
//     and the same token with one bit of its signature changed must be
//     refused.
#include <openssl/hmac.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "fuzz.hpp"
#include "qryptchat/auth.hpp"
#include "qryptchat/log.hpp"

using namespace qc;

namespace {

const char kKey[] = "fuzz-jwt-secret-0123456789abcdef-0123";
const char kOtherKey[] = "fuzz-jwt-unused-0123456789abcdef-0123";
constexpr int64_t kNow = 1800000000;
constexpr size_t kMaxHint = 512;

std::string sign(const std::string &input)
{
	unsigned char mac[32];
	unsigned int len = 0;
	if (!HMAC(EVP_sha256(), kKey, sizeof kKey - 1, reinterpret_cast<const unsigned char *>(input.data()),
		  input.size(), mac, &len) ||
	    len != 32)
		abort();
	return base64url_encode(std::string_view(reinterpret_cast<char *>(mac), 32));
}

void check_hint(const std::optional<std::string> &h)
{
	if (h && (h->empty() || h->size() > kMaxHint))
		abort();
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	uint8_t mode = data[0];
	std::string_view rest(reinterpret_cast<const char *>(data) + 1, size - 1);
	AuthParams p;
	p.leeway_s = (mode & 2) ? 0 : 30;
	p.require_exp = (mode & 4) == 0;
	if (mode & 8)
		p.audience = "qryptchat";
	if (mode & 16)
		p.issuer = "https://issuer.example";

	if ((mode & 1) == 0) {
		p.secret = kOtherKey;
		auto r = verify_jwt(rest, p, kNow);
		if (r.ok())
			abort(); // accepted a token this key never signed
		if (r.error().code != Err::InvalidToken && r.error().code != Err::TokenExpired)
			abort();
		return 0;
	}

	p.secret = kKey;
	size_t sep = rest.find('\x1e');
	if (sep == std::string_view::npos)
		return 0;
	std::string input = base64url_encode(rest.substr(0, sep)) + "." + base64url_encode(rest.substr(sep + 1));
	std::string token = input + "." + sign(input);
	auto r = verify_jwt(token, p, kNow);
	if (!r.ok()) {
		if (r.error().code != Err::InvalidToken && r.error().code != Err::TokenExpired)
			abort();
		return 0;
	}
	const Claims &c = *r;
	if (c.sub.empty() || c.sub.size() > kMaxSubBytes)
		abort();
	if (p.require_exp && !c.exp)
		abort();
	if (c.exp && kNow >= *c.exp + p.leeway_s)
		abort();
	check_hint(c.hints.username);
	check_hint(c.hints.display_name);
	check_hint(c.hints.email);
	check_hint(c.hints.avatar_url);

	// A changed character in the signature must be refused (the 43rd
	// carries two bits of the MAC and four unused ones, so it is skipped).
	std::string tampered = token;
	size_t at = input.size() + 1 + (static_cast<size_t>(rest.size()) % 42);
	tampered[at] = tampered[at] == 'A' ? 'B' : 'A';
	if (verify_jwt(tampered, p, kNow).ok())
		abort();
	return 0;
}
