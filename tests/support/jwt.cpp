// JWT minting for the tests, from OpenSSL primitives only.
#include "jwt.hpp"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <ctime>

#include "spawn.hpp"

namespace qc::test {

namespace {

// A JSON string literal for `text`: '"' and '\' escaped, control
// characters as \u00XX.  Not chat.hpp's jquote, so that minting tokens needs
// neither cJSON nor the WebSocket client.
std::string json_string(const std::string &text)
{
	static const char kHex[] = "0123456789abcdef";
	std::string out = "\"";
	for (char ch : text) {
		unsigned char c = static_cast<unsigned char>(ch);
		if (c == '"' || c == '\\') {
			out.push_back('\\');
			out.push_back(ch);
		} else if (c < 0x20) {
			out += "\\u00";
			out.push_back(kHex[c >> 4]);
			out.push_back(kHex[c & 15]);
		} else {
			out.push_back(ch);
		}
	}
	out.push_back('"');
	return out;
}

} // namespace

std::string b64url(const std::string &bytes)
{
	static const char kAlphabet[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	std::string out;
	out.reserve((bytes.size() * 4 + 2) / 3);
	size_t i = 0;
	const size_t n = bytes.size();
	auto byte = [&bytes](size_t k) { return static_cast<unsigned char>(bytes[k]); };
	for (; i + 3 <= n; i += 3) {
		unsigned long v = (byte(i) << 16) | (byte(i + 1) << 8) | byte(i + 2);
		out.push_back(kAlphabet[(v >> 18) & 63]);
		out.push_back(kAlphabet[(v >> 12) & 63]);
		out.push_back(kAlphabet[(v >> 6) & 63]);
		out.push_back(kAlphabet[v & 63]);
	}
	if (n - i == 1) {
		unsigned long v = byte(i) << 16;
		out.push_back(kAlphabet[(v >> 18) & 63]);
		out.push_back(kAlphabet[(v >> 12) & 63]);
	} else if (n - i == 2) {
		unsigned long v = (byte(i) << 16) | (byte(i + 1) << 8);
		out.push_back(kAlphabet[(v >> 18) & 63]);
		out.push_back(kAlphabet[(v >> 12) & 63]);
		out.push_back(kAlphabet[(v >> 6) & 63]);
	}
	return out;
}

std::string sign_jwt(const std::string &header_json, const std::string &payload_json,
		     const std::string &secret)
{
	std::string input = b64url(header_json) + "." + b64url(payload_json);
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int mac_len = 0;
	// HMAC() only fails on allocation failure; the token then carries an
	// empty signature, which any verifier rejects.
	if (!HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
		  reinterpret_cast<const unsigned char *>(input.data()), input.size(), mac,
		  &mac_len))
		mac_len = 0;
	return input + "." + b64url(std::string(reinterpret_cast<const char *>(mac), mac_len));
}

std::string token_for(const std::string &sub, long ttl_s, const std::string &extra)
{
	long now = now_s();
	std::string payload = "{\"sub\":" + json_string(sub) + ",\"iat\":" + std::to_string(now) +
			      ",\"exp\":" + std::to_string(now + ttl_s);
	if (!extra.empty())
		payload += "," + extra;
	payload += "}";
	return sign_jwt("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", payload, kTestSecret);
}

long now_s()
{
	return static_cast<long>(std::time(nullptr));
}

} // namespace qc::test
