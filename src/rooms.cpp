#include "qryptchat/rooms.hpp"

#include <algorithm>

namespace qc {

namespace {

const std::vector<SessionId> kNoSessions;
const std::string kNoUser;

// Removes one value from an unordered vector (swap with the last).
template <typename T> bool erase_value(std::vector<T> &v, const T &x)
{
	auto it = std::find(v.begin(), v.end(), x);
	if (it == v.end())
		return false;
	*it = std::move(v.back());
	v.pop_back();
	return true;
}

} // namespace

bool RoomTable::join(SessionId s, const std::string &room)
{
	auto &rooms = session_rooms_[s];
	if (std::find(rooms.begin(), rooms.end(), room) != rooms.end())
		return false;
	rooms.push_back(room);
	rooms_[room].push_back(s);
	return true;
}

bool RoomTable::leave(SessionId s, const std::string &room)
{
	auto sr = session_rooms_.find(s);
	if (sr == session_rooms_.end() || !erase_value(sr->second, room))
		return false;
	if (sr->second.empty())
		session_rooms_.erase(sr);
	auto r = rooms_.find(room);
	if (r != rooms_.end()) {
		erase_value(r->second, s);
		if (r->second.empty())
			rooms_.erase(r);
	}
	return true;
}

std::vector<std::string> RoomTable::leave_all(SessionId s)
{
	std::vector<std::string> left;
	auto sr = session_rooms_.find(s);
	if (sr == session_rooms_.end())
		return left;
	left = std::move(sr->second);
	session_rooms_.erase(sr);
	for (const auto &room : left) {
		auto r = rooms_.find(room);
		if (r == rooms_.end())
			continue;
		erase_value(r->second, s);
		if (r->second.empty())
			rooms_.erase(r);
	}
	return left;
}

const std::vector<SessionId> &RoomTable::members(const std::string &room) const
{
	auto r = rooms_.find(room);
	return r == rooms_.end() ? kNoSessions : r->second;
}

bool RoomTable::in_room(SessionId s, const std::string &room) const
{
	auto sr = session_rooms_.find(s);
	return sr != session_rooms_.end() &&
	       std::find(sr->second.begin(), sr->second.end(), room) != sr->second.end();
}

bool RoomTable::user_in_room(const std::string &user, const std::string &room, SessionId except) const
{
	for (SessionId s : sessions_of(user))
		if (s != except && in_room(s, room))
			return true;
	return false;
}

bool RoomTable::add_user_session(const std::string &user, SessionId s)
{
	session_user_[s] = user;
	auto &v = user_sessions_[user];
	bool first = v.empty();
	if (std::find(v.begin(), v.end(), s) == v.end())
		v.push_back(s);
	return first;
}

bool RoomTable::remove_user_session(const std::string &user, SessionId s)
{
	session_user_.erase(s);
	auto it = user_sessions_.find(user);
	if (it == user_sessions_.end() || !erase_value(it->second, s))
		return false;
	if (!it->second.empty())
		return false;
	user_sessions_.erase(it);
	return true;
}

bool RoomTable::online(const std::string &user) const { return user_sessions_.count(user) != 0; }

const std::vector<SessionId> &RoomTable::sessions_of(const std::string &user) const
{
	auto it = user_sessions_.find(user);
	return it == user_sessions_.end() ? kNoSessions : it->second;
}

const std::string &RoomTable::user_of(SessionId s) const
{
	auto it = session_user_.find(s);
	return it == session_user_.end() ? kNoUser : it->second;
}

bool RoomTable::typing_start(const std::string &room, const std::string &user,
			     const std::string &username, SessionId s, int64_t deadline_us)
{
	Key key{room, user};
	auto it = typing_.find(key);
	if (it != typing_.end()) {
		typing_deadlines_.erase({it->second.deadline_us, key});
		it->second.deadline_us = deadline_us;
		it->second.last_session = s;
		typing_deadlines_.insert({deadline_us, key});
		return false;
	}
	typing_.emplace(key, Typing{username, s, deadline_us});
	typing_deadlines_.insert({deadline_us, std::move(key)});
	return true;
}

std::optional<TypingEnded> RoomTable::typing_stop(const std::string &room, const std::string &user)
{
	Key key{room, user};
	auto it = typing_.find(key);
	if (it == typing_.end())
		return std::nullopt;
	TypingEnded ended{room, user, it->second.username, it->second.last_session};
	typing_deadlines_.erase({it->second.deadline_us, key});
	typing_.erase(it);
	return ended;
}

std::vector<TypingEnded> RoomTable::typing_expire(int64_t now_us)
{
	std::vector<TypingEnded> out;
	while (!typing_deadlines_.empty() && typing_deadlines_.begin()->first <= now_us) {
		Key key = typing_deadlines_.begin()->second;
		if (auto e = typing_stop(key.first, key.second))
			out.push_back(std::move(*e));
		else
			typing_deadlines_.erase(typing_deadlines_.begin());
	}
	return out;
}

std::optional<int64_t> RoomTable::typing_next_deadline() const
{
	if (typing_deadlines_.empty())
		return std::nullopt;
	return typing_deadlines_.begin()->first;
}

std::vector<std::string> RoomTable::typing_rooms_of(const std::string &user) const
{
	std::vector<std::string> out;
	for (const auto &t : typing_)
		if (t.first.second == user)
			out.push_back(t.first.first);
	return out;
}

bool RoomTable::typing(const std::string &room, const std::string &user) const
{
	return typing_.count({room, user}) != 0;
}

std::vector<std::string> RoomTable::online_users() const
{
	std::vector<std::string> out;
	out.reserve(user_sessions_.size());
	for (const auto &u : user_sessions_)
		out.push_back(u.first);
	std::sort(out.begin(), out.end());
	return out;
}

std::vector<std::string> RoomTable::rooms_of(SessionId s) const
{
	auto it = session_rooms_.find(s);
	return it == session_rooms_.end() ? std::vector<std::string>() : it->second;
}

} // namespace qc
