// typing_start / typing_stop (PROTOCOL.md §5): a push only when the user's
// state in the room changes; expiry after typing_timeout.
#include "internal.hpp"

namespace qc {

namespace {

FramePtr typing_update(const std::string &room, const std::string &user,
		       const std::string &username, bool typing)
{
	return build_frame("typing_update", uuid_v4(), [&](JsonWriter &w) {
		w.begin_object()
			.field("conversationId", room)
			.field("userId", user)
			.field("username", username)
			.field("isTyping", typing)
			.end_object();
	});
}

void reply(Ctx &ctx, Caller &c, const Request &r, const std::string &room, bool typing)
{
	ctx.host.send(c.id, build_frame(typing ? "typing_start" : "typing_stop", r.reply_id,
					[&](JsonWriter &w) {
						w.begin_object()
							.field("conversationId", room)
							.field("isTyping", typing)
							.end_object();
					}));
}

void push(Ctx &ctx, const std::string &room, const std::string &user, const std::string &username,
	  bool typing, SessionId except)
{
	RoomEvent ev;
	ev.frame = typing_update(room, user, username, typing);
	ev.except = except;
	ev.typing = RoomEvent::Typing{user, username, typing};
	ctx.stats.typing_pushes += ctx.broker.publish(room, ev);
}

} // namespace

void push_typing_ended(Ctx &ctx, const TypingEnded &t)
{
	push(ctx, t.room, t.user, t.username, false, t.last_session);
}

Status handle_typing_start(Ctx &ctx, Caller &c, const Request &r)
{
	auto room = conversation_access(ctx, c, r);
	if (!room)
		return room.error();
	int64_t deadline = mono_us() + ctx.cfg.typing_timeout_ms * 1000;
	bool changed = ctx.rooms.typing_start(*room, c.user_id, c.username, c.id, deadline);
	reply(ctx, c, r, *room, true);
	if (changed)
		push(ctx, *room, c.user_id, c.username, true, c.id);
	ctx.host.typing_changed();
	return ok_status();
}

Status handle_typing_stop(Ctx &ctx, Caller &c, const Request &r)
{
	auto room = conversation_access(ctx, c, r);
	if (!room)
		return room.error();
	auto ended = ctx.rooms.typing_stop(*room, c.user_id);
	reply(ctx, c, r, *room, false);
	if (ended) {
		push(ctx, *room, c.user_id, ended->username, false, c.id);
		ctx.host.typing_changed();
	}
	return ok_status();
}

} // namespace qc
