// Conversations, messages, history, rooms, typing and presence against the
// real binary (PROTOCOL.md §5 and §6): every request with its field rules,
// error codes and push audiences; paging without gaps; a restart on the
// same database; and kill -9 while clients send.
#include <algorithm>
#include <cstdlib>
#include <map>
#include <random>
#include <set>
#include <vector>

#include <poll.h>
#include <sys/socket.h>
#include <sqlite3.h>

#include "common.hpp"

using namespace qc::test;

namespace {

// The shared server: small limits so that each one can be met and passed.
std::unique_ptr<ServerProcess> g_server;

int port() { return g_server->port(); }

std::string profile(const std::string &username, const std::string &name)
{
	return "\"user_metadata\":{\"username\":" + jquote(username) + ",\"full_name\":" + jquote(name) +
	       "}";
}

// An authenticated socket of `id`, whose username is `id` and whose display
// name is "Name of <id>".
std::unique_ptr<WsClient> user(const std::string &id, int p = 0)
{
	auto c = connect_as(p ? p : port(), id, profile(id, "Name of " + id));
	if (!c)
		fail_msg("cannot connect as %s", id.c_str());
	return c;
}

// Creates a conversation with this payload; returns the reply.
Json create(WsClient &c, const std::string &payload, const std::string &rid = "cc")
{
	send_request(c, "create_conversation", payload, rid);
	Json j = expect_frame(c, "conversation_created");
	assert_str_eq(jstr(j.get(), "requestId"), rid);
	return j;
}

std::string create_group(WsClient &c, const std::vector<std::string> &others,
			 const std::string &name = "a group")
{
	Json j = create(c, "{\"type\":\"group\",\"participant_ids\":" + ids_json(others) +
				   ",\"name\":" + jquote(name) + "}");
	return jstr(j.get(), "payload.conversation.id");
}

std::string create_direct(WsClient &c, const std::string &other)
{
	Json j = create(c, "{\"participantIds\":[" + jquote(other) + "]}");
	return jstr(j.get(), "payload.conversation.id");
}

Json join(WsClient &c, const std::string &conv)
{
	send_request(c, "join_conversation", conv_payload(conv), "join");
	Json j = expect_frame(c, "conversation_joined");
	assert_str_eq(jstr(j.get(), "payload.conversationId"), conv);
	return j;
}

// Sends a message and returns the `message_sent` reply.
Json send(WsClient &c, const std::string &conv, const std::string &fields, const std::string &rid = "s")
{
	send_request(c, "send_message", conv_payload(conv, fields), rid);
	Json j = expect_frame(c, "message_sent");
	assert_str_eq(jstr(j.get(), "requestId"), rid);
	return j;
}

Json send_text(WsClient &c, const std::string &conv, const std::string &text)
{
	return send(c, conv, "\"content\":" + jquote(text));
}

Json load(WsClient &c, const std::string &conv, const std::string &more = "",
	  const char *type = "load_messages")
{
	send_request(c, type, conv_payload(conv, more), "ld");
	Json j = expect_frame(c, "messages_loaded");
	assert_str_eq(jstr(j.get(), "payload.conversationId"), conv);
	return j;
}

// The conversation `conv` in the caller's load_conversations list.
Json conversations(WsClient &c)
{
	send_request(c, "load_conversations", "{}", "lc");
	return expect_frame(c, "conversations_loaded");
}

const cJSON *find_conv(const cJSON *list, const std::string &conv)
{
	const cJSON *arr = jget(list, "payload.conversations");
	const cJSON *item;
	cJSON_ArrayForEach(item, arr)
	{
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(item, "id");
		if (cJSON_IsString(id) && conv == id->valuestring)
			return item;
	}
	return nullptr;
}

// A conversations_loaded list is ordered by last activity, newest first
// (ISO 8601 UTC strings of one format compare as times).
void expect_recent_first(const cJSON *list)
{
	int n = jsize(list, "payload.conversations");
	for (int i = 1; i < n; i++) {
		std::string prev = jstr(list, "payload.conversations." + std::to_string(i - 1) + ".updated_at");
		std::string cur = jstr(list, "payload.conversations." + std::to_string(i) + ".updated_at");
		if (prev < cur)
			fail_msg("conversation %d (%s) is listed before a more recent one (%s)", i - 1,
				 prev.c_str(), cur.c_str());
	}
}

bool is_uuid_v7(const std::string &s)
{
	if (s.size() != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-')
		return false;
	for (size_t i = 0; i < s.size(); i++)
		if (i != 8 && i != 13 && i != 18 && i != 23 && !isxdigit(static_cast<unsigned char>(s[i])))
			return false;
	return s[14] == '7' && std::string("89ab").find(s[19]) != std::string::npos;
}

// A user known to the server (authenticated once) and now offline: the
// server sees a close asynchronously, so poll /stats until it has (5 s).
void known_offline(const std::string &id)
{
	user(id).reset();
	for (int i = 0; i < 500; i++) {
		Json j = http_json(http_request(port(), "GET", "/stats"));
		bool online = false;
		const cJSON *item;
		cJSON_ArrayForEach(item, jget(j.get(), "roomStats.onlineUsers")) online |=
			cJSON_IsString(item) && id == item->valuestring;
		if (!online)
			return;
		poll(nullptr, 0, 10);
	}
	fail_msg("%s is still online 5 s after closing", id.c_str());
}

} // namespace

// --- access --------------------------------------------------------------

static void test_requests_need_auth(void **)
{
	auto c = ws(*g_server);
	for (const char *t : {"load_conversations", "create_conversation", "join_conversation",
			      "leave_conversation", "send_message", "load_messages",
			      "load_more_messages", "typing_start", "typing_stop"}) {
		send_request(*c, t, "{\"conversationId\":\"x\"}", t);
		Json j = expect_error(*c, "AUTH_REQUIRED");
		assert_str_eq(jstr(j.get(), "payload.requestId"), t);
	}
	send_request(*c, "ping", "{}", "p");
	Json j = expect_frame(*c, "pong");
	assert_str_eq(jstr(j.get(), "requestId"), "p");
}

// Every conversation request: missing id INVALID_DATA; unknown id and a
// conversation of others ACCESS_DENIED, indistinguishably.
static void test_conversation_access(void **)
{
	auto a = user("acc-a"), b = user("acc-b"), x = user("acc-x");
	std::string conv = create_direct(*a, "acc-b");
	expect_frame(*b, "conversation_created");
	const char *types[] = {"join_conversation", "leave_conversation", "send_message",
			       "load_messages", "load_more_messages", "typing_start", "typing_stop"};
	for (const char *t : types) {
		// The conversationId is checked first, whatever else is wrong.
		send_request(*x, t, "{\"content\":\"\",\"limit\":-1}");
		expect_error(*x, "INVALID_DATA");
		send_request(*x, t, "{\"conversationId\":42}");
		expect_error(*x, "INVALID_DATA");
		send_request(*x, t, "{\"conversationId\":\"\"}");
		expect_error(*x, "INVALID_DATA");
		// Then access, before the other fields.
		Json j1, j2;
		send_request(*x, t, conv_payload(conv, "\"content\":\"\",\"limit\":-1"), "r1");
		j1 = expect_error(*x, "ACCESS_DENIED");
		send_request(*x, t,
			     conv_payload("0190a0b0-0000-7000-8000-000000000000",
					  "\"content\":\"\",\"limit\":-1"),
			     "r2");
		j2 = expect_error(*x, "ACCESS_DENIED");
		assert_str_eq(jstr(j1.get(), "payload.error"), jstr(j2.get(), "payload.error"));
	}
	// Nothing was pushed to the participants by any of that.
	expect_quiet(*a);
	expect_quiet(*b);
}

// --- load_conversations and create_conversation ---------------------------

static void test_conversation_objects(void **)
{
	auto a = user("obj-a"), b = user("obj-b"), c = user("obj-c");
	send_request(*a, "load_conversations", "{}", "lc0");
	Json j = expect_frame(*a, "conversations_loaded");
	assert_str_eq(jstr(j.get(), "requestId"), "lc0");
	assert_int_equal(jsize(j.get(), "payload.conversations"), 0);

	std::string group = create_group(*a, {"obj-b", "obj-c"}, "Team");
	std::string direct = create_direct(*a, "obj-b");
	expect_frame(*b, "conversation_created");
	expect_frame(*b, "conversation_created");
	expect_frame(*c, "conversation_created");

	j = conversations(*a);
	assert_int_equal(jsize(j.get(), "payload.conversations"), 2);
	// Most recent activity first (creation, then the newest message); two
	// in the same millisecond may come in either order.
	expect_recent_first(j.get());
	const cJSON *g = find_conv(j.get(), group);
	assert_non_null(g);
	assert_str_eq(jstr(g, "conversation_id"), group);
	assert_str_eq(jstr(g, "type"), "group");
	assert_str_eq(jstr(g, "conversation_type"), "group");
	assert_str_eq(jstr(g, "name"), "Team");
	assert_str_eq(jstr(g, "conversation_name"), "Team");
	assert_true(jnull(g, "avatar_url"));
	assert_true(jnull(g, "conversation_avatar_url"));
	assert_str_eq(jstr(g, "created_by"), "obj-a");
	assert_contains(jstr(g, "created_at"), "Z");
	assert_contains(jstr(g, "updated_at"), "Z");
	assert_int_equal(jnum(g, "participant_count"), 3);
	assert_int_equal(jsize(g, "participants"), 3);
	std::map<std::string, std::string> roles;
	for (int i = 0; i < 3; i++) {
		std::string p = "participants." + std::to_string(i);
		roles[jstr(g, p + ".id")] = jstr(g, p + ".role");
		assert_str_eq(jstr(g, p + ".username"), jstr(g, p + ".id"));
		assert_str_eq(jstr(g, p + ".display_name"), "Name of " + jstr(g, p + ".id"));
		assert_true(jnull(g, p + ".avatar_url"));
	}
	assert_str_eq(roles["obj-a"], "admin");
	assert_str_eq(roles["obj-b"], "member");
	assert_str_eq(roles["obj-c"], "member");
	for (const char *k : {"latest_message_id", "latest_message_content", "latest_message_sender_id",
			      "latest_message_sender_username", "latest_message_created_at",
			      "last_message_at"})
		assert_true(jnull(g, k));
	assert_int_equal(jnum(g, "unread_count"), 0);

	// A direct conversation is named after the other side, for each side.
	const cJSON *d = find_conv(j.get(), direct);
	assert_str_eq(jstr(d, "type"), "direct");
	assert_str_eq(jstr(d, "name"), "Name of obj-b");
	j = conversations(*b);
	assert_str_eq(jstr(find_conv(j.get(), direct), "name"), "Name of obj-a");
	// c is in the group only.
	j = conversations(*c);
	assert_int_equal(jsize(j.get(), "payload.conversations"), 1);

	// A message moves the group to the top and fills the latest_ fields.
	join(*b, group);
	Json sent = send_text(*b, group, "hello team");
	expect_frame(*b, "message_received");
	expect_frame(*a, "message_received"); // the creator's socket is in the room
	j = conversations(*a);
	expect_recent_first(j.get());
	g = find_conv(j.get(), group);
	assert_str_eq(jstr(g, "updated_at"), jstr(sent.get(), "payload.message.created_at"));
	assert_true(jstr(g, "updated_at") >= jstr(find_conv(j.get(), direct), "updated_at"));
	assert_str_eq(jstr(g, "latest_message_id"), jstr(sent.get(), "payload.message.id"));
	assert_str_eq(jstr(g, "latest_message_content"), "hello team");
	assert_str_eq(jstr(g, "latest_message_sender_id"), "obj-b");
	assert_str_eq(jstr(g, "latest_message_sender_username"), "obj-b");
	assert_str_eq(jstr(g, "latest_message_created_at"), jstr(sent.get(), "payload.message.created_at"));
	assert_str_eq(jstr(g, "last_message_at"), jstr(sent.get(), "payload.message.created_at"));
	assert_int_equal(jnum(g, "unread_count"), 1);
	// The sender's own message is not unread for the sender.
	j = conversations(*b);
	assert_int_equal(jnum(find_conv(j.get(), group), "unread_count"), 0);
}

static void test_create_shapes_and_rules(void **)
{
	auto a = user("cr-a");
	auto b = user("cr-b");
	auto c = user("cr-c");
	auto d = user("cr-d");
	auto e = user("cr-e");
	// participantIds with one other and no flag: direct.
	Json j = create(*a, "{\"participantIds\":[\"cr-b\"]}");
	assert_str_eq(jstr(j.get(), "payload.conversation.type"), "direct");
	// isGroup: a group even with one other; the caller in the list and
	// duplicates are ignored.
	j = create(*a, "{\"participantIds\":[\"cr-a\",\"cr-b\",\"cr-b\"],\"isGroup\":true,\"name\":\"Pair\"}");
	assert_str_eq(jstr(j.get(), "payload.conversation.type"), "group");
	assert_str_eq(jstr(j.get(), "payload.conversation.name"), "Pair");
	assert_int_equal(jnum(j.get(), "payload.conversation.participant_count"), 2);
	// Two others and no flag: a group, without a name.
	j = create(*a, "{\"participantIds\":[\"cr-b\",\"cr-c\"]}");
	assert_str_eq(jstr(j.get(), "payload.conversation.type"), "group");
	assert_true(jnull(j.get(), "payload.conversation.name"));
	// The snake_case shape.
	j = create(*a, "{\"type\":\"group\",\"participant_ids\":[\"cr-c\"],\"name\":\"\"}");
	assert_str_eq(jstr(j.get(), "payload.conversation.type"), "group");
	assert_true(jnull(j.get(), "payload.conversation.name")); // empty name is no name
	j = create(*a, "{\"type\":\"direct\",\"participant_ids\":[\"cr-c\"],\"name\":\"ignored\"}");
	assert_str_eq(jstr(j.get(), "payload.conversation.type"), "direct");
	assert_str_eq(jstr(j.get(), "payload.conversation.name"), "Name of cr-c");
	// Nulls count as absent.
	j = create(*a, "{\"participantIds\":null,\"participant_ids\":[\"cr-d\"],\"isGroup\":null,\"type\":null,\"name\":null}");
	assert_str_eq(jstr(j.get(), "payload.conversation.type"), "direct");
	// max_group_size 4 in all (the creator included).
	j = create(*a, "{\"participantIds\":[\"cr-b\",\"cr-c\",\"cr-d\"]}");
	assert_int_equal(jnum(j.get(), "payload.conversation.participant_count"), 4);

	struct Bad {
		const char *payload;
		const char *code;
	} bad[] = {
		{"{}", "INVALID_DATA"},
		{"{\"participantIds\":\"cr-b\"}", "INVALID_DATA"},
		{"{\"participantIds\":[]}", "INVALID_DATA"},
		{"{\"participantIds\":[\"cr-a\"]}", "INVALID_DATA"},  // only the caller
		{"{\"participantIds\":[42]}", "INVALID_DATA"},
		{"{\"participantIds\":[\"\"]}", "INVALID_DATA"},
		{"{\"type\":\"direct\",\"participant_ids\":[\"cr-b\",\"cr-c\"]}", "INVALID_DATA"},
		{"{\"type\":\"group\",\"participant_ids\":[]}", "INVALID_DATA"},
		{"{\"type\":\"channel\",\"participant_ids\":[\"cr-b\"]}", "INVALID_DATA"},
		{"{\"participantIds\":[\"cr-b\"],\"isGroup\":\"yes\"}", "INVALID_DATA"},
		{"{\"type\":\"direct\",\"isGroup\":true,\"participantIds\":[\"cr-b\"]}", "INVALID_DATA"},
		{"{\"participantIds\":[\"cr-b\",\"cr-c\",\"cr-d\",\"cr-e\"]}", "INVALID_DATA"}, // 5 > 4
		{"{\"participantIds\":[\"cr-b\",\"cr-c\"],\"name\":7}", "INVALID_DATA"},
	};
	for (const auto &x : bad) {
		send_request(*a, "create_conversation", x.payload, "bad");
		Json err = expect_error(*a, x.code);
		assert_str_eq(jstr(err.get(), "payload.requestId"), "bad");
	}
	// name: 100 characters (not bytes) pass, 101 do not.
	std::string hundred;
	for (int i = 0; i < 100; i++)
		hundred += "\xc3\xa9"; // é, two bytes
	j = create(*a, "{\"participantIds\":[\"cr-b\",\"cr-c\"],\"name\":" + jquote(hundred) + "}");
	assert_str_eq(jstr(j.get(), "payload.conversation.name"), hundred);
	send_request(*a, "create_conversation",
		     "{\"participantIds\":[\"cr-b\",\"cr-c\"],\"name\":" + jquote(hundred + "x") + "}");
	expect_error(*a, "INVALID_DATA");

	// Unknown users: USER_NOT_FOUND naming the id, nothing created.
	send_request(*a, "create_conversation", "{\"participantIds\":[\"cr-b\",\"cr-nobody\"]}", "nf");
	Json err = expect_error(*a, "USER_NOT_FOUND");
	assert_contains(jstr(err.get(), "payload.error"), "cr-nobody");
	j = conversations(*a);
	int count = jsize(j.get(), "payload.conversations");
	assert_int_equal(count, 8);
	// The successful creates pushed to their participants; the refusals
	// pushed nothing.
	struct Pushes {
		WsClient *c;
		int n;
	} pushes[] = {{b.get(), 5}, {c.get(), 5}, {d.get(), 2}, {e.get(), 0}};
	for (const auto &x : pushes) {
		for (int i = 0; i < x.n; i++)
			expect_frame(*x.c, "conversation_created");
		expect_quiet(*x.c);
	}
}

static void test_direct_is_created_once(void **)
{
	auto a = user("dd-a"), b = user("dd-b");
	auto a2 = user("dd-a");
	Json first = create(*a, "{\"participantIds\":[\"dd-b\"]}");
	std::string conv = jstr(first.get(), "payload.conversation.id");
	expect_frame(*a2, "conversation_created");
	expect_frame(*b, "conversation_created");
	// Again, in either direction and either shape: the same conversation,
	// and nothing pushed.
	Json again = create(*a2, "{\"type\":\"direct\",\"participant_ids\":[\"dd-b\"]}");
	assert_str_eq(jstr(again.get(), "payload.conversation.id"), conv);
	Json back = create(*b, "{\"participantIds\":[\"dd-a\"]}");
	assert_str_eq(jstr(back.get(), "payload.conversation.id"), conv);
	assert_str_eq(jstr(back.get(), "payload.conversation.name"), "Name of dd-a");
	expect_quiet(*a);
	// The asking sockets were joined to the room: a message reaches them.
	Json m = send_text(*a, conv, "hi");
	for (auto *s : {a.get(), a2.get(), b.get()}) {
		Json r = expect_frame(*s, "message_received");
		assert_str_eq(jstr(r.get(), "payload.message.id"), jstr(m.get(), "payload.message.id"));
	}
	Json list = conversations(*a);
	int directs = 0;
	const cJSON *item;
	cJSON_ArrayForEach(item, jget(list.get(), "payload.conversations")) directs++;
	assert_int_equal(directs, 1);
}

// conversation_created goes to every other authenticated socket of every
// participant (the creator's other device included), as that user sees it;
// not to unauthenticated sockets or non-participants; nobody pushed is joined.
static void test_created_push_audience(void **)
{
	auto a1 = user("cp-a"), a2 = user("cp-a"), b = user("cp-b"), x = user("cp-x");
	known_offline("cp-c");
	auto anon = ws(*g_server);
	Json reply = create(*a1, "{\"participantIds\":[\"cp-b\",\"cp-c\"],\"name\":\"Trio\"}", "mk");
	std::string conv = jstr(reply.get(), "payload.conversation.id");
	Json p2 = expect_frame(*a2, "conversation_created");
	Json pb = expect_frame(*b, "conversation_created");
	assert_str_eq(jstr(p2.get(), "payload.conversation.id"), conv);
	assert_str_eq(jstr(pb.get(), "payload.conversation.id"), conv);
	assert_str_eq(jstr(pb.get(), "payload.conversation.name"), "Trio");
	// A push is not a reply: its requestId is not the creator's.
	assert_true(jstr(pb.get(), "requestId") != "mk");
	expect_quiet(*x);
	send_request(*anon, "ping");
	expect_frame(*anon, "pong");

	// A direct conversation is named after the other side in each push.
	Json d = create(*a1, "{\"participantIds\":[\"cp-b\"]}");
	assert_str_eq(jstr(d.get(), "payload.conversation.name"), "Name of cp-b");
	Json d2 = expect_frame(*a2, "conversation_created");
	assert_str_eq(jstr(d2.get(), "payload.conversation.name"), "Name of cp-b");
	Json db = expect_frame(*b, "conversation_created");
	assert_str_eq(jstr(db.get(), "payload.conversation.name"), "Name of cp-a");

	// Only the creating socket is in the room.
	send_text(*a1, conv, "only a1 hears this");
	expect_frame(*a1, "message_received");
	expect_quiet(*a2);
	expect_quiet(*b);
	// The offline participant sees it on the next load.
	auto c = user("cp-c");
	Json list = conversations(*c);
	const cJSON *g = find_conv(list.get(), conv);
	assert_non_null(g);
	assert_int_equal(jnum(g, "unread_count"), 1);
}

// --- rooms: join and leave ------------------------------------------------

static void test_join_and_leave(void **)
{
	auto a = user("jl-a"), b = user("jl-b");
	known_offline("jl-c");
	std::string conv = create_group(*a, {"jl-b", "jl-c"});
	expect_frame(*b, "conversation_created");
	// onlineUsers: the participants online now, the caller included.
	Json j = join(*b, conv);
	std::set<std::string> online;
	for (int i = 0; i < jsize(j.get(), "payload.onlineUsers"); i++)
		online.insert(jstr(j.get(), "payload.onlineUsers." + std::to_string(i)));
	assert_true((online == std::set<std::string>{"jl-a", "jl-b"}));
	// Joining twice is harmless: one delivery per message.
	join(*b, conv);
	Json m = send_text(*a, conv, "one");
	expect_frame(*a, "message_received");
	Json r = expect_frame(*b, "message_received");
	assert_str_eq(jstr(r.get(), "payload.message.id"), jstr(m.get(), "payload.message.id"));
	expect_quiet(*b);

	// Leave: the reply, and no more pushes; membership is unchanged.
	send_request(*b, "leave_conversation", conv_payload(conv), "lv");
	j = expect_frame(*b, "conversation_left");
	assert_str_eq(jstr(j.get(), "requestId"), "lv");
	assert_str_eq(jstr(j.get(), "payload.conversationId"), conv);
	send_text(*a, conv, "two");
	expect_frame(*a, "message_received");
	expect_quiet(*b);
	j = load(*b, conv);
	assert_true((seqs(j.get()) == std::vector<int>{1, 2}));
	// Leaving a room one is not in is harmless too; then join again.
	send_request(*b, "leave_conversation", conv_payload(conv));
	expect_frame(*b, "conversation_left");
	join(*b, conv);
	send_text(*a, conv, "three");
	expect_frame(*a, "message_received");
	expect_frame(*b, "message_received");
	// A socket that joined nothing gets replies and conversation_created only.
	auto b2 = user("jl-b");
	send_text(*a, conv, "four");
	expect_frame(*a, "message_received");
	expect_frame(*b, "message_received");
	expect_quiet(*b2);
}

// --- send_message ---------------------------------------------------------

static void test_send_message_fields(void **)
{
	auto a = user("sm-a"), a2 = user("sm-a"), b = user("sm-b");
	std::string conv = create_group(*a, {"sm-b"});
	expect_frame(*a2, "conversation_created");
	expect_frame(*b, "conversation_created");
	join(*a2, conv);
	join(*b, conv);

	Json sent = send(*a, conv, "\"content\":\"hello\"", "m1");
	const cJSON *m = jget(sent.get(), "payload.message");
	std::string id = jstr(m, "id");
	assert_true(is_uuid_v7(id));
	assert_str_eq(jstr(m, "conversation_id"), conv);
	assert_int_equal(jnum(m, "seq"), 1);
	assert_str_eq(jstr(m, "sender_id"), "sm-a");
	assert_str_eq(jstr(m, "message_type"), "text");
	assert_str_eq(jstr(m, "encrypted_content"), "hello");
	assert_true(jnull(m, "reply_to_id"));
	assert_true(jnull(m, "metadata"));
	assert_true(jnull(m, "client_message_id"));
	assert_contains(jstr(m, "created_at"), "Z");
	assert_true(jnull(m, "edited_at"));
	assert_true(jnull(m, "deleted_at"));
	assert_str_eq(jstr(m, "sender.id"), "sm-a");
	assert_str_eq(jstr(m, "sender.username"), "sm-a");
	assert_str_eq(jstr(m, "sender.display_name"), "Name of sm-a");
	assert_true(jnull(m, "sender.avatar_url"));
	assert_null(jget(m, "reply_to"));
	// message_received to every joined socket, the sender's included, with
	// the same message; never the compat flag.
	for (auto *s : {a.get(), a2.get(), b.get()}) {
		Json r = expect_frame(*s, "message_received");
		assert_str_eq(jstr(r.get(), "payload.message.id"), id);
		assert_int_equal(jnum(r.get(), "payload.message.seq"), 1);
		assert_str_eq(jstr(r.get(), "payload.message.encrypted_content"), "hello");
		assert_null(jget(r.get(), "payload.shouldReloadMessages"));
		assert_true(jstr(r.get(), "requestId") != "m1");
	}

	// Every field given: messageType, replyToId, metadata (stored as given),
	// clientMessageId.
	sent = send(*b, conv,
		    "\"content\":\"see attached\",\"messageType\":\"file\",\"replyToId\":" + jquote(id) +
			    ",\"metadata\":{\"name\":\"a.pdf\",\"size\":1234,\"tags\":[\"x\",null,true],\"n\":{\"k\":1.5}},"
			    "\"clientMessageId\":\"cm-1\"");
	m = jget(sent.get(), "payload.message");
	assert_int_equal(jnum(m, "seq"), 2);
	std::string id2 = jstr(m, "id");
	assert_true(id2 > id); // time-ordered
	assert_str_eq(jstr(m, "message_type"), "file");
	assert_str_eq(jstr(m, "reply_to_id"), id);
	assert_str_eq(jstr(m, "client_message_id"), "cm-1");
	char *meta = cJSON_PrintUnformatted(jget(m, "metadata"));
	assert_str_eq(meta, "{\"name\":\"a.pdf\",\"size\":1234,\"tags\":[\"x\",null,true],\"n\":{\"k\":1.5}}");
	cJSON_free(meta);
	for (auto *s : {a.get(), a2.get(), b.get()}) {
		Json r = expect_frame(*s, "message_received");
		assert_str_eq(jstr(r.get(), "payload.message.reply_to_id"), id);
	}
	send(*a, conv, "\"content\":\"pic\",\"messageType\":\"image\",\"metadata\":null,\"replyToId\":null");
	for (auto *s : {a.get(), a2.get(), b.get()})
		expect_frame(*s, "message_received");

	// Loads carry reply_to.
	Json page = load(*a, conv);
	assert_true((seqs(page.get()) == std::vector<int>{1, 2, 3}));
	assert_str_eq(jstr(page.get(), "payload.messages.1.reply_to.id"), id);
	assert_str_eq(jstr(page.get(), "payload.messages.1.reply_to.sender_id"), "sm-a");
	assert_str_eq(jstr(page.get(), "payload.messages.1.reply_to.encrypted_content"), "hello");
	assert_null(jget(page.get(), "payload.messages.0.reply_to"));
	assert_str_eq(jstr(page.get(), "payload.messages.2.message_type"), "image");
	assert_true(jnull(page.get(), "payload.messages.2.metadata"));

	// A reply to a message of another conversation, or to none.
	std::string other = create_direct(*a, "sm-b");
	expect_frame(*a2, "conversation_created");
	expect_frame(*b, "conversation_created");
	Json o = send_text(*a, other, "elsewhere");
	expect_frame(*a, "message_received"); // a created it, so a is in its room
	send_request(*a, "send_message", conv_payload(conv, "\"content\":\"x\",\"replyToId\":" +
								jquote(jstr(o.get(), "payload.message.id"))));
	expect_error(*a, "MESSAGE_NOT_FOUND");
	send_request(*a, "send_message",
		     conv_payload(conv, "\"content\":\"x\",\"replyToId\":\"0190a0b0-0000-7000-8000-000000000000\""));
	expect_error(*a, "MESSAGE_NOT_FOUND");

	// Field rules (max_content_bytes 1024, max_metadata_bytes 256 here).
	std::string k1024(1024, 'k');
	send(*a, conv, "\"content\":" + jquote(k1024));
	for (auto *s : {a.get(), a2.get(), b.get()})
		expect_frame(*s, "message_received");
	const std::string bad[] = {
		"",                                                 // neither
		"\"content\":\"\"",                                 // empty
		"\"content\":" + jquote(k1024 + "k"),               // too long
		"\"content\":42",
		"\"content\":\"x\",\"encryptedContents\":{\"sm-a\":\"y\"}", // both
		"\"content\":null,\"encryptedContents\":null",
		"\"content\":\"x\",\"messageType\":\"video\"",
		"\"content\":\"x\",\"messageType\":1",
		"\"content\":\"x\",\"metadata\":[1,2]",
		"\"content\":\"x\",\"metadata\":\"text\"",
		"\"content\":\"x\",\"metadata\":{\"k\":\"" + std::string(250, 'm') + "\"}",
		"\"content\":\"x\",\"clientMessageId\":\"\"",
		"\"content\":\"x\",\"clientMessageId\":" + jquote(std::string(65, 'c')),
		"\"content\":\"x\",\"clientMessageId\":5",
		"\"content\":\"x\",\"replyToId\":5",
		"\"content\":\"x\",\"replyToId\":\"\"",
	};
	for (const auto &fields : bad) {
		send_request(*a, "send_message", conv_payload(conv, fields), "bad");
		Json err = expect_error(*a, "INVALID_DATA");
		assert_str_eq(jstr(err.get(), "payload.requestId"), "bad");
	}
	// Metadata of exactly 256 bytes as compact JSON passes.
	send(*a, conv, "\"content\":\"x\",\"metadata\":{ \"k\" : \"" + std::string(248, 'm') + "\" }");
	for (auto *s : {a.get(), a2.get(), b.get()})
		expect_frame(*s, "message_received");
	// A 64-byte clientMessageId passes.
	send(*a, conv, "\"content\":\"x\",\"clientMessageId\":" + jquote(std::string(64, 'c')));
	for (auto *s : {a.get(), a2.get(), b.get()})
		expect_frame(*s, "message_received");
	// Nothing was stored for the refusals: seq continues without a gap.
	page = load(*a, conv);
	assert_true((seqs(page.get()) == range(1, 6)));
	expect_quiet(*b);
}

static void test_per_recipient_copies(void **)
{
	auto a = user("pr-a"), b = user("pr-b"), c = user("pr-c"), x = user("pr-x");
	std::string conv = create_group(*a, {"pr-b", "pr-c"});
	expect_frame(*b, "conversation_created");
	expect_frame(*c, "conversation_created");
	join(*b, conv);
	join(*c, conv);
	// c has no copy.
	Json sent = send(*a, conv, "\"encryptedContents\":{\"pr-a\":\"for-a\",\"pr-b\":\"for-b\"}");
	assert_str_eq(jstr(sent.get(), "payload.message.encrypted_content"), "for-a");
	std::string id = jstr(sent.get(), "payload.message.id");
	Json ra = expect_frame(*a, "message_received");
	Json rb = expect_frame(*b, "message_received");
	Json rc = expect_frame(*c, "message_received");
	assert_str_eq(jstr(ra.get(), "payload.message.encrypted_content"), "for-a");
	assert_str_eq(jstr(rb.get(), "payload.message.encrypted_content"), "for-b");
	assert_true(jnull(rc.get(), "payload.message.encrypted_content"));
	for (auto *r : {&ra, &rb, &rc}) {
		assert_str_eq(jstr(r->get(), "payload.message.id"), id);
		assert_null(jget(r->get(), "payload.shouldReloadMessages"));
	}
	// Loads and the conversation list show each caller's own copy; a caller
	// with none still sees the message, with null content.
	Json pb = load(*b, conv);
	assert_str_eq(jstr(pb.get(), "payload.messages.0.encrypted_content"), "for-b");
	Json pc = load(*c, conv);
	assert_int_equal(jsize(pc.get(), "payload.messages"), 1);
	assert_true(jnull(pc.get(), "payload.messages.0.encrypted_content"));
	Json lb = conversations(*b);
	assert_str_eq(jstr(find_conv(lb.get(), conv), "latest_message_content"), "for-b");
	Json lc = conversations(*c);
	assert_true(jnull(find_conv(lc.get(), conv), "latest_message_content"));
	// A reply to it shows the caller's copy in reply_to.
	send(*b, conv, "\"content\":\"re\",\"replyToId\":" + jquote(id));
	for (auto *s : {a.get(), b.get(), c.get()})
		expect_frame(*s, "message_received");
	pb = load(*b, conv);
	assert_str_eq(jstr(pb.get(), "payload.messages.1.reply_to.encrypted_content"), "for-b");

	// Keys must be current participants; values non-empty strings.
	for (const char *fields : {"\"encryptedContents\":{}", "\"encryptedContents\":[\"x\"]",
				   "\"encryptedContents\":{\"pr-b\":\"\"}", "\"encryptedContents\":{\"pr-b\":3}",
				   "\"encryptedContents\":{\"pr-x\":\"intruder\"}",
				   "\"encryptedContents\":{\"pr-b\":\"1\",\"pr-b\":\"2\"}",
				   "\"encryptedContents\":\"flat\""}) {
		send_request(*a, "send_message", conv_payload(conv, fields));
		expect_error(*a, "INVALID_DATA");
	}
	expect_quiet(*b);
	expect_quiet(*x);
}

static void test_client_message_id_is_idempotent(void **)
{
	auto a = user("id-a"), a2 = user("id-a"), b = user("id-b");
	std::string conv = create_direct(*a, "id-b");
	expect_frame(*a2, "conversation_created");
	expect_frame(*b, "conversation_created");
	join(*b, conv);
	join(*a2, conv);
	Json first = send(*a, conv, "\"content\":\"once\",\"clientMessageId\":\"k-1\"");
	for (auto *s : {a.get(), a2.get(), b.get()})
		expect_frame(*s, "message_received");
	// The same key from the other device, with other content: the stored
	// message again, and no broadcast.
	Json again = send(*a2, conv, "\"content\":\"twice\",\"clientMessageId\":\"k-1\"", "retry");
	assert_str_eq(jstr(again.get(), "payload.message.id"), jstr(first.get(), "payload.message.id"));
	assert_int_equal(jnum(again.get(), "payload.message.seq"), 1);
	assert_str_eq(jstr(again.get(), "payload.message.encrypted_content"), "once");
	for (auto *s : {a.get(), a2.get(), b.get()})
		expect_quiet(*s);
	// Another sender may use the same key.
	Json other = send(*b, conv, "\"content\":\"mine\",\"clientMessageId\":\"k-1\"");
	assert_int_equal(jnum(other.get(), "payload.message.seq"), 2);
	assert_true(jstr(other.get(), "payload.message.id") != jstr(first.get(), "payload.message.id"));
	for (auto *s : {a.get(), a2.get(), b.get()})
		expect_frame(*s, "message_received");
	Json page = load(*a, conv);
	assert_true((seqs(page.get()) == std::vector<int>{1, 2}));
}

// --- history --------------------------------------------------------------

static void test_history_paging(void **)
{
	auto a = user("hp-a"), b = user("hp-b");
	std::string conv = create_direct(*a, "hp-b");
	expect_frame(*b, "conversation_created");
	std::vector<std::string> ids(121);
	// 120 messages, pipelined 10 at a time.
	for (int base = 1; base <= 120; base += 10) {
		for (int i = base; i < base + 10; i++)
			send_request(*a, "send_message", conv_payload(conv, "\"content\":\"m" + std::to_string(i) + "\""));
		for (int i = base; i < base + 10; i++) {
			Json s = expect_frame(*a, "message_sent");
			assert_int_equal(jnum(s.get(), "payload.message.seq"), i);
			ids[i] = jstr(s.get(), "payload.message.id");
			Json r = expect_frame(*a, "message_received");
		}
	}
	// Newest first page, then older pages by beforeMessageId.
	Json p = load(*b, conv, "\"limit\":50");
	assert_true((seqs(p.get()) == range(71, 120)));
	assert_true(jbool(p.get(), "payload.hasMore"));
	assert_str_eq(jstr(p.get(), "payload.messages.0.id"), ids[71]);
	assert_str_eq(jstr(p.get(), "payload.messages.0.encrypted_content"), "m71");
	p = load(*b, conv, "\"limit\":50,\"beforeMessageId\":" + jquote(ids[71]));
	assert_true((seqs(p.get()) == range(21, 70)));
	assert_true(jbool(p.get(), "payload.hasMore"));
	p = load(*b, conv, "\"limit\":50,\"beforeMessageId\":" + jquote(ids[21]), "load_more_messages");
	assert_true((seqs(p.get()) == range(1, 20)));
	assert_false(jbool(p.get(), "payload.hasMore"));
	p = load(*b, conv, "\"beforeMessageId\":" + jquote(ids[1]), "load_more_messages");
	assert_int_equal(jsize(p.get(), "payload.messages"), 0);
	assert_false(jbool(p.get(), "payload.hasMore"));
	// Forward by afterSeq, oldest first.
	p = load(*b, conv, "\"limit\":50,\"afterSeq\":0");
	assert_true((seqs(p.get()) == range(1, 50)));
	assert_true(jbool(p.get(), "payload.hasMore"));
	p = load(*b, conv, "\"limit\":50,\"afterSeq\":50");
	assert_true((seqs(p.get()) == range(51, 100)));
	assert_true(jbool(p.get(), "payload.hasMore"));
	p = load(*b, conv, "\"limit\":50,\"afterSeq\":100");
	assert_true((seqs(p.get()) == range(101, 120)));
	assert_false(jbool(p.get(), "payload.hasMore"));
	p = load(*b, conv, "\"afterSeq\":120");
	assert_int_equal(jsize(p.get(), "payload.messages"), 0);
	assert_false(jbool(p.get(), "payload.hasMore"));
	// The default limit is 50 (absent or null); the largest is max_page_size.
	p = load(*b, conv);
	assert_true((seqs(p.get()) == range(71, 120)));
	p = load(*b, conv, "\"limit\":null,\"beforeMessageId\":null,\"afterSeq\":null");
	assert_true((seqs(p.get()) == range(71, 120)));
	p = load(*b, conv, "\"limit\":200");
	assert_true((seqs(p.get()) == range(1, 120)));
	assert_false(jbool(p.get(), "payload.hasMore"));
	p = load(*b, conv, "\"limit\":1");
	assert_true((seqs(p.get()) == std::vector<int>{120}));
	assert_true(jbool(p.get(), "payload.hasMore"));

	for (const std::string &fields : std::vector<std::string>{"\"limit\":0", "\"limit\":201", "\"limit\":\"5\"", "\"limit\":2.5", "\"limit\":-1",
	      "\"afterSeq\":-1", "\"afterSeq\":\"1\"", "\"afterSeq\":1.5", "\"beforeMessageId\":7",
	      "\"beforeMessageId\":\"\"",
	      "\"afterSeq\":3,\"beforeMessageId\":" + jquote(ids[10])}) {
		send_request(*b, "load_messages", conv_payload(conv, fields), "bad");
		Json e = expect_error(*b, "INVALID_DATA");
		assert_str_eq(jstr(e.get(), "payload.requestId"), "bad");
	}
	send_request(*b, "load_more_messages", conv_payload(conv));
	expect_error(*b, "INVALID_DATA"); // beforeMessageId is required there
	send_request(*b, "load_messages",
		     conv_payload(conv, "\"beforeMessageId\":\"0190a0b0-0000-7000-8000-000000000000\""));
	expect_error(*b, "MESSAGE_NOT_FOUND");
	// A message of another conversation is not a cursor here.
	std::string other = create_group(*a, {"hp-b"});
	expect_frame(*b, "conversation_created");
	Json o = send_text(*a, other, "elsewhere");
	expect_frame(*a, "message_received");
	send_request(*b, "load_more_messages",
		     conv_payload(conv, "\"beforeMessageId\":" + jquote(jstr(o.get(), "payload.message.id"))));
	expect_error(*b, "MESSAGE_NOT_FOUND");
}

static void test_read_marking(void **)
{
	auto a = user("rd-a"), b = user("rd-b");
	std::string conv = create_direct(*a, "rd-b");
	expect_frame(*b, "conversation_created");
	send_request(*a, "leave_conversation", conv_payload(conv));
	expect_frame(*a, "conversation_left");
	std::vector<std::string> ids;
	for (int i = 1; i <= 5; i++)
		ids.push_back(jstr(send_text(*a, conv, "r" + std::to_string(i)).get(), "payload.message.id"));
	auto unread = [&](WsClient &c) {
		Json l = conversations(c);
		return static_cast<int>(jnum(find_conv(l.get(), conv), "unread_count"));
	};
	assert_int_equal(unread(*b), 5);
	assert_int_equal(unread(*a), 0);
	// Loading the oldest two marks up to seq 2.
	load(*b, conv, "\"afterSeq\":0,\"limit\":2");
	assert_int_equal(unread(*b), 3);
	// The newest page marks everything.
	load(*b, conv, "\"limit\":1");
	assert_int_equal(unread(*b), 0);
	// Two more; an older page does not move the mark back (or forward).
	send_text(*a, conv, "r6");
	send_text(*a, conv, "r7");
	assert_int_equal(unread(*b), 2);
	load(*b, conv, "\"beforeMessageId\":" + jquote(ids[2]));
	assert_int_equal(unread(*b), 2);
	load(*b, conv, "\"afterSeq\":5");
	assert_int_equal(unread(*b), 0);
	// b's own messages never count as unread for b.
	send_text(*b, conv, "mine");
	assert_int_equal(unread(*b), 0);
	assert_int_equal(unread(*a), 1);
}

// --- typing ---------------------------------------------------------------

static void test_typing(void **)
{
	auto a1 = user("ty-a"), a2 = user("ty-a"), b = user("ty-b"), c = user("ty-c");
	std::string conv = create_group(*a1, {"ty-b", "ty-c"});
	for (auto *s : {a2.get(), b.get(), c.get()})
		expect_frame(*s, "conversation_created");
	join(*a2, conv);
	join(*b, conv);
	// c is a participant but not in the room: it gets no typing pushes.

	send_request(*a1, "typing_start", conv_payload(conv), "t1");
	Json j = expect_frame(*a1, "typing_start");
	assert_str_eq(jstr(j.get(), "requestId"), "t1");
	assert_str_eq(jstr(j.get(), "payload.conversationId"), conv);
	assert_true(jbool(j.get(), "payload.isTyping"));
	for (auto *s : {a2.get(), b.get()}) {
		Json u = expect_frame(*s, "typing_update");
		assert_str_eq(jstr(u.get(), "payload.conversationId"), conv);
		assert_str_eq(jstr(u.get(), "payload.userId"), "ty-a");
		assert_str_eq(jstr(u.get(), "payload.username"), "ty-a");
		assert_true(jbool(u.get(), "payload.isTyping"));
	}
	expect_quiet(*a1); // never to the socket that sent it
	// Repeated, or from the same user's other socket: no change, no push.
	send_request(*a1, "typing_start", conv_payload(conv));
	expect_frame(*a1, "typing_start");
	send_request(*a2, "typing_start", conv_payload(conv));
	expect_frame(*a2, "typing_start");
	expect_quiet(*b);
	expect_quiet(*a1);
	// Stop: one push, to everyone in the room but the socket that stopped.
	send_request(*a2, "typing_stop", conv_payload(conv), "t2");
	j = expect_frame(*a2, "typing_stop");
	assert_str_eq(jstr(j.get(), "requestId"), "t2");
	assert_false(jbool(j.get(), "payload.isTyping"));
	for (auto *s : {a1.get(), b.get()}) {
		Json u = expect_frame(*s, "typing_update");
		assert_false(jbool(u.get(), "payload.isTyping"));
	}
	// Stopping again changes nothing.
	send_request(*a2, "typing_stop", conv_payload(conv));
	expect_frame(*a2, "typing_stop");
	expect_quiet(*b);
	expect_quiet(*c);

	// Leaving ends the typing state only with the user's last socket in
	// the room.
	send_request(*b, "typing_start", conv_payload(conv));
	expect_frame(*b, "typing_start");
	expect_frame(*a1, "typing_update");
	expect_frame(*a2, "typing_update");
	send_request(*a1, "typing_start", conv_payload(conv));
	expect_frame(*a1, "typing_start");
	expect_frame(*a2, "typing_update");
	expect_frame(*b, "typing_update");
	send_request(*a1, "leave_conversation", conv_payload(conv));
	expect_frame(*a1, "conversation_left");
	expect_quiet(*b); // a2 is still in the room
	send_request(*a2, "leave_conversation", conv_payload(conv));
	expect_frame(*a2, "conversation_left");
	j = expect_frame(*b, "typing_update");
	assert_str_eq(jstr(j.get(), "payload.userId"), "ty-a");
	assert_false(jbool(j.get(), "payload.isTyping"));

	// Closing ends it too (b is typing; a2 rejoins to watch).
	join(*a2, conv);
	b.reset();
	j = expect_frame(*a2, "typing_update");
	assert_str_eq(jstr(j.get(), "payload.userId"), "ty-b");
	assert_false(jbool(j.get(), "payload.isTyping"));
	j = expect_frame(*a2, "user_offline");
	assert_str_eq(jstr(j.get(), "payload.userId"), "ty-b");
	expect_quiet(*a2);
}

static void test_typing_expiry(void **)
{
	auto s = start_server({{"typing_timeout", "300ms"}});
	auto a = user("te-a", s->port()), b = user("te-b", s->port()), b2 = user("te-b", s->port());
	std::string conv = create_direct(*a, "te-b");
	expect_frame(*b, "conversation_created");
	expect_frame(*b2, "conversation_created");
	join(*b, conv);
	join(*b2, conv);
	send_request(*b, "typing_start", conv_payload(conv));
	expect_frame(*b, "typing_start");
	expect_frame(*a, "typing_update");
	expect_frame(*b2, "typing_update");
	// The last typing_start came from b2: the expiry goes to all but b2.
	send_request(*b2, "typing_start", conv_payload(conv));
	expect_frame(*b2, "typing_start");
	Json j = expect_frame(*a, "typing_update", 5000);
	assert_str_eq(jstr(j.get(), "payload.userId"), "te-b");
	assert_false(jbool(j.get(), "payload.isTyping"));
	j = expect_frame(*b, "typing_update", 5000);
	assert_false(jbool(j.get(), "payload.isTyping"));
	expect_quiet(*b2);
	expect_quiet(*a); // exactly one push
	Json st = http_json(http_request(s->port(), "GET", "/stats"));
	assert_int_equal(jnum(st.get(), "typingPushes"), 4);
}

// --- presence -------------------------------------------------------------

static void test_presence(void **)
{
	auto w = user("pz-watch");
	auto p = user("pz-peer");
	auto s0 = user("pz-subj");
	// w creates both, so w's socket is in both rooms; p is a participant
	// of c1 but in no room: presence goes to rooms, not to participants.
	std::string c1 = create_group(*w, {"pz-subj", "pz-peer"});
	std::string c2 = create_direct(*w, "pz-subj");
	expect_frame(*s0, "conversation_created");
	expect_frame(*s0, "conversation_created");
	expect_frame(*p, "conversation_created");
	std::map<std::string, int> per_room;
	s0.reset();
	for (int i = 0; i < 2; i++) {
		Json j = expect_frame(*w, "user_offline");
		assert_str_eq(jstr(j.get(), "payload.userId"), "pz-subj");
		per_room[jstr(j.get(), "payload.conversationId")]++;
	}
	assert_true((per_room == std::map<std::string, int>{{c1, 1}, {c2, 1}}));
	expect_quiet(*p);

	// First connection: one user_online per conversation room.
	auto s1 = user("pz-subj");
	per_room.clear();
	for (int i = 0; i < 2; i++) {
		Json j = expect_frame(*w, "user_online");
		assert_str_eq(jstr(j.get(), "payload.userId"), "pz-subj");
		assert_contains(jstr(j.get(), "payload.timestamp"), "Z");
		per_room[jstr(j.get(), "payload.conversationId")]++;
	}
	assert_true((per_room == std::map<std::string, int>{{c1, 1}, {c2, 1}}));
	expect_quiet(*w);
	expect_quiet(*p);
	// onlineUsers sees the subject now.
	Json j = join(*p, c1);
	assert_int_equal(jsize(j.get(), "payload.onlineUsers"), 3);
	// A second device: nothing.  Closing one of two: nothing.
	auto s2 = user("pz-subj");
	expect_quiet(*w);
	s1.reset();
	expect_quiet(*w);
	// The last connection: one user_offline per room.
	s2.reset();
	per_room.clear();
	for (int i = 0; i < 2; i++) {
		j = expect_frame(*w, "user_offline");
		assert_str_eq(jstr(j.get(), "payload.userId"), "pz-subj");
		per_room[jstr(j.get(), "payload.conversationId")]++;
	}
	assert_true((per_room == std::map<std::string, int>{{c1, 1}, {c2, 1}}));
	j = expect_frame(*p, "user_offline");
	assert_str_eq(jstr(j.get(), "payload.conversationId"), c1);
	expect_quiet(*w);
	expect_quiet(*p);
	j = join(*p, c1);
	assert_int_equal(jsize(j.get(), "payload.onlineUsers"), 2);
	// An unauthenticated socket is not online.
	auto anon = ws(*g_server);
	expect_quiet(*w);
}

// --- the whole picture ----------------------------------------------------

// Three users on four sockets (alice on two devices) in two conversations:
// each socket gets exactly what its rooms carry, in order.
static void test_three_users_four_sockets(void **)
{
	auto a1 = user("tu-alice"), a2 = user("tu-alice"), b = user("tu-bob"), c = user("tu-carol");
	std::string group = create_group(*a1, {"tu-bob", "tu-carol"}, "Three");
	for (auto *s : {a2.get(), b.get(), c.get()})
		expect_frame(*s, "conversation_created");
	std::string direct = create_direct(*b, "tu-alice");
	expect_frame(*a1, "conversation_created");
	expect_frame(*a2, "conversation_created");
	join(*a2, group);
	join(*c, group);
	join(*b, group);
	join(*a1, direct);
	// Rooms: group = a1 a2 b c; direct = b a1.

	// Each send: message_sent to the sender first, then message_received to
	// every socket in the room (the sender's own included), nothing elsewhere.
	auto deliver = [](const Json &m, std::vector<WsClient *> room, std::vector<WsClient *> others) {
		for (WsClient *s : room) {
			Json r = expect_frame(*s, "message_received");
			assert_str_eq(jstr(r.get(), "payload.message.id"), jstr(m.get(), "payload.message.id"));
			expect_quiet(*s);
		}
		for (WsClient *s : others)
			expect_quiet(*s);
	};
	Json m1 = send_text(*c, group, "g1");
	deliver(m1, {a1.get(), a2.get(), b.get(), c.get()}, {});
	Json m2 = send_text(*b, direct, "d1");
	deliver(m2, {a1.get(), b.get()}, {a2.get(), c.get()});
	Json m3 = send_text(*a2, group, "g2");
	deliver(m3, {a1.get(), a2.get(), b.get(), c.get()}, {});
	assert_int_equal(jnum(m2.get(), "payload.message.seq"), 1);
	assert_int_equal(jnum(m3.get(), "payload.message.seq"), 2);

	// Typing in the group reaches the three other sockets; in the direct
	// one, only a1.
	send_request(*b, "typing_start", conv_payload(direct));
	expect_frame(*b, "typing_start");
	expect_frame(*a1, "typing_update");
	for (auto *s : {a2.get(), c.get()})
		expect_quiet(*s);
	send_request(*b, "typing_stop", conv_payload(direct));
	expect_frame(*b, "typing_stop");
	expect_frame(*a1, "typing_update");

	// Carol drops: user_offline in the group room only.
	c.reset();
	for (auto *s : {a1.get(), a2.get(), b.get()}) {
		Json o = expect_frame(*s, "user_offline");
		assert_str_eq(jstr(o.get(), "payload.userId"), "tu-carol");
		assert_str_eq(jstr(o.get(), "payload.conversationId"), group);
		expect_quiet(*s);
	}
	// Everyone's history agrees.
	Json h1 = load(*a1, group), h2 = load(*b, group);
	assert_true((seqs(h1.get()) == std::vector<int>{1, 2}));
	char *t1 = cJSON_PrintUnformatted(jget(h1.get(), "payload.messages"));
	char *t2 = cJSON_PrintUnformatted(jget(h2.get(), "payload.messages"));
	assert_str_eq(t1, t2);
	cJSON_free(t1);
	cJSON_free(t2);
}

// Sockets that close leave their rooms; empty rooms are freed; /stats
// counts stored messages and deliveries.
static void test_rooms_and_stats(void **)
{
	auto s = start_server();
	int p = s->port();
	auto get = [&](const std::string &path) { return stat_of(*s, path); };
	std::string conv;
	{
		auto a = user("rs-a", p), b = user("rs-b", p), b2 = user("rs-b", p);
		conv = create_group(*a, {"rs-b"});
		expect_frame(*b, "conversation_created");
		expect_frame(*b2, "conversation_created");
		join(*b, conv);
		join(*b2, conv);
		assert_int_equal(get("roomStats.totalRooms"), 1);
		assert_int_equal(get("roomStats.totalConnections"), 3);
		send_text(*a, conv, "x");
		for (auto *c : {a.get(), b.get(), b2.get()})
			expect_frame(*c, "message_received");
		send_text(*b, conv, "y");
		for (auto *c : {a.get(), b.get(), b2.get()})
			expect_frame(*c, "message_received");
		send_request(*a, "send_message", conv_payload(conv));
		expect_error(*a, "INVALID_DATA");
		assert_int_equal(get("messagesStored"), 2);
		assert_int_equal(get("deliveries"), 6);
		assert_int_equal(get("conversationsCreated"), 1);
		assert_int_equal(get("errors.INVALID_DATA"), 1);
		b2->abort(); // abruptly
		a.reset();
	}
	// Everything closed: no room, no online user.
	wait_connections(*s, 0);
	assert_int_equal(get("roomStats.totalRooms"), 0);
	assert_int_equal(get("roomStats.totalConnections"), 0);
	assert_int_equal(get("roomStats.totalUsers"), 0);
	auto m = http_request(p, "GET", "/metrics");
	assert_contains(m.body, "qryptchatd_messages_stored_total 2\n");
	assert_contains(m.body, "qryptchatd_deliveries_total 6\n");
	assert_contains(m.body, "qryptchatd_rooms 0\n");
}

// Frames of every size, many at once: the 2-, 4- and 10-byte length
// headers, writes coalesced past what one send() takes, and a reader that
// falls behind and catches up (the kernel takes part of a write, the rest
// waits) all arrive intact and in order.
static void test_large_frames_and_backlog(void **)
{
	auto s = start_server({{"rate_burst", "1000"}, {"rate_limit", "1000"}});
	auto a = user("lf-a", s->port()), b = user("lf-b", s->port());
	std::string conv = create_direct(*a, "lf-b");
	expect_frame(*b, "conversation_created");
	join(*b, conv);
	// 40 messages of 60,000 bytes, pipelined: b reads nothing meanwhile, so
	// about 2.4 MB waits for it (under max_queue_bytes, 4 MiB).
	const int n = 40;
	for (int i = 0; i < n; i++) {
		std::string body(60000, static_cast<char>('a' + i % 26));
		send_request(*a, "send_message", conv_payload(conv, "\"content\":" + jquote(body)));
	}
	for (int i = 1; i <= n; i++) {
		Json sent = expect_frame(*a, "message_sent");
		assert_int_equal(jnum(sent.get(), "payload.message.seq"), i);
		expect_frame(*a, "message_received");
	}
	for (int i = 1; i <= n; i++) {
		Json r = expect_frame(*b, "message_received");
		assert_int_equal(jnum(r.get(), "payload.message.seq"), i);
		std::string body = jstr(r.get(), "payload.message.encrypted_content");
		assert_int_equal(body.size(), 60000);
		assert_true(body.find_first_not_of(static_cast<char>('a' + (i - 1) % 26)) == std::string::npos);
	}
	// One frame of about 2.4 MB (a 10-byte header), then small ones.
	Json page = load(*b, conv, "\"limit\":40");
	assert_true((seqs(page.get()) == range(1, n)));
	Json small = load(*b, conv, "\"limit\":1");
	assert_true((seqs(small.get()) == std::vector<int>{n}));
	expect_quiet(*b);
}

// A reader that stops reading is disconnected once its queue passes
// max_queue_bytes; the sender and the other readers go on undisturbed.
static void test_slow_reader_is_dropped(void **)
{
	auto s = start_server({{"max_queue_bytes", "64K"}, {"rate_burst", "100000"},
			       {"rate_limit", "100000"}});
	auto a = user("sr-a", s->port()), fast = user("sr-fast", s->port()),
	     slow = user("sr-slow", s->port());
	std::string conv = create_group(*a, {"sr-fast", "sr-slow"});
	send_request(*a, "leave_conversation", conv_payload(conv));
	expect_frame(*a, "conversation_left");
	expect_frame(*fast, "conversation_created");
	expect_frame(*slow, "conversation_created");
	join(*fast, conv);
	join(*slow, conv);
	// The slow reader's receive buffer is made small; it reads no more.
	int small = 4096;
	setsockopt(slow->fd(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
	// 16 MB of messages: more than the kernel buffers between the server
	// and the slow reader can hold, so its queue must grow past 64 KB.
	const std::string body(8000, 'z');
	const int n = 2000;
	int acked = 0, received = 0;
	// The slow reader's user_offline reaches `fast` whenever the server
	// lets it go, possibly in the middle of the messages.
	bool slow_offline = false;
	auto next_fast = [&](const char *want) {
		for (;;) {
			Json j = expect_frame(*fast);
			if (!slow_offline && jstr(j.get(), "type") == "user_offline") {
				assert_str_eq(jstr(j.get(), "payload.userId"), "sr-slow");
				slow_offline = true;
				continue;
			}
			assert_str_eq(jstr(j.get(), "type"), want);
			return j;
		}
	};
	for (int i = 0; i < n; i++) {
		send_request(*a, "send_message", conv_payload(conv, "\"content\":" + jquote(body)));
		if (i % 50 == 49) { // read along, so only the slow reader lags
			for (; acked <= i; acked++)
				expect_frame(*a, "message_sent");
			for (; received <= i; received++)
				next_fast("message_received");
		}
	}
	Json st = http_json(http_request(s->port(), "GET", "/stats"));
	assert_int_equal(jnum(st.get(), "slowConsumersClosed"), 1);
	assert_int_equal(jnum(st.get(), "messagesStored"), n);
	// It cannot even take the close frame, so it is cut after a second.
	wait_connections(*s, 2);
	assert_true(s->log().find("close_slow_consumer") != std::string::npos);
	if (!slow_offline) {
		Json off = expect_frame(*fast, "user_offline");
		assert_str_eq(jstr(off.get(), "payload.userId"), "sr-slow");
	}
	// The others carry on.
	send_text(*a, conv, "still here");
	Json r = next_fast("message_received");
	assert_str_eq(jstr(r.get(), "payload.message.encrypted_content"), "still here");
	slow->abort();
}

// --- durability -----------------------------------------------------------

static void test_restart_keeps_everything(void **)
{
	std::string dir;
	std::string conv;
	std::string before_page;
	{
		auto s = start_server();
		s->keep_dir(true);
		dir = s->dir();
		auto a = user("rst-a", s->port()), b = user("rst-b", s->port());
		conv = create_group(*a, {"rst-b"}, "Survivors");
		expect_frame(*b, "conversation_created");
		send_request(*a, "leave_conversation", conv_payload(conv));
		expect_frame(*a, "conversation_left");
		for (int i = 0; i < 30; i++)
			send(*a, conv, "\"content\":\"k" + std::to_string(i) + "\",\"clientMessageId\":\"c" + std::to_string(i) + "\"");
		Json r = send(*b, conv, "\"encryptedContents\":{\"rst-a\":\"A\",\"rst-b\":\"B\"},\"metadata\":{\"x\":1}");
		load(*b, conv, "\"limit\":10"); // b read up to the end
		Json pg = load(*a, conv, "\"limit\":200");
		char *text = cJSON_PrintUnformatted(jget(pg.get(), "payload.messages"));
		before_page = text;
		cJSON_free(text);
		assert_int_equal(s->stop(), 0);
	}
	ServerOptions o;
	o.dir = dir;
	auto s = ServerProcess::start(o);
	auto a = user("rst-a", s->port()), b = user("rst-b", s->port());
	Json pg = load(*a, conv, "\"limit\":200");
	char *after_page = cJSON_PrintUnformatted(jget(pg.get(), "payload.messages"));
	assert_str_eq(after_page, before_page);
	cJSON_free(after_page);
	Json l = conversations(*a);
	// Loading the page above marked a's read position; otherwise identical.
	const cJSON *item = find_conv(l.get(), conv);
	assert_int_equal(jnum(item, "unread_count"), 0);
	Json lb = conversations(*b);
	assert_int_equal(jnum(find_conv(lb.get(), conv), "unread_count"), 0);
	assert_str_eq(jstr(item, "name"), "Survivors");
	assert_str_eq(jstr(item, "latest_message_content"), "A");
	// Idempotency keys survive; seq continues.
	Json again = send(*a, conv, "\"content\":\"dup\",\"clientMessageId\":\"c5\"");
	assert_int_equal(jnum(again.get(), "payload.message.seq"), 6);
	Json next = send_text(*a, conv, "after restart");
	assert_int_equal(jnum(next.get(), "payload.message.seq"), 32);
}

// kill -9 at a random moment while several clients send, `rounds` times
// over on one database: after each restart the database passes
// PRAGMA integrity_check, and at the end every message that got a
// message_sent is there with the seq it was given, and seq has no gap.
static void crash_rounds(int rounds, const std::vector<std::pair<std::string, std::string>> &config)
{
	constexpr int kSenders = 3, kWindow = 8;
	const int kRounds = rounds;
	std::mt19937 rng(static_cast<unsigned>(getpid()));
	std::string dir, conv;
	std::map<int, std::string> acked; // seq -> id
	for (int round = 0; round < kRounds; round++) {
		ServerOptions o;
		o.config = config;
		o.dir = dir;
		auto s = ServerProcess::start(o);
		s->keep_dir(true);
		dir = s->dir();
		if (round > 0)
			expect_integrity_ok(s->db_path());
		std::vector<std::unique_ptr<WsClient>> cs;
		for (int i = 0; i < kSenders; i++)
			cs.push_back(user("crash-" + std::to_string(i), s->port()));
		if (conv.empty())
			conv = create_group(*cs[0], {"crash-1", "crash-2"});
		// Drain create pushes (first round) and make sure every sender can
		// write to the conversation.
		for (auto &c : cs) {
			send_request(*c, "load_messages", conv_payload(conv, "\"limit\":1"), "sync");
			for (;;) {
				Json j = expect_frame(*c);
				if (jstr(j.get(), "type") == "messages_loaded")
					break;
			}
		}
		int kill_after = std::uniform_int_distribution<int>(5, 60)(rng);
		int acks = 0;
		std::vector<int> outstanding(kSenders, 0);
		bool killed = false;
		int n = 0;
		while (!killed) {
			for (int i = 0; i < kSenders; i++)
				while (outstanding[i] < kWindow) {
					send_request(*cs[i], "send_message",
						     conv_payload(conv, "\"content\":\"r" + std::to_string(round) +
									       "-" + std::to_string(n++) + "\""));
					outstanding[i]++;
				}
			for (int i = 0; i < kSenders && !killed; i++) {
				WsEvent ev = cs[i]->recv(5000);
				assert_int_equal(ev.kind, WsEvent::Text);
				Json j = parse_json(ev.data);
				if (jstr(j.get(), "type") == "message_received")
					continue; // the creator's socket is in the room
				assert_str_eq(jstr(j.get(), "type"), "message_sent");
				acked[static_cast<int>(jnum(j.get(), "payload.message.seq"))] =
					jstr(j.get(), "payload.message.id");
				outstanding[i]--;
				if (++acks == kill_after) {
					assert_int_equal(s->stop(9), 128 + 9);
					killed = true;
				}
			}
		}
		// Acknowledgements already in the sockets' buffers count too.
		for (auto &c : cs)
			for (;;) {
				WsEvent ev = c->recv(5000);
				if (ev.kind != WsEvent::Text)
					break;
				Json j = parse_json(ev.data);
				if (jstr(j.get(), "type") != "message_sent")
					continue;
				acked[static_cast<int>(jnum(j.get(), "payload.message.seq"))] =
					jstr(j.get(), "payload.message.id");
			}
	}
	// The final state, read by a fresh server.
	ServerOptions o;
	o.config = config;
	o.dir = dir;
	auto s = ServerProcess::start(o);
	auto c = user("crash-0", s->port());
	std::map<int, std::string> stored;
	int after = 0;
	for (;;) {
		Json p = load(*c, conv, "\"limit\":200,\"afterSeq\":" + std::to_string(after));
		int count = jsize(p.get(), "payload.messages");
		for (int i = 0; i < count; i++) {
			std::string k = "payload.messages." + std::to_string(i);
			int seq = static_cast<int>(jnum(p.get(), k + ".seq"));
			assert_int_equal(seq, after + 1); // contiguous
			stored[seq] = jstr(p.get(), k + ".id");
			after = seq;
		}
		if (!jbool(p.get(), "payload.hasMore"))
			break;
	}
	assert_true(acked.size() >= static_cast<size_t>(kRounds) * 5);
	for (const auto &[seq, id] : acked) {
		auto it = stored.find(seq);
		if (it == stored.end() || it->second != id)
			fail_msg("acknowledged message seq %d (%s) is missing after the crash", seq, id.c_str());
	}
	expect_integrity_ok(s->db_path());
	s.reset();
	remove_tree(dir);
}

static void test_crash_loses_nothing_acknowledged(void **) { crash_rounds(10, {}); }

// The same 50 times with durability full (which also keeps acknowledged
// messages through a power loss, which a test cannot cause).
static void test_crash_durability_full(void **) { crash_rounds(50, {{"durability", "full"}}); }

static int setup(void **)
{
	ServerOptions o;
	o.config = {{"max_group_size", "4"},
		    {"max_content_bytes", "1024"},
		    {"max_metadata_bytes", "256"},
		    {"rate_burst", "1000"},
		    {"rate_limit", "1000"}};
	g_server = ServerProcess::start(o);
	return g_server ? 0 : -1;
}

static int teardown(void **)
{
	g_server.reset();
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_requests_need_auth),
		cmocka_unit_test(test_conversation_access),
		cmocka_unit_test(test_conversation_objects),
		cmocka_unit_test(test_create_shapes_and_rules),
		cmocka_unit_test(test_direct_is_created_once),
		cmocka_unit_test(test_created_push_audience),
		cmocka_unit_test(test_join_and_leave),
		cmocka_unit_test(test_send_message_fields),
		cmocka_unit_test(test_per_recipient_copies),
		cmocka_unit_test(test_client_message_id_is_idempotent),
		cmocka_unit_test(test_history_paging),
		cmocka_unit_test(test_read_marking),
		cmocka_unit_test(test_typing),
		cmocka_unit_test(test_typing_expiry),
		cmocka_unit_test(test_presence),
		cmocka_unit_test(test_three_users_four_sockets),
		cmocka_unit_test(test_rooms_and_stats),
		cmocka_unit_test(test_large_frames_and_backlog),
		cmocka_unit_test(test_slow_reader_is_dropped),
		cmocka_unit_test(test_restart_keeps_everything),
		cmocka_unit_test(test_crash_loses_nothing_acknowledged),
		cmocka_unit_test(test_crash_durability_full),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
