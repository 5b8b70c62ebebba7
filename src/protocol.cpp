#include "qryptchat/protocol.hpp"

#include <cstring>

namespace qc {

namespace {

struct Name {
	const char *name;
	ReqType type;
};
const Name kNames[] = {
	{"auth", ReqType::Auth},
	{"ping", ReqType::Ping},
	{"load_conversations", ReqType::LoadConversations},
	{"create_conversation", ReqType::CreateConversation},
	{"join_conversation", ReqType::JoinConversation},
	{"leave_conversation", ReqType::LeaveConversation},
	{"send_message", ReqType::SendMessage},
	{"load_messages", ReqType::LoadMessages},
	{"load_more_messages", ReqType::LoadMoreMessages},
	{"typing_start", ReqType::TypingStart},
	{"typing_stop", ReqType::TypingStop},
};

} // namespace

ReqType req_type_from(std::string_view type)
{
	for (const auto &n : kNames)
		if (type == n.name)
			return n.type;
	return ReqType::Unknown;
}

const char *req_type_name(ReqType t)
{
	for (const auto &n : kNames)
		if (n.type == t)
			return n.name;
	return "unknown";
}

Envelope parse_envelope(std::string_view text)
{
	Envelope env;
	env.doc = json_parse(text);
	JsonRef root = json_root(env.doc);
	if (!root.is_object()) {
		env.error = make_error(Err::InvalidMessage, "Invalid message format");
		return env;
	}
	JsonRef rid = root.get("requestId");
	if (rid.is_string())
		env.request_id = std::string(rid.str());

	JsonRef type = root.get("type");
	if (!type.is_string()) {
		env.error = make_error(Err::InvalidMessage, "Invalid message format: type must be a string");
		return env;
	}
	env.type = std::string(type.str());

	JsonRef payload = root.get("payload");
	if (payload.present() && !payload.is_null() && !payload.is_object()) {
		env.error = make_error(Err::InvalidMessage, "Invalid message format: payload must be an object");
		return env;
	}
	if (payload.is_object())
		env.payload = payload;

	env.kind = req_type_from(env.type);
	if (env.kind == ReqType::Unknown)
		env.error = make_error(Err::UnknownMessageType,
				       "Unknown message type: " + escape_text(env.type, 64));
	return env;
}

std::string reply_request_id(const std::optional<std::string> &request_id)
{
	if (request_id && !request_id->empty())
		return *request_id;
	return uuid_v4();
}

FramePtr build_error(const Error &e, const std::optional<std::string> &request_id)
{
	bool has = request_id && !request_id->empty();
	return build_frame("error", reply_request_id(request_id), [&](JsonWriter &w) {
		w.begin_object().field("error", e.message).field("code", err_code(e.code));
		if (has)
			w.field("requestId", *request_id);
		else
			w.field_null("requestId");
		w.end_object();
	});
}

size_t ws_text_header(size_t payload_len, unsigned char out[kMaxFrameHeader])
{
	out[0] = 0x81; // FIN, opcode 1 (text)
	if (payload_len < 126) {
		out[1] = static_cast<unsigned char>(payload_len);
		return 2;
	}
	if (payload_len <= 0xffff) {
		out[1] = 126;
		out[2] = static_cast<unsigned char>(payload_len >> 8);
		out[3] = static_cast<unsigned char>(payload_len);
		return 4;
	}
	out[1] = 127;
	uint64_t n = payload_len;
	for (int i = 9; i >= 2; i--, n >>= 8)
		out[i] = static_cast<unsigned char>(n);
	return 10;
}

} // namespace qc
