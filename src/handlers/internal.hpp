// Shared pieces of the request handlers: the request as handlers see it,
// payload field readers with the protocol's rules, and the JSON renderings
// of users, conversations and messages.
#pragma once

#include <optional>
#include <string>

#include "qryptchat/handlers.hpp"
#include "qryptchat/json.hpp"

namespace qc {

// One request being handled.
struct Request {
	const Envelope &env;
	JsonRef payload;          // the payload object (may be absent = {})
	std::string reply_id;     // requestId for the reply
};

using Handler = Status (*)(Ctx &ctx, Caller &c, const Request &r);

Status handle_auth(Ctx &ctx, Caller &c, const Request &r);
Status handle_ping(Ctx &ctx, Caller &c, const Request &r);
Status handle_load_conversations(Ctx &ctx, Caller &c, const Request &r);
Status handle_create_conversation(Ctx &ctx, Caller &c, const Request &r);
Status handle_join_conversation(Ctx &ctx, Caller &c, const Request &r);
Status handle_leave_conversation(Ctx &ctx, Caller &c, const Request &r);
Status handle_send_message(Ctx &ctx, Caller &c, const Request &r);
Status handle_load_messages(Ctx &ctx, Caller &c, const Request &r);
Status handle_load_more_messages(Ctx &ctx, Caller &c, const Request &r);
Status handle_typing_start(Ctx &ctx, Caller &c, const Request &r);
Status handle_typing_stop(Ctx &ctx, Caller &c, const Request &r);

// Ids (of conversations, messages and users) are non-empty strings that
// hold no NUL: the server makes no id with one, so such a value is refused
// (INVALID_DATA), never cut (PROTOCOL.md §12).
inline bool is_id(JsonRef j)
{
	return j.is_string() && !j.str().empty() && j.str().find('\0') == std::string_view::npos;
}

// The conversationId rule shared by every conversation request: an id
// (INVALID_DATA otherwise), naming a conversation of which the caller is a
// current participant (ACCESS_DENIED otherwise).
Result<std::string> conversation_access(Ctx &ctx, const Caller &c, const Request &r);

// Room membership of a socket, telling the broker when the room gets its
// first socket of this process or loses its last.
void join_room(Ctx &ctx, SessionId s, const std::string &room);
void leave_room(Ctx &ctx, SessionId s, const std::string &room);

// Counts store failures; passes the error through.
Error store_error(Ctx &ctx, const Error &e);

// Pushes "typing stopped" for an ended typing state to its room.
void push_typing_ended(Ctx &ctx, const TypingEnded &t);
// Presence pushes for a user who came online / went offline.
void push_presence(Ctx &ctx, const std::string &user, bool online);

// Renderings (PROTOCOL.md §4–5).
void write_user(JsonWriter &w, const User &u);
void write_conversation(JsonWriter &w, const ConversationView &v, const std::string &viewer);
void write_message(JsonWriter &w, const MessageRow &m, bool with_reply_to);

} // namespace qc
