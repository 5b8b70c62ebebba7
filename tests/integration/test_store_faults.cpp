// Storage faults against the real binary: the database's file system full
// (a small tmpfs), read-only (EROFS from every write, as after a forced
// read-only remount), or locked by another process.  In each case writes
// are answered DATABASE_ERROR, nothing of them is stored or pushed, reads
// and known users' logins still work, /health says "degraded", and once the
// fault clears the server recovers by itself: /health is "ok" again with
// no request in between, and the next message takes the next seq.
#include <fcntl.h>
#include <sched.h>
#include <sqlite3.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "common.hpp"

using namespace qc::test;

namespace {

bool g_private_mounts = false; // this process has its own mount namespace

// Alice and Bob in a group, both joined, one message ("before", seq 1)
// delivered.
struct Chat {
	std::unique_ptr<WsClient> alice, bob;
	std::string group;

	explicit Chat(const ServerProcess &s)
	{
		bob = connect_as(s.port(), "bob");
		alice = connect_as(s.port(), "alice");
		assert_non_null(bob.get());
		assert_non_null(alice.get());
		send_request(*alice, "create_conversation",
			     R"({"type":"group","participant_ids":["bob"],"name":"faults"})", "cc");
		group = jstr(expect_frame(*alice, "conversation_created").get(), "payload.conversation.id");
		expect_frame(*bob, "conversation_created");
		for (WsClient *c : {alice.get(), bob.get()}) {
			send_request(*c, "join_conversation", conv(), "join");
			expect_frame(*c, "conversation_joined");
		}
		assert_int_equal(send_ok("before"), 1);
	}

	std::string conv(const std::string &more = "") const
	{
		return "{\"conversationId\":" + jquote(group) + more + "}";
	}
	// Sends `text`, expects message_sent and Bob's push; returns the seq.
	int send_ok(const std::string &text)
	{
		send_request(*alice, "send_message", conv(",\"content\":" + jquote(text)), "ok-" + text);
		Json sent = expect_frame(*alice, "message_sent");
		Json pushed = expect_frame(*bob, "message_received");
		assert_str_eq(jstr(pushed.get(), "payload.message.encrypted_content"), text);
		assert_str_eq(jstr(pushed.get(), "payload.message.id"), jstr(sent.get(), "payload.message.id"));
		expect_frame(*alice, "message_received");
		return static_cast<int>(jnum(sent.get(), "payload.message.seq"));
	}
	// Every kind of write fails with DATABASE_ERROR and pushes nothing.
	void writes_fail()
	{
		std::string big(3000, 'x'); // more than one database page
		send_request(*alice, "send_message", conv(",\"content\":" + jquote(big)), "lost-1");
		assert_str_eq(jstr(expect_error(*alice, "DATABASE_ERROR").get(), "payload.requestId"),
			      "lost-1");
		send_request(*alice, "send_message",
			     conv(",\"encryptedContents\":{\"alice\":\"A\",\"bob\":\"B\"}"), "lost-2");
		expect_error(*alice, "DATABASE_ERROR");
		send_request(*alice, "create_conversation",
			     R"({"type":"group","participant_ids":["bob"],"name":"lost"})", "lost-3");
		expect_error(*alice, "DATABASE_ERROR");
		expect_quiet(*alice);
		expect_quiet(*bob);
	}
	// Reads still work: the page holds exactly what was acknowledged.
	void reads_work(const std::vector<std::string> &contents)
	{
		send_request(*bob, "load_messages", conv(), "ld");
		Json j = expect_frame(*bob, "messages_loaded");
		assert_int_equal(jsize(j.get(), "payload.messages"), static_cast<int>(contents.size()));
		for (size_t i = 0; i < contents.size(); i++) {
			std::string m = "payload.messages." + std::to_string(i);
			assert_str_eq(jstr(j.get(), m + ".encrypted_content"), contents[i]);
			assert_int_equal(jnum(j.get(), m + ".seq"), static_cast<double>(i + 1));
		}
		send_request(*bob, "load_conversations", "{}", "lc");
		Json list = expect_frame(*bob, "conversations_loaded");
		assert_int_equal(jsize(list.get(), "payload.conversations"), 1);
	}
};

// /health's status code and "status" field.
std::pair<int, std::string> health(const ServerProcess &s)
{
	HttpResponse r = http_request(s.port(), "GET", "/health");
	return {r.status, jstr(http_json(r).get(), "status")};
}

// The store probes a degraded database once a second (and when asked):
// polls /health (10 s at most) until it reports `want`.
void wait_health(const ServerProcess &s, int want_code, const std::string &want)
{
	std::pair<int, std::string> h;
	for (int i = 0; i < 200; i++) {
		h = health(s);
		if (h.first == want_code && h.second == want)
			return;
		poll(nullptr, 0, 50);
	}
	fail_msg("/health: %d %s, want %d %s", h.first, h.second.c_str(), want_code, want.c_str());
}

// The fault is on: every write fails, reads and a known user's new login
// work, /health is degraded.  Then `clear` ends the fault, and the server
// recovers without any client writing.
template <typename Clear> void fault_and_recover(ServerProcess &s, Chat &chat, Clear &&clear)
{
	chat.writes_fail();
	wait_health(s, 503, "degraded");
	assert_true(s.wait_log("store_degraded"));
	chat.reads_work({"before"});
	auto again = connect_as(s.port(), "alice"); // a known user gets in
	assert_non_null(again.get());
	chat.writes_fail(); // still failing, now without waiting on a lock

	clear();
	wait_health(s, 200, "ok");
	assert_true(s.wait_log("store_recovered"));
	assert_int_equal(chat.send_ok("after"), 2); // the failed sends took no seq
	chat.reads_work({"before", "after"});
	expect_quiet(*again);
}

} // namespace

// The database on a 2 MiB tmpfs that the test fills to the last byte.
static void test_disk_full(void **)
{
	if (!g_private_mounts)
		skip(); // needs root: a tmpfs in a private mount namespace
	std::string mnt = make_temp_dir();
	assert_int_equal(mount("qc-test", mnt.c_str(), "tmpfs", 0, "size=2m"), 0);
	{
		auto s = start_server({{"database", mnt + "/chat.db"}});
		Chat chat(*s);

		std::string filler = mnt + "/filler";
		int fd = open(filler.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
		assert_true(fd >= 0);
		std::string block(4096, 'f');
		while (write(fd, block.data(), block.size()) > 0) {
		}
		assert_int_equal(errno, ENOSPC);
		close(fd);

		fault_and_recover(*s, chat, [&] { assert_int_equal(unlink(filler.c_str()), 0); });
		assert_int_equal(s->stop(), 0);
		expect_integrity_ok(mnt + "/chat.db");
	}
	assert_int_equal(umount(mnt.c_str()), 0);
	remove_tree(mnt);
}

// Every write to the database's directory fails with EROFS (the fault
// library, tests/faultfs, preloaded into the server).
static void test_read_only(void **)
{
	std::string dir = make_temp_dir();
	std::string control = dir + "/fault";
	write_file(dir + "/secret", kTestSecret);
	assert_int_equal(chmod((dir + "/secret").c_str(), 0600), 0);
	// The database in a directory of its own: only its files fail.
	std::string db_dir = dir + "/db";
	assert_int_equal(mkdir(db_dir.c_str(), 0700), 0);
	ServerOptions o;
	o.dir = dir;
	o.config = {{"database", db_dir + "/chat.db"}};
	std::string lib = server_binary();
	lib = lib.substr(0, lib.rfind('/') + 1) + "tests/faultfs/libqcfault.so";
	assert_int_equal(access(lib.c_str(), R_OK), 0);
	std::string asan = getenv("ASAN_OPTIONS") ? getenv("ASAN_OPTIONS") : "";
	o.env = {{"LD_PRELOAD", lib},
		 {"QC_FAULT_DIR", db_dir},
		 {"QC_FAULT_CONTROL", control},
		 // the fault library is loaded ahead of the sanitizer runtime
		 {"ASAN_OPTIONS", asan + (asan.empty() ? "" : ":") + "verify_asan_link_order=0"}};
	auto s = ServerProcess::start(o);
	Chat chat(*s);

	write_file(control, "EROFS");
	fault_and_recover(*s, chat, [&] { assert_int_equal(unlink(control.c_str()), 0); });
	assert_int_equal(s->stop(), 0);
	expect_integrity_ok(db_dir + "/chat.db");
	remove_tree(dir);
}

// Another process holds the write lock.
static void test_locked(void **)
{
	auto s = start_server();
	Chat chat(*s);

	sqlite3 *db = nullptr;
	assert_int_equal(sqlite3_open_v2(s->db_path().c_str(), &db, SQLITE_OPEN_READWRITE, nullptr), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr), SQLITE_OK);
	fault_and_recover(*s, chat, [&] {
		assert_int_equal(sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr), SQLITE_OK);
	});
	sqlite3_close(db);
	assert_int_equal(s->stop(), 0);
	expect_integrity_ok(s->db_path());
}

static int setup(void **)
{
	// A private mount namespace: the tmpfs of test_disk_full is seen by
	// this process and the servers it starts, and disappears with them.
	g_private_mounts = geteuid() == 0 && unshare(CLONE_NEWNS) == 0 &&
			   mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == 0;
	if (!g_private_mounts)
		print_message("test_disk_full needs root (a tmpfs in a private mount namespace)\n");
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_disk_full),
		cmocka_unit_test(test_read_only),
		cmocka_unit_test(test_locked),
	};
	return cmocka_run_group_tests(tests, setup, nullptr);
}
