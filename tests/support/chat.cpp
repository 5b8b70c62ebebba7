// Protocol helpers for the integration tests.
//
// A failing helper reports through cmocka's fail_msg(), which longjmps out
// of the test.  To leak nothing on that path, each helper does its work in a
// scope that formats the message into a static buffer and ends (running its
// destructors) before fail_msg() is called.
#include "chat.hpp"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
extern "C" { // cmocka 1.1.5 has no C++ guards
#include <cmocka.h>
}

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "jwt.hpp"

namespace qc::test {

namespace {

// Longest excerpt of a frame or JSON document quoted in a failure message.
constexpr int kQuoteMax = 4000;

char g_failure[16384];

// Formats the failure message into g_failure.
__attribute__((format(printf, 1, 2))) void set_failure(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	std::vsnprintf(g_failure, sizeof g_failure, fmt, ap);
	va_end(ap);
}

// Compact text of `j` for messages ("(null)" for no document).
std::string print_json(const cJSON *j)
{
	if (!j)
		return "(null)";
	char *text = cJSON_PrintUnformatted(j);
	if (!text)
		return "(unprintable)";
	std::string out(text);
	cJSON_free(text);
	return out;
}

const char *kind_name(WsEvent::Kind kind)
{
	switch (kind) {
	case WsEvent::Text:
		return "text frame";
	case WsEvent::Binary:
		return "binary frame";
	case WsEvent::Close:
		return "close frame";
	case WsEvent::Timeout:
		return "timeout";
	case WsEvent::Eof:
		return "EOF";
	case WsEvent::Error:
		return "client error";
	}
	return "?";
}

// A one-line description of an event for failure messages.
std::string describe(const WsEvent &ev)
{
	std::string s = kind_name(ev.kind);
	switch (ev.kind) {
	case WsEvent::Text:
		s += ": " + ev.data.substr(0, kQuoteMax);
		break;
	case WsEvent::Binary:
		s += " of " + std::to_string(ev.data.size()) + " bytes";
		break;
	case WsEvent::Close:
		s += " " + std::to_string(ev.close_code) + " \"" + ev.data + "\"";
		break;
	case WsEvent::Error:
		s += ": " + ev.data;
		break;
	case WsEvent::Timeout:
	case WsEvent::Eof:
		break;
	}
	return s;
}

// The string member `name` of object `j`, or nullptr.
const char *string_member(const cJSON *j, const char *name)
{
	const cJSON *m = cJSON_GetObjectItemCaseSensitive(j, name);
	return cJSON_IsString(m) ? m->valuestring : nullptr;
}

// expect_frame without the failure: fills g_failure and returns false.
bool try_expect_frame(WsClient &c, const std::string &type, int timeout_ms, Json &out)
{
	const char *want = type.empty() ? "a frame" : type.c_str();
	WsEvent ev = c.recv(timeout_ms);
	if (ev.kind == WsEvent::Timeout) {
		set_failure("expected %s, got nothing within %d ms", want, timeout_ms);
		return false;
	}
	if (ev.kind != WsEvent::Text) {
		set_failure("expected %s, got %s", want, describe(ev).c_str());
		return false;
	}
	out = parse_json(ev.data);
	if (!out) {
		set_failure("expected %s, got a text frame that is not JSON: %.*s", want, kQuoteMax,
			    ev.data.c_str());
		return false;
	}
	if (!type.empty()) {
		const char *got = string_member(out.get(), "type");
		if (!got || type != got) {
			set_failure("expected a frame of type \"%s\", got: %.*s", want, kQuoteMax,
				    ev.data.c_str());
			out.reset();
			return false;
		}
	}
	return true;
}

// Resolves `path` or fills g_failure; `what` names the expected type.
const cJSON *resolve(const cJSON *j, const std::string &path, const char *what,
		     cJSON_bool (*is)(const cJSON *))
{
	const cJSON *node = jget(j, path);
	if (node && is(node))
		return node;
	set_failure("JSON path \"%s\" is %s, expected %s, in: %.*s", path.c_str(),
		    node ? "of another type" : "absent", what, kQuoteMax, print_json(j).c_str());
	return nullptr;
}

cJSON_bool is_array_or_object(const cJSON *j)
{
	return cJSON_IsArray(j) || cJSON_IsObject(j);
}

} // namespace

Json parse_json(const std::string &text)
{
	// The whole text must be one JSON value (trailing white space allowed);
	// an embedded NUL makes it not JSON.
	if (std::strlen(text.c_str()) != text.size())
		return nullptr;
	return Json(cJSON_ParseWithOpts(text.c_str(), nullptr, 1));
}

bool send_request(WsClient &c, const std::string &type, const std::string &payload_json,
		  const std::string &request_id)
{
	std::string text = "{\"type\":" + jquote(type) + ",\"payload\":" + payload_json;
	if (!request_id.empty())
		text += ",\"requestId\":" + jquote(request_id);
	text += "}";
	return c.send_text(text);
}

Json expect_frame(WsClient &c, const std::string &type, int timeout_ms)
{
	Json out;
	if (!try_expect_frame(c, type, timeout_ms, out)) {
		out.reset();
		fail_msg("%s", g_failure);
	}
	return out;
}

Json expect_error(WsClient &c, const std::string &code, int timeout_ms)
{
	Json out;
	bool ok = try_expect_frame(c, "error", timeout_ms, out);
	if (ok) {
		const cJSON *got = jget(out.get(), "payload.code");
		ok = cJSON_IsString(got) && code == got->valuestring;
		if (!ok)
			set_failure("expected error \"%s\", got: %.*s", code.c_str(), kQuoteMax,
				    print_json(out.get()).c_str());
	}
	if (!ok) {
		out.reset();
		fail_msg("%s", g_failure);
	}
	return out;
}

void expect_close(WsClient &c, int code, int timeout_ms)
{
	bool ok;
	{
		WsEvent ev = c.recv(timeout_ms);
		ok = ev.kind == WsEvent::Eof ||
		     (ev.kind == WsEvent::Close && (code == 0 || ev.close_code == code));
		if (!ok)
			set_failure("expected close %d (or EOF) within %d ms, got %s", code,
				    timeout_ms, describe(ev).c_str());
	}
	if (!ok)
		fail_msg("%s", g_failure);
}

void expect_quiet(WsClient &c)
{
	static unsigned long counter;
	bool ok;
	{
		std::string rid = "quiet-" + std::to_string(++counter);
		ok = send_request(c, "ping", "{}", rid);
		if (!ok) {
			set_failure("expect_quiet: cannot send ping %s", rid.c_str());
		} else {
			WsEvent ev = c.recv(5000);
			Json j = ev.kind == WsEvent::Text ? parse_json(ev.data) : nullptr;
			const char *type = string_member(j.get(), "type");
			const char *got_rid = string_member(j.get(), "requestId");
			ok = type && got_rid && std::strcmp(type, "pong") == 0 && rid == got_rid;
			if (!ok)
				set_failure("expect_quiet: expected the pong for %s, got %s",
					    rid.c_str(), describe(ev).c_str());
		}
	}
	if (!ok)
		fail_msg("%s", g_failure);
}

std::unique_ptr<WsClient> connect_as(int port, const std::string &sub,
				     const std::string &extra_claims)
{
	std::unique_ptr<WsClient> c;
	bool ok;
	{
		HttpResponse answer;
		std::string token = token_for(sub, 3600, extra_claims);
		c = WsClient::connect(port, "/ws", {}, &answer);
		ok = c != nullptr;
		if (!ok) {
			set_failure("handshake on port %d failed: HTTP status %d, body: %.*s", port,
				    answer.status, kQuoteMax, answer.body.c_str());
		} else if (!send_request(*c, "auth", "{\"token\":" + jquote(token) + "}")) {
			ok = false;
			set_failure("cannot send auth");
		} else {
			Json j;
			ok = try_expect_frame(*c, "auth_success", 5000, j);
		}
	}
	if (!ok) {
		c.reset();
		fail_msg("connect_as(%s): %s", sub.c_str(), g_failure);
	}
	return c;
}

const cJSON *jget(const cJSON *j, const std::string &path)
{
	// Segments are separated by '.'; on an array a segment of digits is an
	// index.  The empty path is `j` itself.
	const cJSON *node = j;
	size_t pos = 0;
	while (node && pos < path.size()) {
		size_t dot = path.find('.', pos);
		if (dot == std::string::npos)
			dot = path.size();
		std::string seg = path.substr(pos, dot - pos);
		pos = dot + 1;
		if (seg.empty())
			return nullptr;
		if (cJSON_IsArray(node)) {
			if (seg.find_first_not_of("0123456789") != std::string::npos ||
			    seg.size() > 9)
				return nullptr;
			node = cJSON_GetArrayItem(node, std::atoi(seg.c_str()));
		} else if (cJSON_IsObject(node)) {
			node = cJSON_GetObjectItemCaseSensitive(node, seg.c_str());
		} else {
			return nullptr;
		}
		if (dot == path.size())
			break;
		if (pos == path.size()) // trailing '.'
			return nullptr;
	}
	return node;
}

std::string jstr(const cJSON *j, const std::string &path)
{
	const cJSON *node = resolve(j, path, "a string", cJSON_IsString);
	if (!node)
		fail_msg("%s", g_failure);
	return node ? node->valuestring : "";
}

double jnum(const cJSON *j, const std::string &path)
{
	const cJSON *node = resolve(j, path, "a number", cJSON_IsNumber);
	if (!node)
		fail_msg("%s", g_failure);
	return node ? node->valuedouble : 0.0;
}

bool jbool(const cJSON *j, const std::string &path)
{
	const cJSON *node = resolve(j, path, "a boolean", cJSON_IsBool);
	if (!node)
		fail_msg("%s", g_failure);
	return node ? cJSON_IsTrue(node) != 0 : false;
}

bool jnull(const cJSON *j, const std::string &path)
{
	return cJSON_IsNull(jget(j, path)) != 0;
}

int jsize(const cJSON *j, const std::string &path)
{
	const cJSON *node = resolve(j, path, "an array or object", is_array_or_object);
	if (!node)
		fail_msg("%s", g_failure);
	return node ? cJSON_GetArraySize(node) : 0;
}

std::string jquote(const std::string &text)
{
	static const char kHex[] = "0123456789abcdef";
	std::string out;
	out.reserve(text.size() + 2);
	out.push_back('"');
	for (char ch : text) {
		unsigned char c = static_cast<unsigned char>(ch);
		switch (c) {
		case '"':
			out += "\\\"";
			break;
		case '\\':
			out += "\\\\";
			break;
		case '\n':
			out += "\\n";
			break;
		case '\r':
			out += "\\r";
			break;
		case '\t':
			out += "\\t";
			break;
		case '\b':
			out += "\\b";
			break;
		case '\f':
			out += "\\f";
			break;
		default:
			if (c < 0x20) {
				out += "\\u00";
				out.push_back(kHex[c >> 4]);
				out.push_back(kHex[c & 15]);
			} else {
				out.push_back(ch); // UTF-8 and everything else verbatim
			}
		}
	}
	out.push_back('"');
	return out;
}

} // namespace qc::test
