// rooms: the in-memory index that drives every push.  Room → sockets,
// socket → rooms, user → sockets (presence), and typing state.  No I/O:
// callers learn from the return values what changed and push accordingly.
//
// A room is a conversation id.  Rooms exist while at least one socket is
// joined; an empty room is freed at once.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace qc {

// Identifies a connection for its whole life; never reused in a process.
using SessionId = uint64_t;

// A typing state that ended by itself (expiry) or by leave/close.
struct TypingEnded {
	std::string room;
	std::string user;
	std::string username;
	SessionId last_session = 0; // the socket that sent the last typing_start
};

class RoomTable
{
public:
	// Membership.  join/leave return false when nothing changed.
	bool join(SessionId s, const std::string &room);
	bool leave(SessionId s, const std::string &room);
	// Removes the socket from every room; returns the rooms it was in.
	std::vector<std::string> leave_all(SessionId s);
	// The rooms a socket is joined to (a copy: callers may leave them).
	std::vector<std::string> rooms_of(SessionId s) const;
	// Sockets joined to a room (empty when the room does not exist).  The
	// reference is valid until the next change to that room.
	const std::vector<SessionId> &members(const std::string &room) const;
	bool in_room(SessionId s, const std::string &room) const;
	// Does `user` have a socket other than `except` in `room`?
	bool user_in_room(const std::string &user, const std::string &room, SessionId except = 0) const;

	// Presence.  add returns true when the user came online (first
	// authenticated socket); remove returns true when the user went
	// offline (last one closed).
	bool add_user_session(const std::string &user, SessionId s);
	bool remove_user_session(const std::string &user, SessionId s);
	bool online(const std::string &user) const;
	const std::vector<SessionId> &sessions_of(const std::string &user) const;
	// The user a socket authenticated as ("" if none).
	const std::string &user_of(SessionId s) const;

	// Typing.  start returns true when the user was not typing in the room
	// (a push is due); a repeated start only moves the deadline.  stop
	// returns the ended state when the user was typing.
	bool typing_start(const std::string &room, const std::string &user, const std::string &username,
			  SessionId s, int64_t deadline_us);
	std::optional<TypingEnded> typing_stop(const std::string &room, const std::string &user);
	// Removes and returns every typing state whose deadline is ≤ now_us.
	std::vector<TypingEnded> typing_expire(int64_t now_us);
	// Earliest typing deadline, if anyone is typing.
	std::optional<int64_t> typing_next_deadline() const;
	// Rooms in which `user` is typing.
	std::vector<std::string> typing_rooms_of(const std::string &user) const;
	bool typing(const std::string &room, const std::string &user) const;

	// Gauges for /stats.
	size_t room_count() const { return rooms_.size(); }
	size_t joined_session_count() const { return session_rooms_.size(); }
	size_t online_user_count() const { return user_sessions_.size(); }
	size_t authenticated_session_count() const { return session_user_.size(); }
	std::vector<std::string> online_users() const;

private:
	using Key = std::pair<std::string, std::string>; // room, user
	struct Typing {
		std::string username;
		SessionId last_session = 0;
		int64_t deadline_us = 0;
	};
	std::unordered_map<std::string, std::vector<SessionId>> rooms_;
	std::unordered_map<SessionId, std::vector<std::string>> session_rooms_;
	std::unordered_map<std::string, std::vector<SessionId>> user_sessions_;
	std::unordered_map<SessionId, std::string> session_user_;
	std::map<Key, Typing> typing_;
	std::set<std::pair<int64_t, Key>> typing_deadlines_; // ordered by deadline
};

} // namespace qc
