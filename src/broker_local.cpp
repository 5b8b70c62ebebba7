#include "qryptchat/broker.hpp"

namespace qc {

size_t deliver_local(const RoomTable &rooms, DeliverySink &sink, const std::string &room,
		     const RoomEvent &ev)
{
	size_t n = 0;
	// The sink only queues (writes happen on WRITEABLE), so the member list
	// cannot change under this loop.
	for (SessionId s : rooms.members(room)) {
		if (s == ev.except)
			continue;
		const FramePtr *f = &ev.frame;
		if (!ev.per_user.empty()) {
			auto it = ev.per_user.find(rooms.user_of(s));
			if (it != ev.per_user.end()) {
				if (!it->second)
					continue;
				f = &it->second;
			}
		}
		sink.deliver(s, *f);
		n++;
	}
	return n;
}

size_t deliver_user_local(const RoomTable &rooms, DeliverySink &sink, const std::string &user,
			  const FramePtr &frame, SessionId except)
{
	size_t n = 0;
	for (SessionId s : rooms.sessions_of(user))
		if (s != except) {
			sink.deliver(s, frame);
			n++;
		}
	return n;
}

size_t LocalBroker::publish(const std::string &room, const RoomEvent &ev)
{
	return deliver_local(rooms_, sink_, room, ev);
}

} // namespace qc
