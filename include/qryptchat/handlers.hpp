// handlers and dispatch: one function per request type, behind a table
// that maps the envelope's type to its handler, plus the socket-level
// events (authentication at upgrade, close, timers) that change chat
// state.  No sockets and no SQL here: handlers talk to the Store, the
// RoomTable, the Broker and, for their own socket, the Host.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "qryptchat/auth.hpp"
#include "qryptchat/broker.hpp"
#include "qryptchat/config.hpp"
#include "qryptchat/protocol.hpp"
#include "qryptchat/rooms.hpp"
#include "qryptchat/stats.hpp"
#include "qryptchat/store.hpp"

namespace qc {

// A token bucket: `rate` tokens per second, at most `burst` stored.
struct TokenBucket {
	double tokens = -1;   // < 0: not started (starts full)
	int64_t last_us = 0;
	bool take(int64_t rate, int64_t burst, int64_t now_us);
};

// A connection as handlers see it; owned by the server's session.
struct Caller {
	SessionId id = 0;
	std::string peer;                      // client address (for logs)
	bool authenticated = false;
	std::string user_id;                   // JWT sub once authenticated
	std::string username;                  // for typing pushes
	std::optional<int64_t> token_exp_s;    // exp of the current token (none: never)
	bool token_expired = false;            // jwt_expiry_action refuse: waiting for re-auth
	int failed_auths = 0;                  // consecutive failed auth requests
	TokenBucket general;                   // every request but typing
	TokenBucket typing;                    // typing_start / typing_stop
	int64_t refusal_window_us = 0;         // start of the 10 s abuse window
	int64_t refusals = 0;                  // RATE_LIMITED answers in that window
	bool closing = false;                  // a close was requested: ignore further input
};

// What handlers may ask of the server for sockets.
class Host
{
public:
	virtual ~Host() = default;
	// Queues a frame on a socket (ignored when it is gone or closing).
	virtual void send(SessionId s, const FramePtr &f) = 0;
	// Closes a socket with a WebSocket close code (after this callback).
	virtual void close(SessionId s, int code, const std::string &reason) = 0;
	// The socket's token expiry changed: re-arm its timer.
	virtual void token_changed(SessionId s) = 0;
	// Typing deadlines changed: re-arm the typing timer.
	virtual void typing_changed() = 0;
	// Returns once the broker's subscriptions and presence changes asked
	// for so far have taken effect (a cluster broker waits for Redis to
	// confirm them, suspending only this request), so that a reply such as
	// conversation_joined is not followed by a push this socket misses,
	// and auth_success by a late presence push of its own coming online.
	virtual void await_broker() {}
};

// Everything a handler may touch.  All references outlive the call.
struct Ctx {
	Store &store;
	RoomTable &rooms;
	Broker &broker;
	Stats &stats;
	const Config &cfg;
	const AuthParams &auth;
	Host &host;
};

// One complete inbound text message.  Returns the request's requestId as
// given (nullopt if none or not a string), so that the server can answer
// the request DATABASE_ERROR if the batch it wrote in fails to commit.
std::optional<std::string> handle_text(Ctx &ctx, Caller &c, std::string_view text);
// One complete inbound binary message (refused, the socket stays open).
void handle_binary(Ctx &ctx, Caller &c);
// A token presented at upgrade and already verified: authenticates the
// socket and sends auth_success (or an error) as its first frame.
void handle_upgrade_auth(Ctx &ctx, Caller &c, const Claims &claims);
// The socket closed: leaves its rooms, ends its typing, presence.
void handle_close(Ctx &ctx, Caller &c);
// The broker found that `user` came online or went offline across the
// cluster (ClusterListener): pushes user_online / user_offline.
void handle_presence_changed(Ctx &ctx, const std::string &user, bool online);
// A ClusterListener that calls handle_presence_changed, for a broker built
// before the Ctx it needs (set `ctx` once it exists).
struct PresencePusher final : public ClusterListener {
	Ctx *ctx = nullptr;
	void presence_changed(const std::string &user, bool online) override
	{
		if (ctx)
			handle_presence_changed(*ctx, user, online);
	}
};
// Typing deadlines ≤ now_us passed: pushes the stops.
void handle_typing_expiry(Ctx &ctx, int64_t now_us);
// The socket's token expired (deadline reached): close or refuse.
void handle_token_expiry(Ctx &ctx, Caller &c);
// Another process changed the database (the admin subcommands): closes
// the sockets of users now disabled, and takes sockets out of rooms whose
// conversation their user no longer takes part in.
void handle_external_change(Ctx &ctx);

// Close codes (PROTOCOL.md §8).
constexpr int kClosePolicy = 1008;
constexpr int kCloseTooBig = 1009;
constexpr int kCloseGoingAway = 1001;
constexpr int kCloseTokenExpired = 4001;

} // namespace qc
