// The operator's subcommands against a live server's database: users
// (a disabled user's sockets are closed within a second and its tokens
// refused), conversations (a removed member's sockets leave the room),
// backup, check, prune, and restore (refused while the server runs).
#include <unistd.h>

#include "common.hpp"

using namespace qc::test;

namespace {

// `qryptchatd -c CONF ARGS...` on the server's configuration.
RunResult admin(const ServerProcess &s, std::vector<std::string> args)
{
	args.insert(args.begin(), {"-c", s.config_path()});
	return run_binary(args);
}

Json admin_json(const ServerProcess &s, std::vector<std::string> args)
{
	args.push_back("--json");
	RunResult r = admin(s, args);
	if (r.status != 0)
		fail_msg("exit %d: %s", r.status, r.err.c_str());
	Json j = parse_json(r.out);
	if (!j)
		fail_msg("not JSON: %s", r.out.c_str());
	return j;
}

// The next frame of this type, skipping pushes (presence, messages) that
// come before it.
Json next_of(WsClient &c, const std::string &type, int timeout_ms = 5000)
{
	for (int i = 0; i < 50; i++) {
		Json j = expect_frame(c, "", timeout_ms);
		if (jstr(j.get(), "type") == type)
			return j;
	}
	fail_msg("no %s frame", type.c_str());
	return nullptr;
}

int send_text(WsClient &c, const std::string &conv, const std::string &text)
{
	send_request(c, "send_message", conv_payload(conv, "\"content\":" + jquote(text)), "s-" + text);
	return static_cast<int>(jnum(next_of(c, "message_sent").get(), "payload.message.seq"));
}

void drain_until(WsClient &c, const std::string &type) { next_of(c, type); }

// The socket is open and answers.
void still_open(WsClient &c)
{
	send_request(c, "ping", "{}", "alive");
	next_of(c, "pong");
}

} // namespace

static void test_users(void **)
{
	auto s = start_server();
	// Users can be added while the server runs, and then be invited.
	RunResult r = admin(*s, {"user", "add", "carol", "--username", "carol", "--name", "Carol"});
	assert_int_equal(r.status, 0);
	assert_contains(r.out, "added user carol");
	assert_int_equal(admin(*s, {"user", "add", "carol"}).status, 1); // exists
	auto alice = connect_as(s->port(), "alice");
	send_request(*alice, "create_conversation", R"({"type":"group","participant_ids":["carol"]})", "cc");
	expect_frame(*alice, "conversation_created");

	Json list = admin_json(*s, {"user", "list"});
	assert_int_equal(cJSON_GetArraySize(list.get()), 2);
	r = admin(*s, {"user", "list"});
	assert_contains(r.out, "carol");
	assert_contains(r.out, "active");
	Json carol = admin_json(*s, {"user", "show", "carol"});
	assert_str_eq(jstr(carol.get(), "display_name"), "Carol");
	assert_int_equal(jnum(carol.get(), "conversations"), 1);
	assert_false(jbool(carol.get(), "disabled"));
	assert_int_equal(admin(*s, {"user", "show", "nobody"}).status, 3);
	assert_int_equal(admin(*s, {"user", "frobnicate", "x"}).status, 2);

	// Disabling closes carol's open sockets (1008) and refuses her tokens.
	auto c1 = connect_as(s->port(), "carol");
	auto c2 = connect_as(s->port(), "carol");
	r = admin(*s, {"user", "disable", "carol"});
	assert_int_equal(r.status, 0);
	expect_close(*c1, 1008, 3000);
	expect_close(*c2, 1008, 3000);
	assert_true(s->wait_log("close_user_disabled user=\"carol\" sockets=2"));
	auto again = ws(*s);
	send_request(*again, "auth", "{\"token\":" + jquote(token_for("carol")) + "}", "a");
	expect_error(*again, "INVALID_TOKEN");
	assert_true(jbool(admin_json(*s, {"user", "show", "carol"}).get(), "disabled"));
	still_open(*alice); // nobody else was touched

	assert_int_equal(admin(*s, {"user", "enable", "carol"}).status, 0);
	assert_non_null(connect_as(s->port(), "carol").get());
	assert_int_equal(admin(*s, {"user", "disable", "nobody"}).status, 3);
}

static void test_conversations(void **)
{
	auto s = start_server();
	auto bob = connect_as(s->port(), "bob");
	auto alice = connect_as(s->port(), "alice");
	assert_int_equal(admin(*s, {"user", "add", "dave"}).status, 0);
	send_request(*alice, "create_conversation",
		     R"({"type":"group","participant_ids":["bob"],"name":"ops"})", "cc");
	std::string conv = jstr(expect_frame(*alice, "conversation_created").get(), "payload.conversation.id");
	expect_frame(*bob, "conversation_created");
	for (WsClient *c : {alice.get(), bob.get()}) {
		send_request(*c, "join_conversation", conv_payload(conv), "j");
		expect_frame(*c, "conversation_joined");
	}
	assert_int_equal(send_text(*alice, conv, "one"), 1);
	drain_until(*alice, "message_received");
	drain_until(*bob, "message_received");

	Json list = admin_json(*s, {"conversation", "list"});
	assert_int_equal(cJSON_GetArraySize(list.get()), 1);
	assert_str_eq(jstr(cJSON_GetArrayItem(list.get(), 0), "name"), "ops");
	assert_int_equal(jnum(cJSON_GetArrayItem(list.get(), 0), "messages"), 1);
	assert_int_equal(cJSON_GetArraySize(admin_json(*s, {"conversation", "list", "--user", "dave"}).get()), 0);
	assert_contains(admin(*s, {"conversation", "list"}).out, "ops");

	// add-member: dave takes part from now on.
	assert_int_equal(admin(*s, {"conversation", "add-member", conv, "dave"}).status, 0);
	Json shown = admin_json(*s, {"conversation", "show", conv});
	assert_int_equal(jnum(shown.get(), "participants"), 3);
	assert_int_equal(jsize(shown.get(), "members"), 3);
	auto dave = connect_as(s->port(), "dave");
	send_request(*dave, "join_conversation", conv_payload(conv), "j");
	expect_frame(*dave, "conversation_joined");
	assert_int_equal(admin(*s, {"conversation", "add-member", conv, "nobody"}).status, 3);
	assert_int_equal(admin(*s, {"conversation", "add-member", "no-such-id", "dave"}).status, 3);

	// remove-member: bob's socket leaves the room within a second and
	// gets no more of its messages; his requests are refused.
	assert_int_equal(admin(*s, {"conversation", "remove-member", conv, "bob"}).status, 0);
	Json left = next_of(*bob, "conversation_left", 3000);
	assert_str_eq(jstr(left.get(), "payload.conversationId"), conv);
	assert_int_equal(send_text(*alice, conv, "two"), 2);
	drain_until(*dave, "message_received");
	expect_quiet(*bob);
	send_request(*bob, "load_messages", conv_payload(conv), "l");
	assert_str_eq(jstr(next_of(*bob, "error").get(), "payload.code"), "ACCESS_DENIED");
	assert_int_equal(admin(*s, {"conversation", "remove-member", conv, "bob"}).status, 3);
	shown = admin_json(*s, {"conversation", "show", conv});
	assert_int_equal(jnum(shown.get(), "participants"), 2);
	assert_int_equal(jsize(shown.get(), "members"), 3); // bob is listed with left_at
	assert_int_equal(admin(*s, {"conversation", "show", "no-such-id"}).status, 3);
}

static void test_backup_check_prune_restore(void **)
{
	auto s = start_server();
	s->keep_dir(true);
	auto bob = connect_as(s->port(), "bob");
	auto alice = connect_as(s->port(), "alice");
	send_request(*alice, "create_conversation", R"({"participantIds":["bob"]})", "cc");
	std::string conv = jstr(expect_frame(*alice, "conversation_created").get(), "payload.conversation.id");
	for (int i = 1; i <= 3; i++)
		assert_int_equal(send_text(*alice, conv, "m" + std::to_string(i)), i);

	std::string backup = s->dir() + "/backup.db";
	RunResult r = admin(*s, {"backup", backup});
	assert_int_equal(r.status, 0);
	assert_int_equal(admin(*s, {"backup", backup}).status, 2); // never overwrites
	Json check = admin_json(*s, {"check"});
	assert_true(jbool(check.get(), "ok"));
	assert_int_equal(jnum(check.get(), "messages"), 3);
	assert_int_equal(jnum(check.get(), "schema_version"), 1);
	RunResult bc = run_binary({"-D", "database=" + backup, "check"});
	assert_int_equal(bc.status, 0);
	assert_contains(bc.out, "3 messages");

	// Everything sent so far is older than a millisecond by now.
	Json pruned = admin_json(*s, {"prune", "--older-than", "1ms"});
	assert_int_equal(jnum(pruned.get(), "deleted"), 3);
	send_request(*alice, "load_messages", conv_payload(conv), "l");
	assert_int_equal(jsize(next_of(*alice, "messages_loaded").get(), "payload.messages"), 0);
	assert_int_equal(send_text(*alice, conv, "after"), 4); // seq goes on
	assert_int_equal(admin(*s, {"prune"}).status, 2);

	// Restore: refused while the server has the database open.
	r = admin(*s, {"restore", backup});
	assert_int_equal(r.status, 1);
	assert_contains(r.err, "stop the server");
	std::string dir = s->dir(), conf = s->config_path();
	assert_int_equal(s->stop(), 0);
	s.reset();
	r = run_binary({"-c", conf, "restore", backup});
	assert_int_equal(r.status, 0);
	ServerOptions o;
	o.dir = dir;
	auto s2 = ServerProcess::start(o);
	auto a2 = connect_as(s2->port(), "alice");
	send_request(*a2, "load_messages", conv_payload(conv), "l");
	Json page = expect_frame(*a2, "messages_loaded");
	assert_int_equal(jsize(page.get(), "payload.messages"), 3); // as backed up
	assert_str_eq(jstr(page.get(), "payload.messages.2.encrypted_content"), "m3");
	s2.reset();
	remove_tree(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_users),
		cmocka_unit_test(test_conversations),
		cmocka_unit_test(test_backup_check_prune_restore),
	};
	return cmocka_run_group_tests_name("admin", tests, nullptr, nullptr);
}
