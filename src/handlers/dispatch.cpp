// dispatch: envelope → rate limits → authentication gate → handler, and
// the one place where an Err becomes a wire error.  Also the handlers of
// the connection itself: auth, ping, upgrade-time auth, close, timers.
#include "qryptchat/log.hpp"
#include "internal.hpp"

namespace qc {

bool TokenBucket::take(int64_t rate, int64_t burst, int64_t now_us)
{
	if (tokens < 0) {
		tokens = static_cast<double>(burst);
		last_us = now_us;
	}
	double elapsed = static_cast<double>(now_us - last_us) / 1e6;
	last_us = now_us;
	tokens += elapsed * static_cast<double>(rate);
	if (tokens > static_cast<double>(burst))
		tokens = static_cast<double>(burst);
	if (tokens < 1.0)
		return false;
	tokens -= 1.0;
	return true;
}

namespace {

const Handler kHandlers[] = {
	nullptr,                       // Unknown
	handle_auth,                   // Auth
	handle_ping,                   // Ping
	handle_load_conversations,     // LoadConversations
	handle_create_conversation,    // CreateConversation
	handle_join_conversation,      // JoinConversation
	handle_leave_conversation,     // LeaveConversation
	handle_send_message,           // SendMessage
	handle_load_messages,          // LoadMessages
	handle_load_more_messages,     // LoadMoreMessages
	handle_typing_start,           // TypingStart
	handle_typing_stop,            // TypingStop
};
static_assert(sizeof kHandlers / sizeof kHandlers[0] == static_cast<size_t>(ReqType::TypingStop) + 1,
	      "one handler per request type");

// Abuse: more than 2 × burst refusals within this window closes the socket.
constexpr int64_t kAbuseWindowUs = 10 * 1000000;

void send_error(Ctx &ctx, Caller &c, const Error &e, const std::optional<std::string> &rid)
{
	ctx.stats.count_error(e.code);
	ctx.host.send(c.id, build_error(e, rid));
}

// The general or typing bucket; false (and the reply sent) when refused.
bool admit(Ctx &ctx, Caller &c, const Envelope &env)
{
	bool typing = env.kind == ReqType::TypingStart || env.kind == ReqType::TypingStop;
	int64_t now = mono_us();
	bool ok = typing ? c.typing.take(ctx.cfg.typing_rate, ctx.cfg.typing_burst, now)
			 : c.general.take(ctx.cfg.rate_limit, ctx.cfg.rate_burst, now);
	if (ok)
		return true;
	ctx.stats.rate_limited++;
	send_error(ctx, c, make_error(Err::RateLimited, "Rate limit exceeded; slow down"),
		   env.request_id);
	// Sustained abuse is judged on the general bucket only: a held key
	// flooding typing requests is refused, not disconnected.
	if (typing)
		return false;
	if (now - c.refusal_window_us > kAbuseWindowUs) {
		c.refusal_window_us = now;
		c.refusals = 0;
	}
	if (++c.refusals > 2 * ctx.cfg.rate_burst) {
		QC_INFO("close_abuse session=%llu peer=%s", static_cast<unsigned long long>(c.id),
			c.peer.c_str());
		ctx.stats.closed_abuse++;
		c.closing = true;
		ctx.host.close(c.id, kClosePolicy, "rate limit abuse");
	}
	return false;
}

// Records a successful authentication for `claims`: creates or refreshes
// the user, sets the caller's identity and expiry, presence on the first.
Result<User> authenticate(Ctx &ctx, Caller &c, const Claims &claims)
{
	auto user = ctx.store.upsert_user(claims.sub, claims.hints);
	if (!user) {
		// A known user still gets in, with the stored profile, when the
		// refresh cannot be written (a full or locked database): reading
		// history must not depend on it.  A new user cannot.
		store_error(ctx, user.error());
		auto known = ctx.store.get_user(claims.sub);
		if (!known || !*known)
			return user.error();
		user = std::move(**known);
	}
	if (user->disabled)
		return make_error(Err::InvalidToken, "Invalid token: user disabled");
	c.failed_auths = 0;
	c.token_exp_s = claims.exp;
	c.token_expired = false;
	c.username = user->username;
	ctx.stats.auth_success++;
	ctx.host.token_changed(c.id);
	if (!c.authenticated) {
		c.authenticated = true;
		c.user_id = claims.sub;
		QC_INFO("auth session=%llu peer=%s user=%s", static_cast<unsigned long long>(c.id),
			c.peer.c_str(), log_str(c.user_id).c_str());
	}
	return user;
}

FramePtr auth_success(const User &u, const std::string &rid)
{
	return build_frame("auth_success", rid, [&](JsonWriter &w) {
		w.begin_object().key("user");
		write_user(w, u);
		w.end_object();
	});
}

// Presence for a socket that just authenticated for the first time.
void came_online(Ctx &ctx, Caller &c)
{
	if (ctx.rooms.add_user_session(c.user_id, c.id)) {
		ctx.broker.user_up(c.user_id);
		ctx.host.await_broker(); // pushes for this user reach this node from now on
	}
}

} // namespace

Error store_error(Ctx &ctx, const Error &e)
{
	if (e.code == Err::DatabaseError)
		ctx.stats.database_errors++;
	return e;
}

Status handle_auth(Ctx &ctx, Caller &c, const Request &r)
{
	JsonRef token = r.payload.get("token");
	Error err;
	if (!token.is_string() || token.str().empty()) {
		err = make_error(Err::MissingToken, "token is required");
	} else {
		auto claims = verify_jwt(token.str(), ctx.auth, now_ms() / 1000);
		if (claims && c.authenticated && claims->sub != c.user_id)
			return make_error(Err::InvalidData, "already authenticated as another user");
		if (claims) {
			bool first = !c.authenticated;
			auto user = authenticate(ctx, c, *claims);
			if (!user)
				return user.error();
			if (first)
				came_online(ctx, c);
			ctx.host.send(c.id, auth_success(*user, r.reply_id));
			return ok_status();
		}
		err = claims.error();
	}
	// A failed attempt: counted, and too many in a row close the socket.
	ctx.stats.auth_failures++;
	QC_INFO("auth_failed session=%llu peer=%s code=%s", static_cast<unsigned long long>(c.id),
		c.peer.c_str(), err_code(err.code));
	if (++c.failed_auths >= ctx.cfg.max_auth_failures) {
		send_error(ctx, c, err, r.env.request_id);
		ctx.stats.closed_auth_failures++;
		c.closing = true;
		ctx.host.close(c.id, kClosePolicy, "too many failed authentication attempts");
		return ok_status();
	}
	return err;
}

Status handle_ping(Ctx &ctx, Caller &c, const Request &r)
{
	ctx.host.send(c.id, build_frame("pong", r.reply_id, [](JsonWriter &w) {
		w.begin_object().end_object();
	}));
	return ok_status();
}

std::optional<std::string> handle_text(Ctx &ctx, Caller &c, std::string_view text)
{
	if (c.closing)
		return std::nullopt;
	ctx.stats.frames_in++;
	ctx.stats.bytes_in += text.size();
	Envelope env = parse_envelope(text);
	if (!admit(ctx, c, env))
		return env.request_id;
	if (env.error) {
		send_error(ctx, c, *env.error, env.request_id);
		return env.request_id;
	}
	bool open = env.kind == ReqType::Auth || env.kind == ReqType::Ping;
	if (!open && !c.authenticated) {
		send_error(ctx, c, make_error(Err::AuthRequired, "Authentication required"),
			   env.request_id);
		return env.request_id;
	}
	if (!open && c.token_expired) {
		send_error(ctx, c, make_error(Err::TokenExpired, "Token expired; authenticate again"),
			   env.request_id);
		return env.request_id;
	}
	Request req{env, env.payload, reply_request_id(env.request_id)};
	Status st = kHandlers[static_cast<int>(env.kind)](ctx, c, req);
	if (!st)
		send_error(ctx, c, st.error(), env.request_id);
	return env.request_id;
}

void handle_binary(Ctx &ctx, Caller &c)
{
	if (c.closing)
		return;
	ctx.stats.frames_in++;
	Envelope none; // a binary frame counts in the general bucket like any request
	if (!admit(ctx, c, none))
		return;
	send_error(ctx, c, make_error(Err::InvalidMessage, "binary frames are not supported"),
		   std::nullopt);
}

void handle_upgrade_auth(Ctx &ctx, Caller &c, const Claims &claims)
{
	auto user = authenticate(ctx, c, claims);
	if (!user) {
		send_error(ctx, c, user.error(), std::nullopt);
		return;
	}
	came_online(ctx, c);
	ctx.host.send(c.id, auth_success(*user, uuid_v4()));
}

void handle_close(Ctx &ctx, Caller &c)
{
	for (const std::string &room : ctx.rooms.leave_all(c.id))
		if (ctx.rooms.members(room).empty())
			ctx.broker.room_closed(room);
	if (!c.authenticated)
		return;
	// Typing ends where the user has no socket left in the room.
	for (const auto &room : ctx.rooms.typing_rooms_of(c.user_id)) {
		if (ctx.rooms.user_in_room(c.user_id, room))
			continue;
		if (auto t = ctx.rooms.typing_stop(room, c.user_id))
			push_typing_ended(ctx, *t);
	}
	ctx.host.typing_changed();
	if (ctx.rooms.remove_user_session(c.user_id, c.id))
		ctx.broker.user_down(c.user_id);
}

void handle_presence_changed(Ctx &ctx, const std::string &user, bool online)
{
	push_presence(ctx, user, online);
}

void join_room(Ctx &ctx, SessionId s, const std::string &room)
{
	if (ctx.rooms.join(s, room) && ctx.rooms.members(room).size() == 1)
		ctx.broker.room_opened(room);
}

void leave_room(Ctx &ctx, SessionId s, const std::string &room)
{
	if (ctx.rooms.leave(s, room) && ctx.rooms.members(room).empty())
		ctx.broker.room_closed(room);
}

void handle_typing_expiry(Ctx &ctx, int64_t now_us)
{
	for (const auto &t : ctx.rooms.typing_expire(now_us))
		push_typing_ended(ctx, t);
}

void handle_token_expiry(Ctx &ctx, Caller &c)
{
	if (!c.authenticated || c.closing)
		return;
	if (ctx.cfg.jwt_expiry_action == "refuse") {
		c.token_expired = true;
		return;
	}
	QC_INFO("close_token_expired session=%llu user=%s", static_cast<unsigned long long>(c.id),
		log_str(c.user_id).c_str());
	ctx.stats.closed_token_expired++;
	c.closing = true;
	ctx.host.close(c.id, kCloseTokenExpired, "token expired");
}

void handle_external_change(Ctx &ctx)
{
	for (const std::string &user : ctx.rooms.online_users()) {
		auto u = ctx.store.get_user(user);
		if (!u || !*u)
			continue; // unreadable now: the next change looks again
		std::vector<SessionId> sockets = ctx.rooms.sessions_of(user);
		if ((*u)->disabled) {
			QC_INFO("close_user_disabled user=%s sockets=%zu", log_str(user).c_str(),
				sockets.size());
			for (SessionId s : sockets)
				ctx.host.close(s, kClosePolicy, "user disabled");
			continue;
		}
		for (SessionId s : sockets)
			for (const std::string &room : ctx.rooms.rooms_of(s)) {
				auto member = ctx.store.is_participant(room, user);
				if (!member || *member)
					continue;
				leave_room(ctx, s, room);
				ctx.host.send(s, build_frame("conversation_left", reply_request_id(std::nullopt),
							     [&](JsonWriter &w) {
								     w.begin_object()
									     .field("conversationId", room)
									     .end_object();
							     }));
				if (!ctx.rooms.user_in_room(user, room))
					if (auto t = ctx.rooms.typing_stop(room, user)) {
						push_typing_ended(ctx, *t);
						ctx.host.typing_changed();
					}
			}
	}
}

} // namespace qc
