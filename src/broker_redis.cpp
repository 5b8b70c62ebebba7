// broker_redis: the cluster broker on Redis pub/sub (broker_redis.hpp says
// what it guarantees).  How it is built:
//
// Two hiredis async connections driven by the server's libev loop: one for
// commands (PUBLISH, the presence scripts), one in subscribe mode.  The
// link is "up" once the command connection is established and the
// subscription to qc:presence is confirmed; until then, and whenever either
// connection drops, the broker is local only, and it retries every
// reconnect_ms.  Nothing here blocks the loop: commands are queued, their
// replies come back as callbacks.
//
// Keys (prefix qc:):
//   qc:nodes               set of the nodes that hold a lease
//   qc:node:<id>           a node's lease (PX presence_ttl_ms), renewed every ttl/3
//   qc:node:<id>:users     the users that have a socket on that node
//   qc:presence:<user>     the nodes that hold the user
//   qc:online              the users held by at least one node
//   qc:reaped:<id>         tombstone of a node claimed as dead (a day)
// Channels: qc:room:<room> (room events), qc:user:<user> (frames for one
// user's sockets), qc:presence (presence changes, so that every node keeps
// its mirror of who is online elsewhere).
//
// Every presence change is one Lua script, so that exactly one node sees
// each transition (first node to hold a user, last to drop it, the one
// that claims a dead node by removing it from qc:nodes) and pushes it.
// The scripts are sent with EVAL, not EVALSHA: they run on logins, logouts
// and the lease timer only, and EVAL needs no NOSCRIPT round after a Redis
// restart or SCRIPT FLUSH.  They name keys that are not passed in KEYS, so
// they need a single Redis (or a replicated one), not Redis Cluster.
//
// Messages are fields, each "<decimal length>:<bytes>" (binary-safe, and
// simple to write from Lua as well as from here):
//   room event:  origin, frame, typing ("" none, "1" started, "0" stopped),
//                typing user, typing username, then user, frame pairs
//   user frame:  origin, frame
//   presence:    kind ("up", "down", "dead"), node, user ("" for dead)
//
// Limits: no password and no TLS (redis://host:port[/db] or unix:/path;
// the database is selected by the first command of each connection).
// hiredis 0.14 resolves a host name with a blocking getaddrinfo() at each
// connection attempt: give an address or a Unix socket.  Presence pushes
// made while Redis was away reached this node's sockets only; events
// published then are not replayed (clients recover them with afterSeq).
// A subscriber that falls behind Redis's pub/sub output-buffer limit is
// disconnected by Redis, and reconnects like after any other drop.
#include "qryptchat/broker_redis.hpp"

#include <ev.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <string_view>
#include <utility>

// hiredis 0.14: the async API and its libev adapter (static functions
// that attach a context's socket to our loop).
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <hiredis/adapters/libev.h>

#include "qryptchat/log.hpp"
#include "qryptchat/util.hpp"

namespace qc {

namespace {

const char *const kPresenceChannel = "qc:presence";
const std::string kRoomPrefix = "qc:room:";
const std::string kUserPrefix = "qc:user:";

// Channels named in one SUBSCRIBE when (re)subscribing everything: keeps
// each command's size bounded however many rooms a node has open.
constexpr size_t kSubscribeBatch = 512;

// Shared by the scripts: a message field as "<length>:<bytes>".
#define QC_LUA_FIELD "local function f(s) return #s .. ':' .. s end\n"

// A socket of `node` opened for ARGV[3]: returns {first, joined}, first = 1
// when no node held the user before (this node pushes user_online),
// joined = 1 when the node was not registered (its lease had been claimed
// as dead, or Redis lost its data): the caller then re-announces.
const char *const kScriptUp = QC_LUA_FIELD R"lua(
local node, ttl, u = ARGV[1], ARGV[2], ARGV[3]
redis.call('SET', 'qc:node:' .. node, '1', 'PX', ttl)
local joined = redis.call('SADD', 'qc:nodes', node)
redis.call('SADD', 'qc:node:' .. node .. ':users', u)
local pk = 'qc:presence:' .. u
local first = 0
if redis.call('SADD', pk, node) == 1 then
	if redis.call('SCARD', pk) == 1 then
		first = 1
	end
	redis.call('SADD', 'qc:online', u)
	redis.call('PUBLISH', 'qc:presence', f('up') .. f(node) .. f(u))
end
return {first, joined}
)lua";

// The last socket of ARGV[3] on `node` closed: {last, joined}, last = 1
// when no node holds the user any more (this node pushes user_offline).
const char *const kScriptDown = QC_LUA_FIELD R"lua(
local node, ttl, u = ARGV[1], ARGV[2], ARGV[3]
redis.call('SET', 'qc:node:' .. node, '1', 'PX', ttl)
local joined = redis.call('SADD', 'qc:nodes', node)
redis.call('SREM', 'qc:node:' .. node .. ':users', u)
local pk = 'qc:presence:' .. u
local last = 0
if redis.call('SREM', pk, node) == 1 then
	redis.call('PUBLISH', 'qc:presence', f('down') .. f(node) .. f(u))
	if redis.call('SCARD', pk) == 0 then
		last = 1
		redis.call('SREM', 'qc:online', u)
	end
end
return {last, joined}
)lua";

// (Re)announces the node with exactly the users ARGV[3..] (after a
// (re)connection: users that came or went while Redis was away).  Returns
// the full picture, {nodes, {user, {node...}, user, {...}...}, revived}.
// Transitions are not reported (they were pushed locally while Redis was
// away, and a Redis that restarted empty would make every user look new),
// except when another node had claimed this one as dead (its tombstone
// qc:reaped:<id> is there) and so pushed its users offline: `revived` then
// lists the users that this announcement brings back online.
const char *const kScriptJoin = QC_LUA_FIELD R"lua(
local node, ttl = ARGV[1], ARGV[2]
redis.call('SET', 'qc:node:' .. node, '1', 'PX', ttl)
redis.call('SADD', 'qc:nodes', node)
local reaped = redis.call('DEL', 'qc:reaped:' .. node)
local uk = 'qc:node:' .. node .. ':users'
local want = {}
for i = 3, #ARGV do
	want[ARGV[i]] = true
end
for _, u in ipairs(redis.call('SMEMBERS', uk)) do
	if not want[u] then
		redis.call('SREM', uk, u)
		local pk = 'qc:presence:' .. u
		if redis.call('SREM', pk, node) == 1 then
			redis.call('PUBLISH', 'qc:presence', f('down') .. f(node) .. f(u))
			if redis.call('SCARD', pk) == 0 then
				redis.call('SREM', 'qc:online', u)
			end
		end
	end
end
local revived = {}
for i = 3, #ARGV do
	local u = ARGV[i]
	local pk = 'qc:presence:' .. u
	redis.call('SADD', uk, u)
	if redis.call('SADD', pk, node) == 1 then
		if reaped == 1 and redis.call('SCARD', pk) == 1 then
			revived[#revived + 1] = u
		end
		redis.call('SADD', 'qc:online', u)
		redis.call('PUBLISH', 'qc:presence', f('up') .. f(node) .. f(u))
	end
end
local users = {}
for _, u in ipairs(redis.call('SMEMBERS', 'qc:online')) do
	users[#users + 1] = u
	users[#users + 1] = redis.call('SMEMBERS', 'qc:presence:' .. u)
end
return {redis.call('SMEMBERS', 'qc:nodes'), users, revived}
)lua";

// Renews the node's lease and claims every node whose lease ran out:
// removing it from qc:nodes inside this script is the claim, so exactly
// one surviving node takes each dead node's users offline.  A tombstone
// (kept a day) lets a node that was only stalled know, when it announces
// itself again, that its users were pushed offline.  Returns
// {joined, {dead node, {users now offline everywhere}, ...}}.
const char *const kScriptRenew = QC_LUA_FIELD R"lua(
local node, ttl = ARGV[1], ARGV[2]
redis.call('SET', 'qc:node:' .. node, '1', 'PX', ttl)
local joined = redis.call('SADD', 'qc:nodes', node)
local dead = {}
for _, n in ipairs(redis.call('SMEMBERS', 'qc:nodes')) do
	if n ~= node and redis.call('EXISTS', 'qc:node:' .. n) == 0 then
		redis.call('SREM', 'qc:nodes', n)
		local uk = 'qc:node:' .. n .. ':users'
		local off = {}
		for _, u in ipairs(redis.call('SMEMBERS', uk)) do
			local pk = 'qc:presence:' .. u
			redis.call('SREM', pk, n)
			if redis.call('SCARD', pk) == 0 then
				redis.call('SREM', 'qc:online', u)
				off[#off + 1] = u
			end
		end
		redis.call('DEL', uk)
		redis.call('SET', 'qc:reaped:' .. n, '1', 'PX', 86400000)
		redis.call('PUBLISH', 'qc:presence', f('dead') .. f(n) .. f(''))
		dead[#dead + 1] = n
		dead[#dead + 1] = off
	end
end
return {joined, dead}
)lua";

// A clean shutdown: withdraws every user of the node and its lease;
// returns the users now offline everywhere.
const char *const kScriptLeave = QC_LUA_FIELD R"lua(
local node = ARGV[1]
local uk = 'qc:node:' .. node .. ':users'
local off = {}
for _, u in ipairs(redis.call('SMEMBERS', uk)) do
	local pk = 'qc:presence:' .. u
	if redis.call('SREM', pk, node) == 1 then
		redis.call('PUBLISH', 'qc:presence', f('down') .. f(node) .. f(u))
		if redis.call('SCARD', pk) == 0 then
			redis.call('SREM', 'qc:online', u)
			off[#off + 1] = u
		end
	end
end
redis.call('DEL', uk, 'qc:node:' .. node)
redis.call('SREM', 'qc:nodes', node)
return off
)lua";

#undef QC_LUA_FIELD

void put_field(std::string &out, std::string_view f)
{
	out += std::to_string(f.size());
	out += ':';
	out.append(f.data(), f.size());
}

// Reads the fields of a message; `ok` turns false (for good) on anything
// malformed, and next() then returns "".
struct FieldReader {
	std::string_view rest;
	bool ok = true;

	bool more() const { return ok && !rest.empty(); }
	std::string_view next()
	{
		if (!ok)
			return {};
		size_t len = 0, i = 0;
		while (i < rest.size() && rest[i] >= '0' && rest[i] <= '9' && i < 12)
			len = len * 10 + size_t(rest[i++] - '0');
		if (i == 0 || i >= rest.size() || rest[i] != ':' || rest.size() - i - 1 < len) {
			ok = false;
			return {};
		}
		std::string_view f = rest.substr(i + 1, len);
		rest.remove_prefix(i + 1 + len);
		return f;
	}
};

// A frame received from Redis: built once, shared by every local socket.
FramePtr frame_from(std::string_view bytes)
{
	auto f = std::make_shared<Frame>();
	f->buf.reserve(kFrameHeadroom + bytes.size());
	f->buf.assign(kFrameHeadroom, '\0');
	f->buf.append(bytes.data(), bytes.size());
	return f;
}

// The typing_update push of PROTOCOL.md §5, as handlers/typing.cpp builds
// it; used to end the typing of a node that died.
FramePtr typing_stopped(const std::string &room, const std::string &user,
			const std::string &username)
{
	return build_frame("typing_update", uuid_v4(), [&](JsonWriter &w) {
		w.begin_object()
			.field("conversationId", room)
			.field("userId", user)
			.field("username", username)
			.field("isTyping", false)
			.end_object();
	});
}

std::string_view reply_str(const redisReply *r)
{
	if (!r || (r->type != REDIS_REPLY_STRING && r->type != REDIS_REPLY_STATUS))
		return {};
	return std::string_view(r->str, r->len);
}

bool is_array(const redisReply *r, size_t n)
{
	return r && r->type == REDIS_REPLY_ARRAY && r->elements >= n;
}

int64_t reply_int(const redisReply *r)
{
	return r && r->type == REDIS_REPLY_INTEGER ? r->integer : 0;
}

bool starts_with(std::string_view s, const std::string &p)
{
	return s.size() >= p.size() && s.compare(0, p.size(), p) == 0;
}

} // namespace

struct RedisBroker::Impl {
	Impl(struct ev_loop *l, const RedisOptions &o, const RoomTable &r, DeliverySink &s,
	     ClusterListener &li)
		: loop(l), opts(o), rooms(r), sink(s), listener(li)
	{
	}

	// A command whose reply matters, and what it was about.  Allocated
	// per command, freed by its callback (hiredis calls every callback
	// exactly once: with the reply, or with NULL when the connection
	// goes away).
	enum class Kind { Up, Down, Join, Renew, Leave };
	struct Call {
		Impl *im;
		Kind kind;
		std::string user; // Up, Down
	};

	struct RemoteTyping {
		std::string node;     // the node that announced it
		std::string username;
	};

	struct ev_loop *loop;
	RedisOptions opts;
	const RoomTable &rooms;
	DeliverySink &sink;
	ClusterListener &listener;

	// Where Redis is (parsed from opts.url).
	bool unix_socket = false;
	std::string path_or_host;
	int port = 6379;
	int db = 0;

	redisAsyncContext *cmd = nullptr; // commands; null while down
	redisAsyncContext *sub = nullptr; // subscriptions; null while down
	bool cmd_connected = false;       // cmd's connect callback said OK
	bool sub_ready = false;           // qc:presence subscription confirmed
	bool up = false;                  // both: Redis is used
	bool ever_up = false;             // for counting reconnections
	bool warned_down = false;         // "unreachable" logged once per outage
	bool shutting_down = false;       // shutdown(): no reconnection
	bool dying = false;               // destructor: callbacks do nothing

	ev_timer reconnect_timer{};
	ev_timer lease_timer{};

	std::set<std::string> open_rooms;  // rooms with a socket here
	std::set<std::string> local_users; // users with a socket here (user_up..user_down)
	// Channels whose subscription Redis confirmed (for the gauges).
	std::set<std::string> subscribed;
	size_t subscribed_rooms = 0, subscribed_users = 0;
	// Channels named in (UN)SUBSCRIBE commands sent on this link and the
	// confirmations received (one per channel, in order), and likewise
	// scripts sent and answered: when_settled callers wait for both counts
	// as they were at their call.
	uint64_t sub_sent = 0, sub_confirmed = 0;
	uint64_t scripts_sent = 0, scripts_done = 0;
	struct Waiter {
		uint64_t subs, scripts;
		std::function<void()> done;
	};
	std::deque<Waiter> waiters;
	int inflight = 0; // scripts awaiting their reply

	// Mirror of presence on the other nodes: user → the nodes (not this
	// one) that hold them.  Loaded by the join script, kept by qc:presence.
	std::unordered_map<std::string, std::set<std::string>> remote;
	// Join scripts in flight; while there are, presence messages are also
	// logged, to be replayed over the snapshot the script returns (it may
	// have been taken after some of them).
	int joins_pending = 0;
	struct PresenceMsg {
		std::string kind, node, user;
	};
	std::vector<PresenceMsg> presence_log;

	// Typing announced by other nodes in rooms open here, ended locally if
	// that node dies: (room, user) → who.
	std::map<std::pair<std::string, std::string>, RemoteTyping> remote_typing;

	ClusterStats st;

	// --- connection ---

	void parse_url()
	{
		const std::string &u = opts.url;
		if (u.compare(0, 5, "unix:") == 0) {
			unix_socket = true;
			path_or_host = u.substr(5);
			if (path_or_host.compare(0, 2, "//") == 0)
				path_or_host = path_or_host.substr(2);
			if (path_or_host.empty())
				throw std::runtime_error("redis url " + u + ": no socket path");
			return;
		}
		if (u.compare(0, 8, "redis://") != 0)
			throw std::runtime_error("redis url " + u +
						 ": expected redis://host:port[/db] or unix:/path");
		std::string rest = u.substr(8);
		size_t slash = rest.find('/');
		if (slash != std::string::npos) {
			std::string d = rest.substr(slash + 1);
			rest = rest.substr(0, slash);
			if (!d.empty()) {
				char *end = nullptr;
				long v = strtol(d.c_str(), &end, 10);
				if (*end || v < 0 || v > 1000000)
					throw std::runtime_error("redis url " + u + ": bad database");
				db = int(v);
			}
		}
		size_t colon = rest.rfind(':');
		if (colon != std::string::npos) {
			char *end = nullptr;
			long v = strtol(rest.c_str() + colon + 1, &end, 10);
			if (*end || v <= 0 || v > 65535)
				throw std::runtime_error("redis url " + u + ": bad port");
			port = int(v);
			rest = rest.substr(0, colon);
		}
		if (rest.empty())
			throw std::runtime_error("redis url " + u + ": no host");
		path_or_host = rest;
	}

	redisAsyncContext *open_one()
	{
		redisAsyncContext *ac = unix_socket
						? redisAsyncConnectUnix(path_or_host.c_str())
						: redisAsyncConnect(path_or_host.c_str(), port);
		if (!ac)
			return nullptr;
		if (ac->err) {
			if (!warned_down)
				QC_WARN("redis_unreachable url=%s error=%s",
					log_str(opts.url).c_str(), log_str(ac->errstr).c_str());
			warned_down = true;
			redisAsyncFree(ac);
			return nullptr;
		}
		ac->data = this;
		redisLibevAttach(loop, ac);
		redisAsyncSetConnectCallback(ac, on_connect);
		redisAsyncSetDisconnectCallback(ac, on_disconnect);
		return ac;
	}

	// Opens both connections; commands and subscriptions are queued at
	// once and sent when the connection is established.
	void connect()
	{
		if (shutting_down || dying)
			return;
		cmd = open_one();
		if (cmd)
			sub = open_one();
		if (!cmd || !sub) {
			if (redisAsyncContext *c = std::exchange(cmd, nullptr))
				redisAsyncFree(c);
			schedule_reconnect();
			return;
		}
		if (db != 0)
			redisAsyncCommand(cmd, nullptr, nullptr, "SELECT %d", db);
		std::vector<std::string> channels{kPresenceChannel};
		for (const auto &r : open_rooms)
			channels.push_back(kRoomPrefix + r);
		for (const auto &u : local_users)
			channels.push_back(kUserPrefix + u);
		for (size_t i = 0; i < channels.size(); i += kSubscribeBatch) {
			size_t end = std::min(channels.size(), i + kSubscribeBatch);
			std::vector<std::string_view> argv{"SUBSCRIBE"};
			for (size_t j = i; j < end; j++)
				argv.emplace_back(channels[j]);
			sub_command(argv);
		}
	}

	void schedule_reconnect()
	{
		if (shutting_down || dying || ev_is_active(&reconnect_timer))
			return;
		ev_timer_set(&reconnect_timer, double(opts.reconnect_ms) / 1000.0, 0.);
		ev_timer_start(loop, &reconnect_timer);
	}

	// Either connection failed or dropped: the other one goes too, the
	// broker is local until both are back.
	void link_down()
	{
		bool was_up = up;
		up = false;
		cmd_connected = false;
		sub_ready = false;
		joins_pending = 0;
		presence_log.clear();
		subscribed.clear();
		subscribed_rooms = subscribed_users = 0;
		sub_sent = sub_confirmed = scripts_sent = scripts_done = 0;
		release_waiters(true); // nothing more will be answered on this link
		ev_timer_stop(loop, &lease_timer);
		if (was_up)
			QC_WARN("redis_down url=%s: local delivery only until it returns",
				log_str(opts.url).c_str());
		// Freeing runs the pending callbacks (with no reply) and the
		// disconnect callback, which finds the pointer already cleared.
		if (redisAsyncContext *c = std::exchange(cmd, nullptr))
			redisAsyncFree(c);
		if (redisAsyncContext *c = std::exchange(sub, nullptr))
			redisAsyncFree(c);
		schedule_reconnect();
	}

	void maybe_up()
	{
		if (up || !cmd_connected || !sub_ready)
			return;
		up = true;
		warned_down = false;
		if (ever_up)
			st.reconnects++;
		ever_up = true;
		QC_INFO("redis_up url=%s node=%s", log_str(opts.url).c_str(),
			log_str(opts.node_id).c_str());
		send_join();
		double every = double(lease_interval_ms()) / 1000.0;
		ev_timer_set(&lease_timer, every, every);
		ev_timer_start(loop, &lease_timer);
	}

	int64_t lease_interval_ms() const
	{
		return opts.presence_ttl_ms / 3 > 0 ? opts.presence_ttl_ms / 3 : 1;
	}

	static void on_connect(const redisAsyncContext *ac, int status) noexcept
	{
		auto *im = static_cast<Impl *>(ac->data);
		if (im->dying || (ac != im->cmd && ac != im->sub))
			return;
		if (status != REDIS_OK) {
			if (!im->warned_down)
				QC_WARN("redis_unreachable url=%s error=%s",
					log_str(im->opts.url).c_str(), log_str(ac->errstr).c_str());
			im->warned_down = true;
			// hiredis frees this context after the callback.
			if (ac == im->cmd)
				im->cmd = nullptr;
			else
				im->sub = nullptr;
			im->link_down();
			return;
		}
		if (ac == im->cmd) {
			im->cmd_connected = true;
			im->maybe_up();
		}
	}

	static void on_disconnect(const redisAsyncContext *ac, int status) noexcept
	{
		(void)status;
		auto *im = static_cast<Impl *>(ac->data);
		if (im->dying)
			return;
		// hiredis frees this context after the callback.
		if (ac == im->cmd)
			im->cmd = nullptr;
		else if (ac == im->sub)
			im->sub = nullptr;
		else
			return;
		if (im->shutting_down)
			return;
		im->link_down();
	}

	static void on_reconnect_timer(struct ev_loop *, ev_timer *w, int) noexcept
	{
		auto *im = static_cast<Impl *>(w->data);
		// A connection that survived the other's failure was freed in
		// link_down(); start again with both.
		im->connect();
	}

	static void on_lease_timer(struct ev_loop *, ev_timer *w, int) noexcept
	{
		auto *im = static_cast<Impl *>(w->data);
		if (im->up)
			im->script(kScriptRenew, Kind::Renew, {});
	}

	// --- commands ---

	bool sub_command(const std::vector<std::string_view> &argv)
	{
		if (!sub)
			return false;
		std::vector<const char *> a;
		std::vector<size_t> l;
		for (auto s : argv) {
			a.push_back(s.data());
			l.push_back(s.size());
		}
		if (redisAsyncCommandArgv(sub, on_sub, this, int(a.size()), a.data(), l.data()) != REDIS_OK)
			return false;
		sub_sent += argv.size() - 1;
		return true;
	}

	void release_waiters(bool all)
	{
		while (!waiters.empty() && (all || (waiters.front().subs <= sub_confirmed &&
						    waiters.front().scripts <= scripts_done))) {
			std::function<void()> done = std::move(waiters.front().done);
			waiters.pop_front();
			done();
		}
	}

	// Runs a script with ARGV = node, ttl, then `args`; false when it
	// could not be sent (the caller then acts as if Redis were down).
	bool script(const char *body, Kind kind, const std::vector<std::string_view> &args,
		    const std::string &user = std::string())
	{
		if (!up || !cmd)
			return false;
		std::string ttl = std::to_string(opts.presence_ttl_ms);
		std::vector<const char *> a{"EVAL", body, "0", opts.node_id.c_str(), ttl.c_str()};
		std::vector<size_t> l{4, strlen(body), 1, opts.node_id.size(), ttl.size()};
		for (auto s : args) {
			a.push_back(s.data());
			l.push_back(s.size());
		}
		auto *c = new Call{this, kind, user};
		if (redisAsyncCommandArgv(cmd, on_reply, c, int(a.size()), a.data(), l.data()) !=
		    REDIS_OK) {
			delete c;
			return false;
		}
		inflight++;
		scripts_sent++;
		return true;
	}

	void send_join()
	{
		std::vector<std::string_view> users(local_users.begin(), local_users.end());
		if (script(kScriptJoin, Kind::Join, users))
			joins_pending++;
	}

	bool publish_raw(const std::string &channel, const std::string &msg)
	{
		if (!up || !cmd) {
			st.publish_failures++;
			return false;
		}
		const char *a[3] = {"PUBLISH", channel.c_str(), msg.data()};
		size_t l[3] = {7, channel.size(), msg.size()};
		if (redisAsyncCommandArgv(cmd, nullptr, nullptr, 3, a, l) != REDIS_OK) {
			st.publish_failures++;
			return false;
		}
		st.published++;
		return true;
	}

	static void on_reply(redisAsyncContext *, void *r, void *priv) noexcept
	{
		std::unique_ptr<Call> c(static_cast<Call *>(priv));
		Impl *im = c->im;
		if (im->dying)
			return;
		im->inflight--;
		im->scripts_done++;
		// After the reply has had its effect (presence pushes decided).
		struct Release {
			Impl *im;
			~Release() { im->release_waiters(false); }
		} release{im};
		auto *reply = static_cast<redisReply *>(r);
		if (reply && reply->type == REDIS_REPLY_ERROR)
			QC_WARN("redis_script_error node=%s error=%s", log_str(im->opts.node_id).c_str(),
				log_str(std::string_view(reply->str, reply->len)).c_str());
		switch (c->kind) {
		case Kind::Up:
		case Kind::Down:
			im->transition_reply(*c, reply);
			break;
		case Kind::Join:
			im->join_reply(reply);
			break;
		case Kind::Renew:
			im->renew_reply(reply);
			break;
		case Kind::Leave:
			if (is_array(reply, 0))
				for (size_t i = 0; i < reply->elements; i++)
					im->listener.presence_changed(
						std::string(reply_str(reply->element[i])), false);
			break;
		}
	}

	void transition_reply(const Call &c, const redisReply *reply)
	{
		bool online = c.kind == Kind::Up;
		if (!is_array(reply, 2)) {
			// The script's outcome is unknown (the link dropped, or it
			// failed): push locally, as when Redis is down.
			listener.presence_changed(c.user, online);
			return;
		}
		if (reply_int(reply->element[0]) == 1)
			listener.presence_changed(c.user, online);
		if (reply_int(reply->element[1]) == 1)
			lease_lost();
	}

	// A script found this node unregistered: its lease had been claimed
	// (it could not renew in time) or Redis lost its data.  Its users are
	// announced again.
	void lease_lost()
	{
		QC_WARN("redis_lease_lost node=%s: announcing again", log_str(opts.node_id).c_str());
		send_join();
	}

	void join_reply(const redisReply *reply)
	{
		if (joins_pending > 0)
			joins_pending--;
		if (is_array(reply, 2) && is_array(reply->element[0], 0) &&
		    is_array(reply->element[1], 0)) {
			std::set<std::string> nodes;
			const redisReply *n = reply->element[0];
			for (size_t i = 0; i < n->elements; i++)
				nodes.emplace(reply_str(n->element[i]));
			remote.clear();
			const redisReply *u = reply->element[1];
			for (size_t i = 0; i + 1 < u->elements; i += 2) {
				std::string user(reply_str(u->element[i]));
				const redisReply *holders = u->element[i + 1];
				if (!is_array(holders, 0))
					continue;
				for (size_t j = 0; j < holders->elements; j++) {
					std::string node(reply_str(holders->element[j]));
					if (node != opts.node_id)
						remote[user].insert(std::move(node));
				}
			}
			for (const auto &m : presence_log)
				apply_presence(m.kind, m.node, m.user);
			// Typing of nodes that are gone (while Redis was away, or
			// with the data of a Redis that restarted) ends here.
			std::set<std::string> gone;
			for (const auto &t : remote_typing)
				if (!nodes.count(t.second.node))
					gone.insert(t.second.node);
			for (const auto &g : gone)
				end_typing_of(g);
		}
		if (joins_pending == 0)
			presence_log.clear();
		if (is_array(reply, 3) && is_array(reply->element[2], 0)) {
			const redisReply *rv = reply->element[2];
			for (size_t i = 0; i < rv->elements; i++)
				listener.presence_changed(std::string(reply_str(rv->element[i])), true);
		}
	}

	void renew_reply(const redisReply *reply)
	{
		if (!is_array(reply, 2))
			return;
		const redisReply *dead = reply->element[1];
		if (is_array(dead, 0)) {
			for (size_t i = 0; i + 1 < dead->elements; i += 2) {
				std::string node(reply_str(dead->element[i]));
				st.nodes_expired++;
				QC_INFO("redis_node_expired node=%s by=%s", log_str(node).c_str(),
					log_str(opts.node_id).c_str());
				node_dead(node);
				const redisReply *off = dead->element[i + 1];
				if (!is_array(off, 0))
					continue;
				for (size_t j = 0; j < off->elements; j++)
					listener.presence_changed(std::string(reply_str(off->element[j])),
								  false);
			}
		}
		if (reply_int(reply->element[0]) == 1)
			lease_lost();
	}

	// --- subscriptions ---

	static void on_sub(redisAsyncContext *ac, void *r, void *priv) noexcept
	{
		auto *im = static_cast<Impl *>(priv);
		auto *reply = static_cast<redisReply *>(r);
		if (im->dying || !reply || ac != im->sub || !is_array(reply, 3))
			return;
		std::string_view kind = reply_str(reply->element[0]);
		std::string_view channel = reply_str(reply->element[1]);
		if (kind == "subscribe" || kind == "unsubscribe") {
			im->subscription(channel, kind == "subscribe");
			im->sub_confirmed++;
			im->release_waiters(false);
			return;
		}
		if (kind != "message")
			return;
		std::string_view msg = reply_str(reply->element[2]);
		if (starts_with(channel, kRoomPrefix))
			im->room_message(std::string(channel.substr(kRoomPrefix.size())), msg);
		else if (starts_with(channel, kUserPrefix))
			im->user_message(std::string(channel.substr(kUserPrefix.size())), msg);
		else if (channel == kPresenceChannel)
			im->presence_message(msg);
	}

	// Redis confirmed a (un)subscription; confirmations come in the order
	// of the commands, so the last one tells the channel's state.
	void subscription(std::string_view channel, bool on)
	{
		if (channel == kPresenceChannel) {
			if (on) {
				sub_ready = true;
				maybe_up();
			}
			return;
		}
		std::string ch(channel);
		if (on ? !subscribed.insert(ch).second : !subscribed.erase(ch))
			return;
		size_t &gauge = starts_with(ch, kRoomPrefix) ? subscribed_rooms : subscribed_users;
		gauge = on ? gauge + 1 : gauge - 1;
	}

	void room_message(const std::string &room, std::string_view msg)
	{
		FieldReader rd{msg};
		std::string_view origin = rd.next();
		std::string_view frame = rd.next();
		std::string_view typing = rd.next();
		std::string_view tuser = rd.next();
		std::string_view tname = rd.next();
		// This node's own events come back (it subscribes to the rooms
		// it publishes to); they were delivered here at publish time.
		if (!rd.ok || origin == opts.node_id)
			return;
		RoomEvent ev;
		ev.frame = frame_from(frame);
		while (rd.more()) {
			std::string_view user = rd.next();
			std::string_view f = rd.next();
			if (!rd.ok)
				return;
			// Only frames some socket here will get are built.
			std::string u(user);
			if (rooms.online(u))
				ev.per_user.emplace(std::move(u), f.empty() ? FramePtr() : frame_from(f));
		}
		if (!rd.ok)
			return;
		if (!typing.empty()) {
			auto key = std::make_pair(room, std::string(tuser));
			if (typing == "1")
				remote_typing[key] = RemoteTyping{std::string(origin), std::string(tname)};
			else
				remote_typing.erase(key);
		}
		st.received++;
		st.remote_deliveries += deliver_local(rooms, sink, room, ev);
	}

	void user_message(const std::string &user, std::string_view msg)
	{
		FieldReader rd{msg};
		std::string_view origin = rd.next();
		std::string_view frame = rd.next();
		if (!rd.ok || origin == opts.node_id)
			return;
		st.received++;
		st.remote_deliveries += deliver_user_local(rooms, sink, user, frame_from(frame), 0);
	}

	void presence_message(std::string_view msg)
	{
		FieldReader rd{msg};
		std::string kind(rd.next());
		std::string node(rd.next());
		std::string user(rd.next());
		if (!rd.ok)
			return;
		if (joins_pending > 0)
			presence_log.push_back(PresenceMsg{kind, node, user});
		apply_presence(kind, node, user);
	}

	void apply_presence(const std::string &kind, const std::string &node, const std::string &user)
	{
		// This node's own presence is the room table's.
		if (node == opts.node_id)
			return;
		if (kind == "up") {
			remote[user].insert(node);
		} else if (kind == "down") {
			auto it = remote.find(user);
			if (it != remote.end()) {
				it->second.erase(node);
				if (it->second.empty())
					remote.erase(it);
			}
		} else if (kind == "dead") {
			node_dead(node);
		}
	}

	// A node was claimed dead (by this node or another): it holds nobody,
	// and the typing it announced ends for this node's sockets.
	void node_dead(const std::string &node)
	{
		for (auto it = remote.begin(); it != remote.end();) {
			it->second.erase(node);
			if (it->second.empty())
				it = remote.erase(it);
			else
				++it;
		}
		end_typing_of(node);
	}

	void end_typing_of(const std::string &node)
	{
		for (auto it = remote_typing.begin(); it != remote_typing.end();) {
			if (it->second.node != node) {
				++it;
				continue;
			}
			const std::string &room = it->first.first;
			RoomEvent ev;
			ev.frame = typing_stopped(room, it->first.second, it->second.username);
			st.remote_deliveries += deliver_local(rooms, sink, room, ev);
			it = remote_typing.erase(it);
		}
	}

	bool online_remote(const std::string &user) const { return up && remote.count(user) > 0; }
};

RedisBroker::RedisBroker(struct ev_loop *loop, const RedisOptions &opts, const RoomTable &rooms,
			 DeliverySink &sink, ClusterListener &listener)
	: impl_(std::make_unique<Impl>(loop, opts, rooms, sink, listener))
{
	impl_->parse_url();
	if (opts.node_id.empty())
		throw std::runtime_error("redis broker: empty node id");
	ev_timer_init(&impl_->reconnect_timer, Impl::on_reconnect_timer, 0., 0.);
	impl_->reconnect_timer.data = impl_.get();
	ev_timer_init(&impl_->lease_timer, Impl::on_lease_timer, 0., 0.);
	impl_->lease_timer.data = impl_.get();
	impl_->connect();
}

RedisBroker::~RedisBroker()
{
	Impl &im = *impl_;
	// No callback acts from here on; freeing runs the pending ones (with
	// no reply) and they only release what they hold.  Nothing is
	// withdrawn from Redis: that is shutdown()'s job, and a broker
	// dropped without it is, to the other nodes, a node that died.
	im.dying = true;
	ev_timer_stop(im.loop, &im.reconnect_timer);
	ev_timer_stop(im.loop, &im.lease_timer);
	if (redisAsyncContext *c = std::exchange(im.cmd, nullptr))
		redisAsyncFree(c);
	if (redisAsyncContext *c = std::exchange(im.sub, nullptr))
		redisAsyncFree(c);
}

size_t RedisBroker::publish(const std::string &room, const RoomEvent &ev)
{
	Impl &im = *impl_;
	size_t n = deliver_local(im.rooms, im.sink, room, ev);
	// ev.except is a socket of this process: meaningless elsewhere.
	std::string msg;
	size_t guess = 64 + (ev.frame ? ev.frame->size() : 0);
	for (const auto &p : ev.per_user)
		guess += 24 + p.first.size() + (p.second ? p.second->size() : 0);
	msg.reserve(guess);
	put_field(msg, im.opts.node_id);
	put_field(msg, ev.frame ? std::string_view(ev.frame->data(), ev.frame->size())
				: std::string_view());
	if (ev.typing) {
		put_field(msg, ev.typing->typing ? "1" : "0");
		put_field(msg, ev.typing->user);
		put_field(msg, ev.typing->username);
	} else {
		put_field(msg, "");
		put_field(msg, "");
		put_field(msg, "");
	}
	for (const auto &p : ev.per_user) {
		// An empty frame stands for none (frames are never empty).
		put_field(msg, p.first);
		put_field(msg, p.second ? std::string_view(p.second->data(), p.second->size())
					: std::string_view());
	}
	im.publish_raw(kRoomPrefix + room, msg);
	return n;
}

size_t RedisBroker::publish_user(const std::string &user, const FramePtr &frame, SessionId except)
{
	Impl &im = *impl_;
	size_t n = deliver_user_local(im.rooms, im.sink, user, frame, except);
	std::string msg;
	msg.reserve(32 + im.opts.node_id.size() + frame->size());
	put_field(msg, im.opts.node_id);
	put_field(msg, std::string_view(frame->data(), frame->size()));
	im.publish_raw(kUserPrefix + user, msg);
	return n;
}

void RedisBroker::room_opened(const std::string &room)
{
	Impl &im = *impl_;
	if (!im.open_rooms.insert(room).second)
		return;
	std::string ch = kRoomPrefix + room;
	im.sub_command({"SUBSCRIBE", ch});
}

void RedisBroker::room_closed(const std::string &room)
{
	Impl &im = *impl_;
	if (!im.open_rooms.erase(room))
		return;
	std::string ch = kRoomPrefix + room;
	im.sub_command({"UNSUBSCRIBE", ch});
	// Nobody here to tell when that typing ends.
	auto it = im.remote_typing.lower_bound(std::make_pair(room, std::string()));
	while (it != im.remote_typing.end() && it->first.first == room)
		it = im.remote_typing.erase(it);
}

void RedisBroker::user_up(const std::string &user)
{
	Impl &im = *impl_;
	if (!im.local_users.insert(user).second)
		return;
	std::string ch = kUserPrefix + user;
	im.sub_command({"SUBSCRIBE", ch});
	if (!im.script(kScriptUp, Impl::Kind::Up, {user}, user))
		im.listener.presence_changed(user, true);
}

void RedisBroker::user_down(const std::string &user)
{
	Impl &im = *impl_;
	if (!im.local_users.erase(user))
		return;
	std::string ch = kUserPrefix + user;
	im.sub_command({"UNSUBSCRIBE", ch});
	if (!im.script(kScriptDown, Impl::Kind::Down, {user}, user))
		im.listener.presence_changed(user, false);
}

bool RedisBroker::online(const std::string &user) const
{
	return impl_->rooms.online(user) || impl_->online_remote(user);
}

bool RedisBroker::online_elsewhere(const std::string &user, SessionId except) const
{
	const auto &s = impl_->rooms.sessions_of(user);
	if (s.size() > 1 || (s.size() == 1 && s[0] != except))
		return true;
	return impl_->online_remote(user);
}

std::vector<std::string> RedisBroker::online_users() const
{
	std::vector<std::string> users = impl_->rooms.online_users();
	if (!impl_->up)
		return users;
	for (const auto &r : impl_->remote)
		if (!impl_->rooms.online(r.first))
			users.push_back(r.first);
	return users;
}

ClusterStats RedisBroker::stats() const
{
	ClusterStats s = impl_->st;
	s.connected = impl_->up;
	s.subscribed_rooms = impl_->up ? impl_->subscribed_rooms : 0;
	s.subscribed_users = impl_->up ? impl_->subscribed_users : 0;
	s.online_users = online_users().size();
	return s;
}

void RedisBroker::when_settled(std::function<void()> done)
{
	Impl &im = *impl_;
	if (!im.sub || !im.cmd || (im.sub_confirmed >= im.sub_sent && im.scripts_done >= im.scripts_sent)) {
		done();
		return;
	}
	im.waiters.push_back(Impl::Waiter{im.sub_sent, im.scripts_sent, std::move(done)});
}

bool RedisBroker::idle() const
{
	return impl_->inflight == 0;
}

void RedisBroker::shutdown()
{
	Impl &im = *impl_;
	if (im.shutting_down)
		return;
	im.shutting_down = true;
	ev_timer_stop(im.loop, &im.reconnect_timer);
	ev_timer_stop(im.loop, &im.lease_timer);
	// The leave script is sent while the link is still up; the command
	// connection then closes once its reply is in (redisAsyncDisconnect
	// waits for pending replies).  The reply names the users now offline
	// everywhere; they are pushed if the loop still runs then.
	bool sent = im.script(kScriptLeave, Impl::Kind::Leave, {});
	im.up = false;
	if (redisAsyncContext *c = std::exchange(im.sub, nullptr))
		redisAsyncFree(c);
	if (!im.cmd)
		return;
	if (sent) {
		redisAsyncDisconnect(im.cmd);
		return;
	}
	redisAsyncContext *c = std::exchange(im.cmd, nullptr);
	redisAsyncFree(c);
}

} // namespace qc
