// broker_redis: the cluster broker, on Redis pub/sub (hiredis, driven by
// the server's libev loop).
//
// Fan-out: publish() delivers to this process's sockets at once, like the
// local broker, and publishes the event (its frames serialised once) on
// the room's channel; each node subscribes only to the rooms its sockets
// have joined and delivers what other nodes publish to its own sockets.
//
// Presence: each node keeps, in Redis, the users that have a socket on it,
// under a lease that it renews; a user is online while any node holds
// them.  A node that stops renewing (killed) has its users taken offline
// by the other nodes once its lease runs out, and the typing it had
// announced ended.
//
// Redis down: local fan-out and local presence carry on; the broker
// reconnects, re-subscribes and re-announces its users when Redis returns.
// Messages published meanwhile are not replayed: they are in the store,
// and clients recover them with afterSeq.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "qryptchat/broker.hpp"

struct ev_loop;

namespace qc {

struct RedisOptions {
	std::string url;                   // redis://host:port[/db] or unix:/path/to/socket
	std::string node_id;               // unique per node (a fresh one per process start)
	int64_t presence_ttl_ms = 15000;   // a silent node's users go offline after this
	int64_t reconnect_ms = 1000;       // delay between reconnection attempts
};

// Cluster-level figures for /stats.
struct ClusterStats {
	bool connected = false;            // the Redis connection is up
	uint64_t published = 0;            // events published to Redis
	uint64_t received = 0;             // events from other nodes delivered here
	uint64_t remote_deliveries = 0;    // frames queued here for events of other nodes
	uint64_t publish_failures = 0;     // events not published (Redis down)
	uint64_t reconnects = 0;           // connections re-established
	uint64_t nodes_expired = 0;        // dead nodes whose users this node took offline
	uint64_t subscribed_rooms = 0;     // gauge: room channels subscribed (confirmed by Redis)
	uint64_t subscribed_users = 0;     // gauge: user channels subscribed (confirmed by Redis)
	uint64_t online_users = 0;         // gauge: users online on any node
};

class RedisBroker final : public Broker
{
public:
	// Connects asynchronously (never blocks): until the connection is up
	// the broker behaves like the local one.
	RedisBroker(struct ev_loop *loop, const RedisOptions &opts, const RoomTable &rooms,
		    DeliverySink &sink, ClusterListener &listener);
	~RedisBroker() override;
	RedisBroker(const RedisBroker &) = delete;
	RedisBroker &operator=(const RedisBroker &) = delete;

	size_t publish(const std::string &room, const RoomEvent &ev) override;
	size_t publish_user(const std::string &user, const FramePtr &frame, SessionId except) override;
	void room_opened(const std::string &room) override;
	void room_closed(const std::string &room) override;
	void user_up(const std::string &user) override;
	void user_down(const std::string &user) override;
	bool online(const std::string &user) const override;
	bool online_elsewhere(const std::string &user, SessionId except) const override;
	std::vector<std::string> online_users() const override;
	bool cluster() const override { return true; }

	ClusterStats stats() const;
	// Calls `done` once every subscription asked for so far is confirmed by
	// Redis and every presence change sent so far has been answered (and
	// its pushes decided), or at once when nothing is pending or Redis is
	// down.
	void when_settled(std::function<void()> done);
	// No presence script is waiting for its reply: every user_up,
	// user_down and lease renewal sent so far has had its effect here.
	bool idle() const;
	// Withdraws this node's presence (its users go offline where no other
	// node holds them) and disconnects; for a clean shutdown.  The server
	// closes its sockets first, so normally nobody is left to withdraw;
	// users who are get user_offline pushed (by presence_changed) when
	// Redis answers, if the loop still runs then.  Without shutdown(),
	// destroying the broker is, to the other nodes, a node that died:
	// its users go offline when its lease runs out.
	void shutdown();

	struct Impl;

private:
	std::unique_ptr<Impl> impl_;
};

} // namespace qc
