// The JSON shapes of users, conversations and messages (PROTOCOL.md §4–5).
#include "internal.hpp"

namespace qc {

namespace {

void write_time(JsonWriter &w, std::string_view key, const std::optional<int64_t> &ms)
{
	w.key(key);
	if (ms)
		w.value(iso8601_ms(*ms));
	else
		w.null();
}

} // namespace

void write_user(JsonWriter &w, const User &u)
{
	w.begin_object()
		.field("id", u.id)
		.field("username", u.username)
		.field("display_name", u.display_name)
		.field("email", u.email)
		.field("avatar_url", u.avatar_url)
		.end_object();
}

void write_conversation(JsonWriter &w, const ConversationView &v, const std::string &viewer)
{
	// A direct conversation is named (and pictured) after the other side.
	std::optional<std::string> name = v.name, avatar = v.avatar_url;
	if (v.type == "direct") {
		for (const auto &p : v.participants)
			if (p.user_id != viewer) {
				name = p.display_name;
				avatar = p.avatar_url;
			}
	}
	w.begin_object();
	w.field("id", v.id).field("conversation_id", v.id);
	w.field("type", v.type).field("conversation_type", v.type);
	w.field("name", name).field("conversation_name", name);
	w.field("avatar_url", avatar).field("conversation_avatar_url", avatar);
	w.field("created_by", v.created_by);
	w.field("created_at", iso8601_ms(v.created_at));
	w.field("updated_at", iso8601_ms(v.updated_at));
	w.key("participants").begin_array();
	for (const auto &p : v.participants)
		w.begin_object()
			.field("id", p.user_id)
			.field("username", p.username)
			.field("display_name", p.display_name)
			.field("avatar_url", p.avatar_url)
			.field("role", p.role)
			.end_object();
	w.end_array();
	w.field("participant_count", static_cast<int64_t>(v.participants.size()));
	if (v.latest) {
		const auto &l = *v.latest;
		w.field("latest_message_id", l.id);
		w.field("latest_message_content", l.content);
		w.field("latest_message_sender_id", l.sender_id);
		w.field("latest_message_sender_username", l.sender_username);
		w.field("latest_message_created_at", iso8601_ms(l.created_at));
		w.field("last_message_at", iso8601_ms(l.created_at));
	} else {
		for (const char *k : {"latest_message_id", "latest_message_content",
				      "latest_message_sender_id", "latest_message_sender_username",
				      "latest_message_created_at", "last_message_at"})
			w.field_null(k);
	}
	w.field("unread_count", v.unread_count);
	w.end_object();
}

void write_message(JsonWriter &w, const MessageRow &m, bool with_reply_to)
{
	w.begin_object();
	w.field("id", m.id);
	w.field("conversation_id", m.conversation_id);
	w.field("seq", m.seq);
	w.field("sender_id", m.sender_id);
	w.field("message_type", m.message_type);
	w.field("encrypted_content", m.content);
	w.field("reply_to_id", m.reply_to_id);
	w.key("metadata");
	if (m.metadata)
		w.raw(*m.metadata);
	else
		w.null();
	w.field("client_message_id", m.client_message_id);
	w.field("created_at", iso8601_ms(m.created_at));
	write_time(w, "edited_at", m.edited_at);
	write_time(w, "deleted_at", m.deleted_at);
	w.key("sender")
		.begin_object()
		.field("id", m.sender.id)
		.field("username", m.sender.username)
		.field("display_name", m.sender.display_name)
		.field("avatar_url", m.sender.avatar_url)
		.end_object();
	if (with_reply_to && m.reply_to)
		w.key("reply_to")
			.begin_object()
			.field("id", m.reply_to->id)
			.field("sender_id", m.reply_to->sender_id)
			.field("encrypted_content", m.reply_to->content)
			.end_object();
	w.end_object();
}

} // namespace qc
