// rooms: the room ↔ socket ↔ user index, presence transitions, typing.
#include <algorithm>

#include "cmocka.hpp"
#include "qryptchat/rooms.hpp"

using namespace qc;

static bool has(const std::vector<SessionId> &v, SessionId s)
{
	return std::find(v.begin(), v.end(), s) != v.end();
}

static void test_join_leave(void **)
{
	RoomTable t;
	assert_true(t.join(1, "a"));
	assert_false(t.join(1, "a")); // twice is harmless
	assert_true(t.join(2, "a"));
	assert_true(t.join(1, "b"));
	assert_int_equal(t.members("a").size(), 2);
	assert_int_equal(t.room_count(), 2);
	assert_true(t.in_room(1, "b"));
	assert_true(t.leave(1, "a"));
	assert_false(t.leave(1, "a"));
	assert_false(has(t.members("a"), 1));
	assert_true(t.leave(2, "a"));
	assert_int_equal(t.room_count(), 1); // empty room freed
	assert_true(t.members("a").empty());
	assert_false(t.leave(9, "zzz"));
}

static void test_leave_all_frees(void **)
{
	RoomTable t;
	for (SessionId s = 1; s <= 100; s++)
		t.join(s, "big");
	t.join(5, "x");
	t.join(5, "y");
	auto left = t.leave_all(5);
	assert_int_equal(left.size(), 3);
	assert_int_equal(t.members("big").size(), 99);
	assert_int_equal(t.room_count(), 1);
	assert_int_equal(t.joined_session_count(), 99);
	for (SessionId s = 1; s <= 100; s++)
		t.leave_all(s);
	assert_int_equal(t.room_count(), 0);
	assert_int_equal(t.joined_session_count(), 0);
	assert_true(t.leave_all(5).empty());
}

static void test_presence_transitions(void **)
{
	RoomTable t;
	assert_true(t.add_user_session("u", 1));   // first: online
	assert_false(t.add_user_session("u", 2));  // second device: nothing
	assert_true(t.online("u"));
	assert_str_eq(t.user_of(2), "u");
	assert_false(t.remove_user_session("u", 1));
	assert_true(t.online("u"));
	assert_true(t.remove_user_session("u", 2)); // last: offline
	assert_false(t.online("u"));
	assert_false(t.remove_user_session("u", 2));
	assert_str_eq(t.user_of(2), "");
	assert_int_equal(t.online_user_count(), 0);
}

static void test_user_in_room(void **)
{
	RoomTable t;
	t.add_user_session("u", 1);
	t.add_user_session("u", 2);
	t.join(1, "r");
	assert_true(t.user_in_room("u", "r"));
	assert_false(t.user_in_room("u", "r", 1)); // except socket 1
	t.join(2, "r");
	assert_true(t.user_in_room("u", "r", 1));
	assert_false(t.user_in_room("v", "r"));
}

static void test_typing(void **)
{
	RoomTable t;
	assert_true(t.typing_start("r", "u", "uname", 1, 1000));  // push due
	assert_false(t.typing_start("r", "u", "uname", 2, 2000)); // refresh only
	assert_true(t.typing("r", "u"));
	assert_int_equal(*t.typing_next_deadline(), 2000);
	assert_true(t.typing_expire(1999).empty());
	auto e = t.typing_expire(2000);
	assert_int_equal(e.size(), 1);
	assert_str_eq(e[0].username, "uname");
	assert_int_equal(e[0].last_session, 2); // the last typing_start's socket
	assert_false(t.typing("r", "u"));
	assert_false(t.typing_next_deadline().has_value());

	assert_true(t.typing_start("r", "u", "uname", 1, 5000));
	assert_true(t.typing_start("s", "u", "uname", 1, 4000));
	assert_true(t.typing_start("r", "v", "vname", 3, 3000));
	assert_int_equal(*t.typing_next_deadline(), 3000);
	auto rooms = t.typing_rooms_of("u");
	assert_int_equal(rooms.size(), 2);
	auto stopped = t.typing_stop("r", "u");
	assert_true(stopped.has_value());
	assert_false(t.typing_stop("r", "u").has_value()); // no change, no push
	e = t.typing_expire(10000);
	assert_int_equal(e.size(), 2);
	assert_str_eq(e[0].user, "v"); // in deadline order
	assert_str_eq(e[1].room, "s");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_join_leave),    cmocka_unit_test(test_leave_all_frees),
		cmocka_unit_test(test_presence_transitions), cmocka_unit_test(test_user_in_room),
		cmocka_unit_test(test_typing),
	};
	return cmocka_run_group_tests_name("rooms", tests, nullptr, nullptr);
}
