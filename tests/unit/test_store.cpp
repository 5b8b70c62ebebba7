// store (SQLite): users, conversations, messages, pages, read marks,
// idempotency, copies, persistence, migrations and query plans.  Runs
// against ":memory:" and against a file.
#include <sqlite3.h>
#include <unistd.h>

#include <set>

#include "cmocka.hpp"
#include "store_fixtures.hpp"
#include "qryptchat/log.hpp"
#include "qryptchat/store_sqlite.hpp"

using namespace qc;
using namespace qc::test;

namespace {

std::string g_path = ":memory:";

std::unique_ptr<Store> open_store(const std::string &path)
{
	SqliteOptions o;
	o.path = path;
	auto s = open_sqlite_store(o);
	if (!s)
		fail_msg("open: %s", s.error().message.c_str());
	return std::move(*s);
}

std::string temp_db()
{
	char dir[] = "/tmp/qc-store-XXXXXX";
	assert_non_null(mkdtemp(dir));
	return std::string(dir) + "/chat.db";
}

void remove_db(const std::string &path)
{
	for (const char *suffix : {"", "-wal", "-shm"})
		unlink((path + suffix).c_str());
	rmdir(path.substr(0, path.rfind('/')).c_str());
}

int setup(void **state)
{
	std::string path = g_path == ":memory:" ? g_path : temp_db();
	*state = new std::pair<std::string, std::unique_ptr<Store>>(path, open_store(path));
	return 0;
}

int teardown(void **state)
{
	auto *p = static_cast<std::pair<std::string, std::unique_ptr<Store>> *>(*state);
	p->second.reset();
	if (p->first != ":memory:")
		remove_db(p->first);
	delete p;
	return 0;
}

Store &store(void **state)
{
	return *static_cast<std::pair<std::string, std::unique_ptr<Store>> *>(*state)->second;
}

} // namespace

static void test_users(void **state)
{
	Store &s = store(state);
	auto u = s.upsert_user("0123456789abcdef", ProfileHints{});
	assert_true(u.ok());
	assert_str_eq(u->username, "user_01234567");
	assert_str_eq(u->display_name, "user_01234567");
	assert_false(u->email.has_value());
	ProfileHints h;
	h.username = "alice";
	h.email = "a@example.org";
	u = s.upsert_user("0123456789abcdef", h);
	assert_str_eq(u->username, "alice");
	assert_str_eq(u->display_name, "user_01234567"); // not hinted: kept
	assert_str_eq(*u->email, "a@example.org");
	u = s.upsert_user("0123456789abcdef", ProfileHints{}); // a later token without hints
	assert_str_eq(u->username, "alice");
	assert_str_eq(*u->email, "a@example.org");
	ProfileHints d;
	d.username = "bob";
	u = s.upsert_user("b", d); // new user: display_name defaults to the username
	assert_str_eq(u->display_name, "bob");
	auto missing = s.first_unknown_user({"b", "nobody", "0123456789abcdef"});
	assert_str_eq(**missing, "nobody");
	assert_false(s.first_unknown_user({"b"})->has_value());
	assert_false(s.get_user("nobody")->has_value());
	// The default name takes 8 characters of the id, not 8 bytes: a
	// sequence cut in two would not be UTF-8.
	u = s.upsert_user("a\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9", ProfileHints{});
	assert_str_eq(u->username, "user_a\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9");
	assert_true(utf8_valid(u->username));
}

static void test_conversations(void **state)
{
	Store &s = store(state);
	users(s, {"a", "b", "c"});
	std::string g = make_group(s, "a", {"b", "c"});
	assert_true(*s.is_participant(g, "b"));
	assert_false(*s.is_participant(g, "z"));
	assert_false(*s.is_participant("nope", "a"));
	auto v = s.conversation(g, "b");
	assert_true(v.ok());
	assert_str_eq(v->type, "group");
	assert_str_eq(*v->name, "team");
	assert_str_eq(v->created_by, "a");
	assert_int_equal(v->participants.size(), 3);
	for (const auto &p : v->participants)
		assert_str_eq(p.role, p.user_id == "a" ? "admin" : "member");
	assert_false(v->latest.has_value());
	assert_int_equal(v->unread_count, 0);
	auto denied = s.conversation(g, "z");
	assert_false(denied.ok());
	assert_int_equal(denied.error().code, Err::AccessDenied);
	auto ids = s.conversation_ids_of("c");
	assert_int_equal(ids->size(), 1);
	assert_int_equal(s.participant_ids(g)->size(), 3);
}

static void test_direct_created_once(void **state)
{
	Store &s = store(state);
	users(s, {"a", "b"});
	auto first = s.create_conversation(direct_of("a", "b"));
	assert_true(first->created);
	auto again = s.create_conversation(direct_of("b", "a")); // the other side asks: same pair
	assert_false(again->created);
	assert_str_eq(again->id, first->id);
	assert_int_equal(s.conversations("a")->size(), 1);
}

// User ids are token subs and may hold a newline: no two pairs of users
// share a direct conversation because of it.
static void test_direct_key_unambiguous(void **state)
{
	Store &s = store(state);
	users(s, {"a", "b\nc", "a\nb", "c", "p\\n", "p\n", "q"});
	auto direct = [&](const std::string &creator, const std::string &other) {
		auto r = s.create_conversation(direct_of(creator, other));
		assert_true(r.ok());
		return std::move(*r);
	};
	auto first = direct("a", "b\nc");
	auto second = direct("a\nb", "c");
	assert_true(second.created);
	assert_true(second.id != first.id);
	assert_false(*s.is_participant(first.id, "a\nb"));
	assert_false(*s.is_participant(first.id, "c"));
	// A backslash is escaped too, or "p\\n" (backslash, n) would key as
	// "p\n" (a newline) does.
	auto third = direct("p\\n", "q");
	auto fourth = direct("p\n", "q");
	assert_true(fourth.created);
	assert_true(fourth.id != third.id);
	// and the same pair still finds its conversation
	assert_false(direct("b\nc", "a").created);
	assert_str_eq(direct("c", "a\nb").id, second.id);
}

static void test_seq_and_idempotency(void **state)
{
	Store &s = store(state);
	users(s, {"a", "b"});
	std::string g = make_group(s, "a", {"b"});
	for (int i = 1; i <= 5; i++) {
		auto m = send(s, g, i % 2 ? "a" : "b", "m" + std::to_string(i));
		assert_true(m.created);
		assert_int_equal(m.message.seq, i);
		assert_str_eq(*m.message.content, "m" + std::to_string(i));
		assert_str_eq(m.message.sender.username, i % 2 ? "user_a" : "user_b");
	}
	auto first = send(s, g, "a", "hello", std::string("k1"));
	assert_true(first.created);
	auto replay = send(s, g, "a", "different content", std::string("k1"));
	assert_false(replay.created);
	assert_str_eq(replay.message.id, first.message.id);
	assert_str_eq(*replay.message.content, "hello");
	assert_int_equal(replay.message.seq, first.message.seq);
	auto other = send(s, g, "b", "same key, other sender", std::string("k1"));
	assert_true(other.created);
	assert_int_equal(other.message.seq, first.message.seq + 1);
	auto seq = s.message_seq(g, first.message.id);
	assert_int_equal(**seq, 6);
	assert_false(s.message_seq("other", first.message.id)->has_value());
}

static void test_pages_120_both_ways(void **state)
{
	Store &s = store(state);
	users(s, {"a", "b"});
	std::string g = make_group(s, "a", {"b"});
	for (int i = 1; i <= 120; i++)
		send(s, g, "a", std::to_string(i));
	// newest first page, then older with beforeMessageId
	std::vector<int64_t> seen;
	PageQuery q{g, "b", 50, std::nullopt, std::nullopt};
	auto p = s.load_messages(q);
	assert_int_equal(p->messages.size(), 50);
	assert_true(p->has_more);
	assert_int_equal(p->messages.front().seq, 71);
	assert_int_equal(p->messages.back().seq, 120);
	for (;;) {
		for (auto it = p->messages.rbegin(); it != p->messages.rend(); ++it)
			seen.push_back(it->seq);
		if (!p->has_more)
			break;
		auto before = s.message_seq(g, p->messages.front().id);
		q.before_seq = **before;
		p = s.load_messages(q);
	}
	assert_int_equal(seen.size(), 120);
	for (size_t i = 0; i < seen.size(); i++)
		assert_int_equal(seen[i], 120 - static_cast<int64_t>(i));
	// forward with afterSeq
	seen.clear();
	PageQuery f{g, "b", 50, std::nullopt, int64_t(0)};
	for (;;) {
		p = s.load_messages(f);
		for (const auto &m : p->messages)
			seen.push_back(m.seq);
		if (!p->has_more)
			break;
		f.after_seq = p->messages.back().seq;
	}
	assert_int_equal(seen.size(), 120);
	for (size_t i = 0; i < seen.size(); i++)
		assert_int_equal(seen[i], static_cast<int64_t>(i) + 1);
	// exactly a page: no more
	f.after_seq = 70;
	p = s.load_messages(f);
	assert_int_equal(p->messages.size(), 50);
	assert_false(p->has_more);
	f.after_seq = 120;
	assert_true(s.load_messages(f)->messages.empty());
}

static void test_read_marks(void **state)
{
	Store &s = store(state);
	users(s, {"a", "b"});
	std::string g = make_group(s, "a", {"b"});
	for (int i = 0; i < 4; i++)
		send(s, g, "a", "x");
	send(s, g, "b", "own");
	assert_int_equal(s.conversation(g, "b")->unread_count, 4); // others' messages only
	assert_int_equal(s.conversation(g, "a")->unread_count, 1);
	assert_true(s.mark_read(g, "b", 3).ok());
	assert_int_equal(s.conversation(g, "b")->unread_count, 1);
	assert_true(s.mark_read(g, "b", 1).ok()); // never backwards
	assert_int_equal(s.conversation(g, "b")->unread_count, 1);
	assert_true(s.mark_read(g, "b", 5).ok());
	assert_int_equal(s.conversation(g, "b")->unread_count, 0);
}

static void test_copies_and_replies(void **state)
{
	Store &s = store(state);
	users(s, {"a", "b", "c"});
	std::string g = make_group(s, "a", {"b", "c"});
	auto plain = send(s, g, "b", "plain");
	NewMessage m;
	m.id = uuid_v7();
	m.conversation_id = g;
	m.sender_id = "a";
	m.message_type = "text";
	m.copies = {{"a", "for-a"}, {"b", "for-b"}};
	m.reply_to_id = plain.message.id;
	m.metadata = std::string("{\"k\":1}");
	m.now = now_ms();
	auto r = s.insert_message(m);
	assert_true(r.ok());
	assert_str_eq(*r->message.content, "for-a"); // the sender's own copy
	PageQuery q{g, "b", 10, std::nullopt, std::nullopt};
	auto p = s.load_messages(q);
	assert_int_equal(p->messages.size(), 2);
	const MessageRow &e = p->messages[1];
	assert_str_eq(*e.content, "for-b");
	assert_str_eq(*e.metadata, "{\"k\":1}");
	assert_true(e.reply_to.has_value());
	assert_str_eq(e.reply_to->id, plain.message.id);
	assert_str_eq(*e.reply_to->content, "plain");
	q.viewer = "c"; // no copy: listed with null content
	p = s.load_messages(q);
	assert_int_equal(p->messages.size(), 2);
	assert_false(p->messages[1].content.has_value());
	assert_false(s.conversation(g, "c")->latest->content.has_value());
	assert_str_eq(*s.conversation(g, "b")->latest->content, "for-b");
}

static void test_activity_order(void **state)
{
	Store &s = store(state);
	users(s, {"a", "b"});
	std::string g1 = make_group(s, "a", {"b"});
	std::string g2 = make_group(s, "a", {"b"});
	NewMessage m;
	m.id = uuid_v7();
	m.conversation_id = g1;
	m.sender_id = "b";
	m.message_type = "text";
	m.content = "bump";
	m.now = now_ms() + 1000;
	assert_true(s.insert_message(m).ok());
	auto list = s.conversations("a");
	assert_int_equal(list->size(), 2);
	assert_str_eq((*list)[0].id, g1); // most recent activity first
	assert_str_eq((*list)[1].id, g2);
	assert_str_eq((*list)[0].latest->sender_username, "user_b");
}

static void test_query_plans_never_scan(void **state)
{
	for (const auto &sp : sqlite_query_plans(store(state))) {
		const std::string &plan = sp.second;
		if (sp.first.find("sqlite_schema") != std::string::npos)
			continue; // the health probe reads SQLite's own catalogue
		size_t pos = 0;
		while ((pos = plan.find("SCAN ", pos)) != std::string::npos) {
			size_t eol = plan.find('\n', pos);
			std::string line = plan.substr(pos, eol - pos);
			if (line.find("USING") == std::string::npos)
				fail_msg("table scan in\n%s\nplan:\n%s", sp.first.c_str(), plan.c_str());
			pos = eol;
		}
	}
}

// Group commit: a batch's writes share one transaction that nobody else
// sees before end_batch(); one failed write inside it undoes only itself.
static void test_group_commit(void **)
{
	std::string path = temp_db();
	auto s = open_store(path);
	users(*s, {"a", "b"});
	std::string conv = make_group(*s, "a", {"b"});
	auto count_elsewhere = [&]() {
		sqlite3 *db = nullptr;
		assert_int_equal(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
		sqlite3_stmt *st = nullptr;
		assert_int_equal(sqlite3_prepare_v2(db, "SELECT count(*), coalesce(max(seq), 0) FROM messages",
						    -1, &st, nullptr),
				 SQLITE_OK);
		assert_int_equal(sqlite3_step(st), SQLITE_ROW);
		int n = sqlite3_column_int(st, 0), top = sqlite3_column_int(st, 1);
		sqlite3_finalize(st);
		sqlite3_close(db);
		assert_int_equal(n, top); // seq has no gap
		return n;
	};
	s->begin_batch();
	assert_false(s->batch_has_writes());
	for (int i = 1; i <= 3; i++)
		assert_int_equal(send(*s, conv, "a", "m" + std::to_string(i)).message.seq, i);
	assert_true(s->batch_has_writes());
	// A write that fails (no such conversation) is undone alone.
	NewMessage bad;
	bad.id = uuid_v7();
	bad.conversation_id = "no-such-conversation";
	bad.sender_id = "a";
	bad.message_type = "text";
	bad.content = std::string("lost");
	bad.now = now_ms();
	assert_false(s->insert_message(bad).ok());
	assert_int_equal(send(*s, conv, "b", "m4").message.seq, 4);
	// This connection reads its own writes; another sees none yet.
	auto p = s->load_messages(PageQuery{conv, "b", 10, std::nullopt, std::nullopt});
	assert_int_equal(p->messages.size(), 4);
	assert_int_equal(count_elsewhere(), 0);
	assert_true(s->end_batch().ok());
	assert_false(s->batch_has_writes());
	assert_int_equal(count_elsewhere(), 4);
	// The next batch opens a new transaction.
	send(*s, conv, "a", "m5");
	assert_int_equal(count_elsewhere(), 4);
	assert_true(s->end_batch().ok());
	assert_int_equal(count_elsewhere(), 5);
	assert_true(s->healthy());
	s.reset();
	remove_db(path);
}

static void test_persistence_and_versions(void **)
{
	std::string path = temp_db();
	std::string conv;
	{
		auto s = open_store(path);
		users(*s, {"a", "b"});
		conv = make_group(*s, "a", {"b"});
		send(*s, conv, "a", "persisted");
	}
	{
		auto s = open_store(path);
		auto p = s->load_messages(PageQuery{conv, "b", 10, std::nullopt, std::nullopt});
		assert_int_equal(p->messages.size(), 1);
		assert_str_eq(*p->messages[0].content, "persisted");
	}
	// WAL mode, and a database from a newer version is refused.
	sqlite3 *db = nullptr;
	assert_int_equal(sqlite3_open(path.c_str(), &db), SQLITE_OK);
	sqlite3_stmt *st = nullptr;
	sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, nullptr);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	assert_str_eq(reinterpret_cast<const char *>(sqlite3_column_text(st, 0)), "wal");
	sqlite3_finalize(st);
	assert_int_equal(sqlite3_exec(db, "PRAGMA user_version = 99", nullptr, nullptr, nullptr), SQLITE_OK);
	sqlite3_close(db);
	SqliteOptions o;
	o.path = path;
	auto r = open_sqlite_store(o);
	assert_false(r.ok());
	assert_true(r.error().message.find("schema version 99 is newer") != std::string::npos);
	remove_db(path);
}

static void test_open_errors(void **)
{
	SqliteOptions o;
	o.path = "/nonexistent-dir/x/chat.db";
	auto r = open_sqlite_store(o);
	assert_false(r.ok());
	assert_true(r.error().message.find("/nonexistent-dir/x/chat.db") == 0);
}

static int run_all(const char *name)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_users, setup, teardown),
		cmocka_unit_test_setup_teardown(test_conversations, setup, teardown),
		cmocka_unit_test_setup_teardown(test_direct_created_once, setup, teardown),
		cmocka_unit_test_setup_teardown(test_direct_key_unambiguous, setup, teardown),
		cmocka_unit_test_setup_teardown(test_seq_and_idempotency, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pages_120_both_ways, setup, teardown),
		cmocka_unit_test_setup_teardown(test_read_marks, setup, teardown),
		cmocka_unit_test_setup_teardown(test_copies_and_replies, setup, teardown),
		cmocka_unit_test_setup_teardown(test_activity_order, setup, teardown),
		cmocka_unit_test_setup_teardown(test_query_plans_never_scan, setup, teardown),
	};
	return cmocka_run_group_tests_name(name, tests, nullptr, nullptr);
}

int main(void)
{
	g_log_level = LogLevel::Warn;
	int failed = run_all("store (:memory:)");
	g_path = "file";
	failed += run_all("store (file)");
	const struct CMUnitTest files[] = {
		cmocka_unit_test(test_persistence_and_versions),
		cmocka_unit_test(test_group_commit),
		cmocka_unit_test(test_open_errors),
	};
	failed += cmocka_run_group_tests_name("store (files)", files, nullptr, nullptr);
	return failed;
}
