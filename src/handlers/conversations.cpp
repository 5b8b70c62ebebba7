// load_conversations, create_conversation, join_conversation,
// leave_conversation (PROTOCOL.md §5).
#include <algorithm>

#include "qryptchat/log.hpp"
#include "internal.hpp"

namespace qc {

namespace {

constexpr size_t kMaxNameChars = 100;

FramePtr conversation_frame(const char *type, const std::string &rid, const ConversationView &v,
			    const std::string &viewer)
{
	return build_frame(type, rid, [&](JsonWriter &w) {
		w.begin_object().key("conversation");
		write_conversation(w, v, viewer);
		w.end_object();
	});
}

// The validated content of a create_conversation payload.
struct CreateSpec {
	std::string type;                    // direct or group
	std::optional<std::string> name;
	std::vector<std::string> others;     // distinct, without the caller
};

Result<CreateSpec> parse_create(const Ctx &ctx, const Caller &c, JsonRef p)
{
	// Both shapes QryptChat used: participantIds/isGroup and
	// participant_ids/type.
	JsonRef ids = p.get("participantIds");
	const char *ids_name = "participantIds";
	if (!ids.present() || ids.is_null()) {
		ids = p.get("participant_ids");
		ids_name = "participant_ids";
	}
	if (!ids.is_array())
		return make_error(Err::InvalidData, "participantIds must be an array of user ids");
	CreateSpec spec;
	for (auto item : ids.items()) {
		if (!is_id(item))
			return make_error(Err::InvalidData,
					  std::string(ids_name) + " must contain only user id strings");
		std::string id(item.str());
		if (id != c.user_id && std::find(spec.others.begin(), spec.others.end(), id) == spec.others.end())
			spec.others.push_back(std::move(id));
	}

	JsonRef type = p.get("type");
	JsonRef is_group = p.get("isGroup");
	if (type.present() && !type.is_null() &&
	    (!type.is_string() || (type.str() != "direct" && type.str() != "group")))
		return make_error(Err::InvalidData, "type must be \"direct\" or \"group\"");
	if (is_group.present() && !is_group.is_null() && !is_group.is_bool())
		return make_error(Err::InvalidData, "isGroup must be a boolean");
	bool explicit_direct = type.is_string() && type.str() == "direct";
	bool explicit_group = (type.is_string() && type.str() == "group") || is_group.boolean();
	if (explicit_direct && explicit_group)
		return make_error(Err::InvalidData, "type \"direct\" contradicts isGroup");
	if (explicit_direct)
		spec.type = "direct";
	else if (explicit_group)
		spec.type = "group";
	else
		spec.type = spec.others.size() == 1 ? "direct" : "group";

	if (spec.type == "direct" && spec.others.size() != 1)
		return make_error(Err::InvalidData,
				  "a direct conversation needs exactly one other participant");
	if (spec.type == "group") {
		if (spec.others.empty())
			return make_error(Err::InvalidData,
					  "a group needs at least one other participant");
		if (static_cast<int64_t>(spec.others.size()) + 1 > ctx.cfg.max_group_size)
			return make_error(Err::InvalidData,
					  "a group has at most " + std::to_string(ctx.cfg.max_group_size) +
						  " participants");
	}

	JsonRef name = p.get("name");
	if (name.present() && !name.is_null()) {
		if (!name.is_string())
			return make_error(Err::InvalidData, "name must be a string");
		if (utf8_length(name.str()) > kMaxNameChars)
			return make_error(Err::InvalidData, "name is longer than 100 characters");
		if (!name.str().empty())
			spec.name = std::string(name.str());
	}
	return spec;
}

} // namespace

Status handle_load_conversations(Ctx &ctx, Caller &c, const Request &r)
{
	auto list = ctx.store.conversations(c.user_id);
	if (!list)
		return store_error(ctx, list.error());
	ctx.host.send(c.id, build_frame("conversations_loaded", r.reply_id, [&](JsonWriter &w) {
		w.begin_object().key("conversations").begin_array();
		for (const auto &v : *list)
			write_conversation(w, v, c.user_id);
		w.end_array().end_object();
	}));
	return ok_status();
}

Status handle_create_conversation(Ctx &ctx, Caller &c, const Request &r)
{
	auto spec = parse_create(ctx, c, r.payload);
	if (!spec)
		return spec.error();
	auto unknown = ctx.store.first_unknown_user(spec->others);
	if (!unknown)
		return store_error(ctx, unknown.error());
	if (*unknown)
		return make_error(Err::UserNotFound, "User not found: " + escape_text(**unknown, 128));

	NewConversation nc;
	nc.id = uuid_v7();
	nc.type = spec->type;
	nc.name = spec->type == "group" ? spec->name : std::nullopt;
	nc.creator = c.user_id;
	nc.members = spec->others;
	nc.now = now_ms();
	auto created = ctx.store.create_conversation(nc);
	if (!created)
		return store_error(ctx, created.error());
	const ConversationView &view = created->view;

	join_room(ctx, c.id, created->id);
	ctx.host.await_broker();
	ctx.host.send(c.id, conversation_frame("conversation_created", r.reply_id, view, c.user_id));
	if (!created->created)
		return ok_status(); // an existing direct conversation: nothing is pushed

	ctx.stats.conversations_created++;
	QC_INFO("conversation_created id=%s type=%s by=%s participants=%zu", created->id.c_str(),
		spec->type.c_str(), log_str(c.user_id).c_str(), spec->others.size() + 1);
	// Every other authenticated socket of every participant, the creator's
	// other devices included, on every node, gets the conversation as its
	// user sees it.
	std::string push_id = uuid_v4();
	std::vector<std::string> users = spec->others;
	users.push_back(c.user_id);
	for (const auto &u : users) {
		if (!ctx.broker.online(u))
			continue;
		if (u == c.user_id && !ctx.broker.online_elsewhere(u, c.id))
			continue;
		FramePtr f;
		if (u == c.user_id) {
			f = conversation_frame("conversation_created", push_id, view, u);
		} else {
			auto v = ctx.store.conversation(created->id, u);
			if (!v) {
				store_error(ctx, v.error());
				continue; // the conversation exists; the push is best effort
			}
			f = conversation_frame("conversation_created", push_id, *v, u);
		}
		ctx.broker.publish_user(u, f, c.id);
	}
	return ok_status();
}

Status handle_join_conversation(Ctx &ctx, Caller &c, const Request &r)
{
	auto room = conversation_access(ctx, c, r);
	if (!room)
		return room.error();
	auto ids = ctx.store.participant_ids(*room);
	if (!ids)
		return store_error(ctx, ids.error());
	join_room(ctx, c.id, *room);
	ctx.host.await_broker();
	ctx.host.send(c.id, build_frame("conversation_joined", r.reply_id, [&](JsonWriter &w) {
		w.begin_object().field("conversationId", *room).key("onlineUsers").begin_array();
		for (const auto &id : *ids)
			if (ctx.broker.online(id))
				w.value(id);
		w.end_array().end_object();
	}));
	return ok_status();
}

Status handle_leave_conversation(Ctx &ctx, Caller &c, const Request &r)
{
	auto room = conversation_access(ctx, c, r);
	if (!room)
		return room.error();
	leave_room(ctx, c.id, *room);
	ctx.host.send(c.id, build_frame("conversation_left", r.reply_id, [&](JsonWriter &w) {
		w.begin_object().field("conversationId", *room).end_object();
	}));
	if (!ctx.rooms.user_in_room(c.user_id, *room)) {
		if (auto t = ctx.rooms.typing_stop(*room, c.user_id)) {
			push_typing_ended(ctx, *t);
			ctx.host.typing_changed();
		}
	}
	return ok_status();
}

} // namespace qc
