#include "qryptchat/auth.hpp"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <cmath>

#include "qryptchat/json.hpp"

namespace qc {

namespace {

// Longest profile hint kept; longer ones are ignored as if absent.
constexpr size_t kMaxHintBytes = 512;

Error invalid(const char *why) { return make_error(Err::InvalidToken, std::string("Invalid token: ") + why); }

bool hmac_sha256(std::string_view key, std::string_view data, unsigned char out[32])
{
	unsigned int len = 0;
	return HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
		    reinterpret_cast<const unsigned char *>(data.data()), data.size(), out,
		    &len) != nullptr &&
	       len == 32;
}

// A NumericDate: a JSON number (fractions dropped).
bool numeric_date(JsonRef j, std::optional<int64_t> &out)
{
	if (!j.present())
		return true;
	if (!j.is_number() || !std::isfinite(j.num()) || j.num() > 9.0e15 || j.num() < -9.0e15)
		return false;
	out = static_cast<int64_t>(std::floor(j.num()));
	return true;
}

std::optional<std::string> hint(JsonRef j)
{
	if (!j.is_string() || j.str().empty() || j.str().size() > kMaxHintBytes)
		return std::nullopt;
	return std::string(j.str());
}

} // namespace

Result<Claims> verify_jwt(std::string_view token, const AuthParams &params, int64_t now_s)
{
	if (token.empty() || token.size() > kMaxTokenBytes)
		return invalid("malformed");
	size_t d1 = token.find('.');
	if (d1 == std::string_view::npos)
		return invalid("malformed");
	size_t d2 = token.find('.', d1 + 1);
	if (d2 == std::string_view::npos || token.find('.', d2 + 1) != std::string_view::npos)
		return invalid("malformed");

	auto header_raw = base64url_decode(token.substr(0, d1));
	auto payload_raw = base64url_decode(token.substr(d1 + 1, d2 - d1 - 1));
	auto sig = base64url_decode(token.substr(d2 + 1));
	if (!header_raw || !payload_raw || !sig)
		return invalid("malformed");

	JsonDoc header = json_parse(*header_raw);
	JsonRef h = json_root(header);
	if (!h.is_object())
		return invalid("malformed");
	JsonRef alg = h.get("alg");
	if (!alg.is_string() || alg.str() != "HS256")
		return invalid("unsupported algorithm");
	if (h.get("crit").present())
		return invalid("unsupported critical header");

	if (sig->size() != 32)
		return invalid("bad signature");
	unsigned char mac[32];
	if (!hmac_sha256(params.secret, token.substr(0, d2), mac))
		return make_error(Err::ServerError, "Token verification failed");
	if (CRYPTO_memcmp(mac, sig->data(), 32) != 0)
		return invalid("bad signature");

	// The claims are UTF-8 JSON (RFC 7519); the strings taken from them
	// go out in text frames, which must be valid UTF-8.
	if (!utf8_valid(*payload_raw))
		return invalid("malformed claims");
	JsonDoc payload = json_parse(*payload_raw);
	JsonRef p = json_root(payload);
	if (!p.is_object())
		return invalid("malformed claims");

	Claims c;
	JsonRef sub = p.get("sub");
	if (!sub.is_string() || sub.str().empty())
		return invalid("missing sub");
	if (sub.str().size() > kMaxSubBytes)
		return invalid("sub too long");
	// The sub is the user id, and ids hold no NUL (PROTOCOL.md §12).
	if (sub.str().find('\0') != std::string_view::npos)
		return invalid("sub holds a NUL");
	c.sub = std::string(sub.str());

	if (!numeric_date(p.get("exp"), c.exp) || !numeric_date(p.get("nbf"), c.nbf) ||
	    !numeric_date(p.get("iat"), c.iat))
		return invalid("malformed time claim");
	if (!c.exp && params.require_exp)
		return invalid("missing exp");
	if (c.exp && now_s >= *c.exp + params.leeway_s)
		return make_error(Err::TokenExpired, "Token expired");
	if (c.nbf && now_s + params.leeway_s < *c.nbf)
		return make_error(Err::TokenExpired, "Token not yet valid");
	if (c.iat && *c.iat > now_s + params.leeway_s)
		return invalid("issued in the future");

	if (!params.audience.empty()) {
		JsonRef aud = p.get("aud");
		bool match = false;
		if (aud.is_string())
			match = aud.str() == params.audience;
		else if (aud.is_array())
			for (auto a : aud.items())
				if (a.is_string() && a.str() == params.audience)
					match = true;
		if (!match)
			return invalid("audience mismatch");
	}
	if (!params.issuer.empty()) {
		JsonRef iss = p.get("iss");
		if (!iss.is_string() || iss.str() != params.issuer)
			return invalid("issuer mismatch");
	}

	JsonRef meta = p.get("user_metadata");
	c.hints.username = hint(meta.get("username"));
	if (!c.hints.username)
		c.hints.username = hint(p.get("preferred_username"));
	c.hints.display_name = hint(meta.get("display_name"));
	if (!c.hints.display_name)
		c.hints.display_name = hint(meta.get("full_name"));
	if (!c.hints.display_name)
		c.hints.display_name = hint(p.get("name"));
	c.hints.email = hint(p.get("email"));
	c.hints.avatar_url = hint(meta.get("avatar_url"));
	return c;
}

std::string sign_jwt_hs256(std::string_view claims_json, std::string_view secret)
{
	std::string input = base64url_encode(R"({"alg":"HS256","typ":"JWT"})") + "." +
			    base64url_encode(claims_json);
	unsigned char mac[32];
	if (!hmac_sha256(secret, input, mac))
		return "";
	return input + "." + base64url_encode(std::string_view(reinterpret_cast<char *>(mac), 32));
}

std::string tls_pair_check(const std::string &cert_pem, const std::string &key_pem)
{
	struct BioFree {
		void operator()(BIO *b) const noexcept { BIO_free(b); }
	};
	struct X509Free {
		void operator()(X509 *x) const noexcept { X509_free(x); }
	};
	struct KeyFree {
		void operator()(EVP_PKEY *k) const noexcept { EVP_PKEY_free(k); }
	};
	std::unique_ptr<BIO, BioFree> cb(BIO_new_mem_buf(cert_pem.data(), static_cast<int>(cert_pem.size())));
	std::unique_ptr<BIO, BioFree> kb(BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size())));
	if (!cb || !kb)
		return "out of memory";
	std::unique_ptr<X509, X509Free> cert(PEM_read_bio_X509(cb.get(), nullptr, nullptr, nullptr));
	if (!cert) {
		ERR_clear_error();
		return "the certificate is not a PEM certificate";
	}
	std::unique_ptr<EVP_PKEY, KeyFree> key(PEM_read_bio_PrivateKey(kb.get(), nullptr, nullptr, nullptr));
	if (!key) {
		ERR_clear_error();
		return "the key is not an unencrypted PEM private key";
	}
	if (X509_check_private_key(cert.get(), key.get()) != 1) {
		ERR_clear_error();
		return "the key does not belong to the certificate";
	}
	return "";
}

} // namespace qc
