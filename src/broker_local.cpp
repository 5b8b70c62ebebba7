#include "qryptchat/broker.hpp"

namespace qc {

size_t LocalBroker::publish(const std::string &room, const RoomEvent &ev)
{
	size_t n = 0;
	// The sink only queues (writes happen on WRITEABLE), so the member list
	// cannot change under this loop.
	for (SessionId s : rooms_.members(room)) {
		if (s == ev.except)
			continue;
		const FramePtr *f = &ev.frame;
		if (!ev.per_user.empty()) {
			auto it = ev.per_user.find(rooms_.user_of(s));
			if (it != ev.per_user.end())
				f = &it->second;
		}
		sink_.deliver(s, *f);
		n++;
	}
	return n;
}

} // namespace qc
