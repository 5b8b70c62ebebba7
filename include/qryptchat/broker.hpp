// broker: publishes an encoded event to a room.  The local broker delivers
// to the sockets of this process through a DeliverySink; a cluster broker
// (Redis) can later publish the same event to other nodes as well.
#pragma once

#include <string>
#include <unordered_map>

#include "qryptchat/protocol.hpp"
#include "qryptchat/rooms.hpp"

namespace qc {

// An event for one room, already serialised.
struct RoomEvent {
	FramePtr frame;                                     // what every socket gets...
	std::unordered_map<std::string, FramePtr> per_user; // ...unless its user has its own frame
	SessionId except = 0;                               // a socket that must not get it (0: none)
};

// Where delivered frames go: the server queues them on the socket.
class DeliverySink
{
public:
	virtual ~DeliverySink() = default;
	virtual void deliver(SessionId s, const FramePtr &frame) = 0;
};

class Broker
{
public:
	virtual ~Broker() = default;
	// Delivers the event to every socket joined to the room; returns how
	// many sockets of this process it was queued to.
	virtual size_t publish(const std::string &room, const RoomEvent &ev) = 0;
};

// In-process fan-out over the room table.
class LocalBroker final : public Broker
{
public:
	LocalBroker(const RoomTable &rooms, DeliverySink &sink) : rooms_(rooms), sink_(sink) {}
	size_t publish(const std::string &room, const RoomEvent &ev) override;

private:
	const RoomTable &rooms_;
	DeliverySink &sink_;
};

} // namespace qc
