// auth: verifies an HS256 JSON Web Token and extracts its claims.
//
// The algorithm is pinned: only {"alg":"HS256"} is accepted, whatever else
// the header says; the signature is compared in constant time.  Everything
// a token carries is untrusted until verify_jwt() returns a value.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "qryptchat/util.hpp"

namespace qc {

// Longest token accepted; anything longer is INVALID_TOKEN without work.
constexpr size_t kMaxTokenBytes = 8192;
// Longest `sub` (the user id on the wire).
constexpr size_t kMaxSubBytes = 128;

// What the verifier needs from the configuration.
struct AuthParams {
	std::string secret;        // HMAC key, ≥ 32 bytes (checked at load)
	int64_t leeway_s = 30;     // allowed clock skew for exp, nbf, iat
	std::string audience;      // "" = aud not checked
	std::string issuer;        // "" = iss not checked
	bool require_exp = true;   // no exp → INVALID_TOKEN
};

// Profile fields a token may suggest; absent ones keep the stored values.
struct ProfileHints {
	std::optional<std::string> username;
	std::optional<std::string> display_name;
	std::optional<std::string> email;
	std::optional<std::string> avatar_url;
};

struct Claims {
	std::string sub;               // the user id
	std::optional<int64_t> exp;    // seconds since the epoch
	std::optional<int64_t> nbf;
	std::optional<int64_t> iat;
	ProfileHints hints;
};

// Verifies `token` at time `now_s` (seconds since the epoch).  Errors are
// INVALID_TOKEN (malformed, wrong alg, bad signature, bad aud/iss, no sub,
// missing exp, iat in the future) or TOKEN_EXPIRED (exp past, nbf future),
// each with a short message that never repeats the token.
Result<Claims> verify_jwt(std::string_view token, const AuthParams &params, int64_t now_s);

// Checks that a PEM certificate chain and a PEM private key (file
// contents) parse and belong together: "" when they do, else why not.
// For TLS, before the server hands them to libwebsockets.
std::string tls_pair_check(const std::string &cert_pem, const std::string &key_pem);

// Signs claims (a JSON object's text) as an HS256 JWT; for the `token`
// subcommand.
std::string sign_jwt_hs256(std::string_view claims_json, std::string_view secret);

} // namespace qc
