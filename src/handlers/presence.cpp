// Presence (PROTOCOL.md §6) and the conversation-id access rule shared by
// every conversation request.
#include "qryptchat/log.hpp"
#include "internal.hpp"

namespace qc {

Result<std::string> conversation_access(Ctx &ctx, const Caller &c, const Request &r)
{
	JsonRef id = r.payload.get("conversationId");
	if (!id.is_string() || id.str().empty())
		return make_error(Err::InvalidData, "conversationId is required and must be a string");
	if (!is_id(id))
		return make_error(Err::InvalidData, "conversationId must not hold a NUL");
	std::string conv(id.str());
	auto member = ctx.store.is_participant(conv, c.user_id);
	if (!member)
		return store_error(ctx, member.error());
	if (!*member)
		return make_error(Err::AccessDenied, "Access denied to conversation");
	return conv;
}

void push_presence(Ctx &ctx, const std::string &user, bool online)
{
	auto convs = ctx.store.conversation_ids_of(user);
	if (!convs) {
		store_error(ctx, convs.error());
		QC_WARN("presence_skipped user=%s reason=database", log_str(user).c_str());
		return;
	}
	// One push per conversation room that has someone in it (on another
	// node, maybe: a cluster broker publishes to every one); one fresh
	// requestId per push event.
	std::string ts = iso8601_ms(now_ms());
	for (const auto &conv : *convs) {
		if (!ctx.broker.cluster() && ctx.rooms.members(conv).empty())
			continue;
		RoomEvent ev;
		ev.frame = build_frame(online ? "user_online" : "user_offline", uuid_v4(),
				       [&](JsonWriter &w) {
					       w.begin_object()
						       .field("userId", user)
						       .field("conversationId", conv)
						       .field("timestamp", ts)
						       .end_object();
				       });
		// Not to the user's own sockets: in a cluster, presence is settled
		// through Redis while the user may already have joined rooms.
		ev.per_user.emplace(user, FramePtr());
		ctx.stats.presence_pushes += ctx.broker.publish(conv, ev);
	}
}

} // namespace qc
