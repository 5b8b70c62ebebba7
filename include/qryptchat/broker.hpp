// broker: publishes an encoded event to a room, and keeps presence.  The
// local broker delivers to the sockets of this process through a
// DeliverySink; the cluster broker (broker_redis.hpp) also publishes each
// event to the other nodes and keeps presence across them.
#pragma once

#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "qryptchat/protocol.hpp"
#include "qryptchat/rooms.hpp"

namespace qc {

// An event for one room, already serialised.
struct RoomEvent {
	FramePtr frame;                                     // what every socket gets...
	std::unordered_map<std::string, FramePtr> per_user; // ...unless its user has its own frame
							    // (null: that user's sockets get nothing)
	SessionId except = 0;                               // a socket that must not get it (0: none)
	// Set on typing_update events, so that a cluster broker can end the
	// typing that a node which died had announced.
	struct Typing {
		std::string user;
		std::string username;
		bool typing = false;
	};
	std::optional<Typing> typing;
};

// What a broker tells the server.
class ClusterListener
{
public:
	virtual ~ClusterListener() = default;
	// `user` came online (true) or went offline (false) across every node:
	// this process pushes user_online / user_offline to the user's
	// conversations.  Called on exactly one node per transition.
	virtual void presence_changed(const std::string &user, bool online) = 0;
};

// Where delivered frames go: the server queues them on the socket.
class DeliverySink
{
public:
	virtual ~DeliverySink() = default;
	virtual void deliver(SessionId s, const FramePtr &frame) = 0;
};

// Delivers an event to this process's sockets of the room (the local part
// of every broker's publish); returns how many it was queued to.
size_t deliver_local(const RoomTable &rooms, DeliverySink &sink, const std::string &room,
		     const RoomEvent &ev);
// Likewise for a frame to one user's sockets of this process.
size_t deliver_user_local(const RoomTable &rooms, DeliverySink &sink, const std::string &user,
			  const FramePtr &frame, SessionId except);

class Broker
{
public:
	virtual ~Broker() = default;
	// Delivers the event to every socket joined to the room; returns how
	// many sockets of this process it was queued to.
	virtual size_t publish(const std::string &room, const RoomEvent &ev) = 0;

	// Delivers a frame to every socket of `user` but `except`, on every
	// node; returns how many sockets of this process it was queued to.
	virtual size_t publish_user(const std::string &user, const FramePtr &frame, SessionId except) = 0;

	// The room got its first socket of this process, or lost its last.
	virtual void room_opened(const std::string &room) { (void)room; }
	virtual void room_closed(const std::string &room) { (void)room; }

	// Presence.  The user's first authenticated socket of this process
	// opened (user_up), or its last one closed (user_down); the broker
	// calls ClusterListener::presence_changed when that changes the
	// user's presence across the cluster.
	virtual void user_up(const std::string &user) = 0;
	virtual void user_down(const std::string &user) = 0;
	// Is the user online on any node?  And every such user.
	virtual bool online(const std::string &user) const = 0;
	// Has the user a socket other than `except`, on any node?
	virtual bool online_elsewhere(const std::string &user, SessionId except) const = 0;
	virtual std::vector<std::string> online_users() const = 0;
	// Do other processes' sockets get what this one publishes?
	virtual bool cluster() const { return false; }
};

// In-process fan-out over the room table; presence is this process's.
class LocalBroker final : public Broker
{
public:
	LocalBroker(const RoomTable &rooms, DeliverySink &sink, ClusterListener &listener)
		: rooms_(rooms), sink_(sink), listener_(listener)
	{
	}
	size_t publish(const std::string &room, const RoomEvent &ev) override;
	size_t publish_user(const std::string &user, const FramePtr &frame, SessionId except) override
	{
		return deliver_user_local(rooms_, sink_, user, frame, except);
	}
	void user_up(const std::string &user) override { listener_.presence_changed(user, true); }
	void user_down(const std::string &user) override { listener_.presence_changed(user, false); }
	bool online(const std::string &user) const override { return rooms_.online(user); }
	bool online_elsewhere(const std::string &user, SessionId except) const override
	{
		const auto &s = rooms_.sessions_of(user);
		return s.size() > 1 || (s.size() == 1 && s[0] != except);
	}
	std::vector<std::string> online_users() const override { return rooms_.online_users(); }

private:
	const RoomTable &rooms_;
	DeliverySink &sink_;
	ClusterListener &listener_;
};

} // namespace qc
