// Protocol-level helpers for integration tests: send a request envelope,
// wait for the next frame and assert its type, read JSON fields.
#pragma once

#include <cJSON.h>

#include <memory>
#include <string>

#include "wsclient.hpp"

namespace qc::test {

struct JsonDeleter {
	void operator()(cJSON *j) const { cJSON_Delete(j); }
};
using Json = std::unique_ptr<cJSON, JsonDeleter>;

// Parses text; nullptr when it is not JSON.
Json parse_json(const std::string &text);

// Sends {"type":type,"payload":<payload_json>,"requestId":request_id}
// (requestId omitted when empty).  payload_json is inserted verbatim.
bool send_request(WsClient &c, const std::string &type, const std::string &payload_json = "{}",
		  const std::string &request_id = "");

// Waits for the next text frame and parses it; fails the test (cmocka)
// on timeout, close, non-JSON, or when `type` is non-empty and differs.
Json expect_frame(WsClient &c, const std::string &type = "", int timeout_ms = 5000);

// Like expect_frame("error") and asserts payload.code == code.
Json expect_error(WsClient &c, const std::string &code, int timeout_ms = 5000);

// Asserts that the next event is a Close with this code (0: any code) or
// EOF within timeout_ms.
void expect_close(WsClient &c, int code, int timeout_ms = 5000);

// Asserts that nothing but the answer to a fresh `ping` is queued for this
// client: sends ping and expects pong as the very next frame.
void expect_quiet(WsClient &c);

// Connects to /ws and authenticates with the `auth` request for `sub`;
// fails the test unless auth_success arrives.
std::unique_ptr<WsClient> connect_as(int port, const std::string &sub, const std::string &extra_claims = "");

// Field access by dotted path ("payload.message.seq"); fails when absent
// or of the wrong type.
std::string jstr(const cJSON *j, const std::string &path);
double jnum(const cJSON *j, const std::string &path);
bool jbool(const cJSON *j, const std::string &path);
bool jnull(const cJSON *j, const std::string &path);   // true if present and null
const cJSON *jget(const cJSON *j, const std::string &path); // nullptr if absent
int jsize(const cJSON *j, const std::string &path);     // array/object size

// JSON string literal for text (quotes and escapes).
std::string jquote(const std::string &text);

} // namespace qc::test
