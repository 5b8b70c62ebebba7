// An independent JWT minter for the tests: written against OpenSSL and
// nothing of the server, so the server's verifier is never tested with its
// own code.
#pragma once

#include <string>

namespace qc::test {

// base64url without padding.
std::string b64url(const std::string &bytes);

// Signs `header_json` + "." + `payload_json` with HMAC-SHA256 under
// `secret` and returns the compact JWT.  Any header may be given (alg none,
// HS512...) to build hostile tokens; the signature is always HS256.
std::string sign_jwt(const std::string &header_json, const std::string &payload_json,
		     const std::string &secret);

// A well-formed token for `sub` signed with kTestSecret, valid from now
// for ttl_s seconds.  `extra` is inserted verbatim into the claims object
// (e.g. "\"email\":\"a@b.c\""); it must be empty or a list of members.
std::string token_for(const std::string &sub, long ttl_s = 3600, const std::string &extra = "");

// Seconds since the epoch.
long now_s();

} // namespace qc::test
