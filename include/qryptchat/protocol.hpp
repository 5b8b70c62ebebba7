// protocol: the wire format of PROTOCOL.md §2–3.  One inbound text frame →
// a parsed envelope (lenient, as QryptChat clients send it); replies and
// pushes → complete frames (strict: type, payload, requestId, timestamp).
//
// Field rules of individual requests live with their handlers; this module
// knows the envelope, the request names and the frame layout.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "qryptchat/json.hpp"
#include "qryptchat/util.hpp"

namespace qc {

// Bytes reserved in front of every outbound frame for the WebSocket
// header (the session module checks that this covers lws's LWS_PRE).
constexpr size_t kFrameHeadroom = 16;

// One serialised outbound message.  Built once and shared by every
// recipient; the headroom is scratch space for the writer, the payload
// bytes are never changed after build.
struct Frame {
	std::string buf; // kFrameHeadroom bytes, then the JSON text
	size_t size() const { return buf.size() - kFrameHeadroom; }
	const char *data() const { return buf.data() + kFrameHeadroom; }
	char *head() { return &buf[0]; }
};
using FramePtr = std::shared_ptr<Frame>;

// Requests this server handles.
enum class ReqType {
	Unknown = 0,
	Auth,
	Ping,
	LoadConversations,
	CreateConversation,
	JoinConversation,
	LeaveConversation,
	SendMessage,
	LoadMessages,
	LoadMoreMessages,
	TypingStart,
	TypingStop,
};
ReqType req_type_from(std::string_view type);
const char *req_type_name(ReqType t);

// A parsed inbound envelope.
struct Envelope {
	JsonDoc doc;                            // owns everything below
	std::string type;                       // as sent (may be "" on error)
	ReqType kind = ReqType::Unknown;
	std::optional<std::string> request_id;  // when the request had a string
	JsonRef payload;                        // an object, or absent (= {})
	std::optional<Error> error;             // INVALID_MESSAGE / UNKNOWN_MESSAGE_TYPE
};

// Parses one text frame.  Never fails outright: problems are reported in
// `error`, with `request_id` filled in when it could be read.
Envelope parse_envelope(std::string_view text);

// The requestId an answer carries: the request's when it is a non-empty
// string, else a fresh UUID v4.
std::string reply_request_id(const std::optional<std::string> &request_id);

// Builds a frame {"type","payload","requestId","timestamp"}; `payload` is
// called with a writer positioned where the payload value goes and must
// write exactly one value.  `payload_size` is a guess of its length.
template <typename F>
FramePtr build_frame(std::string_view type, std::string_view request_id, F &&payload,
		     size_t payload_size = 64)
{
	auto f = std::make_shared<Frame>();
	f->buf.reserve(kFrameHeadroom + 128 + payload_size);
	f->buf.assign(kFrameHeadroom, '\0');
	JsonWriter w(f->buf);
	w.begin_object().field("type", type).key("payload");
	payload(w);
	w.field("requestId", request_id).field("timestamp", iso8601_ms(now_ms())).end_object();
	return f;
}

// The error frame of PROTOCOL.md §3 for a request (request_id may be
// absent: payload.requestId is then null and the envelope's is fresh).
FramePtr build_error(const Error &e, const std::optional<std::string> &request_id);

// The header of an unmasked, final WebSocket text frame (RFC 6455 §5.2)
// carrying `payload_len` bytes: written to `out`, its length (2, 4 or 10)
// returned.  Server frames need no mask, so every recipient of a message
// gets the same header: frames can be framed here and written several to
// a system call.
constexpr size_t kMaxFrameHeader = 10;
size_t ws_text_header(size_t payload_len, unsigned char out[kMaxFrameHeader]);

} // namespace qc
