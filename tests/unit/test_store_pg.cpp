// store (PostgreSQL): the Store contract of test_store.cpp against a
// private PostgreSQL server (tests/engines); overlapping calls on one
// store (requests as fibers sharing the pool); then what only several
// nodes sharing one database can break: seqs under concurrent writers
// (two stores in this process, and a burst from several processes),
// idempotency and direct pairs when identical requests race, the schema
// created once when nodes start together, a newer schema refused, a
// statement timeout, and the database going away and coming back.
//
// Each test gets a database of its own.  Without PostgreSQL installed the
// binary prints "SKIPPED: ..." and passes (fails with QC_REQUIRE_ENGINES=1).
#include <libpq-fe.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "../engines/engines.hpp"
#include "cmocka.hpp"
#include "store_fixtures.hpp"
#include "qryptchat/log.hpp"
#include "qryptchat/store_pg.hpp"

using namespace qc;
using namespace qc::test;

namespace {

std::unique_ptr<test::PgServer> g_pg;
int g_db_count = 0;

// A blocking libpq connection of the test's own, to look behind the store.
struct Admin {
	PGconn *c = nullptr;
	explicit Admin(const std::string &dsn)
	{
		c = PQconnectdb(dsn.c_str());
		if (PQstatus(c) != CONNECTION_OK)
			fail_msg("connect %s: %s", dsn.c_str(), PQerrorMessage(c));
	}
	~Admin() { PQfinish(c); }
	// The first column of the first row ("" when there is none).
	std::string value(const std::string &sql)
	{
		PGresult *r = PQexec(c, sql.c_str());
		ExecStatusType st = PQresultStatus(r);
		if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
			std::string m = PQresultErrorMessage(r);
			PQclear(r);
			fail_msg("%s: %s", sql.c_str(), m.c_str());
		}
		std::string v = st == PGRES_TUPLES_OK && PQntuples(r) > 0 ? PQgetvalue(r, 0, 0) : "";
		PQclear(r);
		return v;
	}
};

std::string dsn_of(const std::string &db)
{
	std::string dsn = g_pg->dsn;
	return dsn.replace(dsn.find("dbname=qryptchat"), strlen("dbname=qryptchat"), "dbname=" + db);
}

// A new empty database; its connection string.
std::string fresh_db()
{
	std::string name = "t" + std::to_string(++g_db_count);
	Admin a(g_pg->dsn);
	a.value("CREATE DATABASE " + name);
	return dsn_of(name);
}

PgOptions options(const std::string &dsn)
{
	PgOptions o;
	o.dsn = dsn;
	o.connections = 2;
	return o;
}

std::unique_ptr<Store> open_store(const std::string &dsn)
{
	auto s = open_postgres_store(options(dsn));
	if (!s)
		fail_msg("open: %s", s.error().message.c_str());
	return std::move(*s);
}

struct Fixture {
	std::string dsn;
	std::unique_ptr<Store> store;
};

int setup(void **state)
{
	auto *f = new Fixture;
	f->dsn = fresh_db();
	f->store = open_store(f->dsn);
	*state = f;
	return 0;
}

int teardown(void **state)
{
	delete static_cast<Fixture *>(*state);
	return 0;
}

Store &store(void **state)
{
	return *static_cast<Fixture *>(*state)->store;
}

const std::string &dsn(void **state)
{
	return static_cast<Fixture *>(*state)->dsn;
}

// Every seq of the conversation, read back page by page (oldest first),
// checked to be exactly 1..n; returns n.
int64_t check_seqs(Store &s, const std::string &conv, const std::string &viewer)
{
	PageQuery q{conv, viewer, 100, std::nullopt, int64_t(0)};
	int64_t n = 0;
	for (;;) {
		auto p = s.load_messages(q);
		assert_true(p.ok());
		for (const auto &m : p->messages) {
			if (m.seq != n + 1)
				fail_msg("seq %lld after %lld", static_cast<long long>(m.seq),
					 static_cast<long long>(n));
			n = m.seq;
		}
		if (!p->has_more)
			break;
		q.after_seq = n;
	}
	return n;
}

// A message id in a child process: util's generator is seeded once per
// process, so children forked from one test process would draw the same
// ids; the pid keeps theirs apart.
NewMessage child_message(const std::string &conv, const std::string &from, const std::string &text,
			 std::optional<std::string> cid = std::nullopt)
{
	NewMessage m = text_message(conv, from, text, std::move(cid));
	m.id += "-" + std::to_string(getpid());
	return m;
}

// Runs `body(i)` in `n` child processes at once (released together after
// all have started), and meanwhile `during()` here; each child's exit
// status is body's return value.  Returns whether every child exited 0.
template <typename F> bool in_children(int n, F body, const std::function<void()> &during = nullptr)
{
	int go[2];
	assert_int_equal(pipe(go), 0);
	std::vector<pid_t> kids;
	for (int i = 0; i < n; i++) {
		pid_t pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			close(go[1]);
			char b;
			while (read(go[0], &b, 1) < 0 && errno == EINTR) {
			}
			// _exit: no destructor may touch the parent's connections.
			_exit(body(i));
		}
		kids.push_back(pid);
	}
	close(go[0]);
	close(go[1]); // go: every child's read returns
	if (during)
		during();
	bool ok = true;
	for (pid_t pid : kids) {
		int status = 0;
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
		}
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
			fprintf(stderr, "child %d: status %d\n", static_cast<int>(pid), status);
			ok = false;
		}
	}
	return ok;
}

} // namespace

// ---- the contract of test_store.cpp ----

static void test_users(void **state)
{
	Store &s = store(state);
	auto u = s.upsert_user("0123456789abcdef", ProfileHints{});
	assert_true(u.ok());
	assert_str_eq(u->username, "user_01234567");
	assert_str_eq(u->display_name, "user_01234567");
	assert_false(u->email.has_value());
	assert_false(u->disabled);
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
	assert_false(s.first_unknown_user({})->has_value());
	// quotes, backslashes and commas survive the array parameter
	users(s, {"q\"u,o{t}e\\"});
	assert_false(s.first_unknown_user({"q\"u,o{t}e\\", "b"})->has_value());
	assert_str_eq(**s.first_unknown_user({"q\"u,o{t}e\\", "q\"u"}), "q\"u");
	assert_false(s.get_user("nobody")->has_value());
	assert_str_eq((*s.get_user("b"))->username, "bob");
	// The default name takes 8 characters of the id, not 8 bytes.
	u = s.upsert_user("a\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9", ProfileHints{});
	assert_str_eq(u->username, "user_a\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9");
	assert_true(utf8_valid(u->username));
	// unchanged hints write nothing
	Admin a(dsn(state));
	std::string before = a.value("SELECT updated_at FROM users WHERE id = 'b'");
	u = s.upsert_user("b", d);
	assert_str_eq(a.value("SELECT updated_at FROM users WHERE id = 'b'"), before);
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
	assert_str_eq(v->id, g);
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
	assert_str_eq((*ids)[0], g);
	auto pids = s.participant_ids(g);
	assert_int_equal(pids->size(), 3);
	assert_true(std::set<std::string>(pids->begin(), pids->end()) ==
		    std::set<std::string>({"a", "b", "c"}));
	// A member who is no user: the whole creation is undone.
	auto bad = s.create_conversation(group_of("a", {"b", "ghost"}));
	assert_false(bad.ok());
	assert_int_equal(bad.error().code, Err::DatabaseError);
	assert_int_equal(s.conversations("a")->size(), 1);
}

static void test_direct_created_once(void **state)
{
	Store &s = store(state);
	users(s, {"a", "b"});
	auto first = s.create_conversation(direct_of("a", "b"));
	assert_true(first->created);
	assert_str_eq(first->view.type, "direct");
	assert_int_equal(first->view.participants.size(), 2);
	auto again = s.create_conversation(direct_of("b", "a")); // the other side asks: same pair
	assert_false(again->created);
	assert_str_eq(again->id, first->id);
	assert_str_eq(again->view.id, first->id);
	assert_int_equal(s.conversations("a")->size(), 1);
	// One who left is a participant again when the pair is asked for.
	Admin a(dsn(state));
	a.value("UPDATE participants SET left_at = 1 WHERE user_id = 'b'");
	assert_false(*s.is_participant(first->id, "b"));
	assert_false(s.create_conversation(direct_of("a", "b"))->created);
	assert_true(*s.is_participant(first->id, "b"));
}

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
	auto third = direct("p\\n", "q");
	auto fourth = direct("p\n", "q");
	assert_true(fourth.created);
	assert_true(fourth.id != third.id);
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
		assert_str_eq(m.message.conversation_id, g);
	}
	auto first = send(s, g, "a", "hello", std::string("k1"));
	assert_true(first.created);
	assert_str_eq(*first.message.client_message_id, "k1");
	auto replay = send(s, g, "a", "different content", std::string("k1"));
	assert_false(replay.created);
	assert_str_eq(replay.message.id, first.message.id);
	assert_str_eq(*replay.message.content, "hello");
	assert_int_equal(replay.message.seq, first.message.seq);
	assert_int_equal(replay.message.created_at, first.message.created_at);
	auto other = send(s, g, "b", "same key, other sender", std::string("k1"));
	assert_true(other.created);
	assert_int_equal(other.message.seq, first.message.seq + 1);
	auto seq = s.message_seq(g, first.message.id);
	assert_int_equal(**seq, 6);
	assert_false(s.message_seq("other", first.message.id)->has_value());
	// An unknown sender; an unknown conversation fails and takes no seq.
	auto ghost = s.insert_message(text_message(g, "ghost", "x"));
	assert_false(ghost.ok());
	assert_int_equal(ghost.error().code, Err::UserNotFound);
	auto nowhere = s.insert_message(text_message("no-such-conversation", "a", "x"));
	assert_false(nowhere.ok());
	assert_int_equal(nowhere.error().code, Err::DatabaseError);
	// a reply to a message that does not exist: nothing stored, no seq taken
	NewMessage dangling = text_message(g, "a", "x");
	dangling.reply_to_id = std::string("no-such-message");
	assert_false(s.insert_message(dangling).ok());
	assert_int_equal(send(s, g, "a", "next").message.seq, 8);
	assert_int_equal(check_seqs(s, g, "a"), 8);
}

static void test_pages_120_both_ways(void **state)
{
	Store &s = store(state);
	users(s, {"a", "b"});
	std::string g = make_group(s, "a", {"b"});
	for (int i = 1; i <= 120; i++)
		send(s, g, "a", std::to_string(i));
	std::vector<int64_t> seen;
	PageQuery q{g, "b", 50, std::nullopt, std::nullopt};
	auto p = s.load_messages(q);
	assert_int_equal(p->messages.size(), 50);
	assert_true(p->has_more);
	assert_int_equal(p->messages.front().seq, 71);
	assert_int_equal(p->messages.back().seq, 120);
	assert_str_eq(*p->messages.back().content, "120");
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
	f.after_seq = 70;
	p = s.load_messages(f);
	assert_int_equal(p->messages.size(), 50);
	assert_false(p->has_more);
	f.after_seq = 120;
	assert_true(s.load_messages(f)->messages.empty());
	assert_true(s.load_messages(PageQuery{"none", "b", 50, std::nullopt, std::nullopt})->messages.empty());
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
	assert_int_equal((*s.conversations("b"))[0].unread_count, 0);
	assert_int_equal((*s.conversations("a"))[0].unread_count, 1);
	assert_true(s.mark_read("none", "b", 5).ok()); // nothing to move
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
	assert_str_eq(*r->message.reply_to_id, plain.message.id);
	assert_false(r->message.reply_to.has_value()); // loads only
	PageQuery q{g, "b", 10, std::nullopt, std::nullopt};
	auto p = s.load_messages(q);
	assert_int_equal(p->messages.size(), 2);
	const MessageRow &e = p->messages[1];
	assert_str_eq(*e.content, "for-b");
	assert_str_eq(*e.metadata, "{\"k\":1}");
	assert_true(e.reply_to.has_value());
	assert_str_eq(e.reply_to->id, plain.message.id);
	assert_str_eq(e.reply_to->sender_id, "b");
	assert_str_eq(*e.reply_to->content, "plain");
	assert_false(p->messages[0].reply_to.has_value());
	q.viewer = "c"; // no copy: listed with null content
	p = s.load_messages(q);
	assert_int_equal(p->messages.size(), 2);
	assert_false(p->messages[1].content.has_value());
	assert_false(s.conversation(g, "c")->latest->content.has_value());
	assert_str_eq(*s.conversation(g, "b")->latest->content, "for-b");
	// A copy for a recipient who is no user: nothing of the message stays.
	NewMessage bad = m;
	bad.id = uuid_v7();
	bad.copies = {{"a", "x"}, {"ghost", "y"}};
	assert_false(s.insert_message(bad).ok());
	assert_false(s.message_seq(g, bad.id)->has_value());
	assert_int_equal(send(s, g, "a", "after").message.seq, 3);
}

static void test_activity_order(void **state)
{
	Store &s = store(state);
	users(s, {"a", "b"});
	std::string g1 = make_group(s, "a", {"b"});
	std::string g2 = make_group(s, "a", {"b"});
	NewMessage m = text_message(g1, "b", "bump");
	m.now = now_ms() + 1000;
	assert_true(s.insert_message(m).ok());
	auto list = s.conversations("a");
	assert_int_equal(list->size(), 2);
	assert_str_eq((*list)[0].id, g1); // most recent activity first
	assert_str_eq((*list)[1].id, g2);
	assert_str_eq((*list)[0].latest->sender_username, "user_b");
	assert_int_equal((*list)[0].latest->created_at, m.now);
	assert_int_equal((*list)[0].updated_at, m.now);
	assert_int_equal((*list)[0].participants.size(), 2);
	assert_int_equal((*list)[1].participants.size(), 2);
	// an older timestamp never moves the activity back
	NewMessage old = text_message(g1, "a", "late");
	old.now = m.now - 5000;
	assert_true(s.insert_message(old).ok());
	assert_int_equal(s.conversation(g1, "a")->updated_at, m.now);
	assert_true(s.conversations("nobody")->empty());
}

// PostgreSQL text holds no NUL: such a call is refused, never stored cut.
static void test_nul_refused(void **state)
{
	Store &s = store(state);
	users(s, {"a"});
	std::string g = make_group(s, "a", {});
	auto r = s.insert_message(text_message(g, "a", std::string("a\0b", 3)));
	assert_false(r.ok());
	assert_int_equal(r.error().code, Err::InvalidData);
	assert_false(s.get_user(std::string("a\0x", 3)).ok());
	assert_int_equal(send(s, g, "a", "next").message.seq, 1);
}

// An IoWait that, the first time a call waits, runs `during` (another
// request, as a second fiber would while the first is suspended).
struct InterleavingWait final : IoWait {
	std::function<void()> during;
	bool wait(int fd, bool write, int64_t timeout_ms) override
	{
		if (during) {
			auto f = std::move(during);
			during = nullptr;
			f();
		}
		return blocking_io_wait().wait(fd, write, timeout_ms);
	}
};

// Calls overlapping on one store each take a connection of their own;
// one more than the pool holds fails DATABASE_ERROR once its wait for a
// free connection runs out, and the others complete.
static void test_overlapping_calls(void **state)
{
	users(store(state), {"a", "b"});
	std::string g = make_group(store(state), "a", {"b"});
	InterleavingWait w;
	PgOptions o = options(dsn(state));
	o.io = &w;
	o.connections = 2;
	o.query_timeout_ms = 300;
	auto opened = open_postgres_store(o);
	assert_true(opened.ok());
	Store &s = **opened;
	std::vector<int64_t> seqs;
	bool exhausted = false;
	w.during = [&]() { // the first call is in flight on one connection
		w.during = [&]() { // and a second on the other
			auto third = s.is_participant(g, "a");
			exhausted = !third.ok() && third.error().code == Err::DatabaseError;
		};
		seqs.push_back(send(s, g, "b", "inner").message.seq);
		for (int i = 0; i < 3; i++)
			seqs.push_back(send(s, g, "b", "inner").message.seq);
	};
	seqs.push_back(send(s, g, "a", "outer").message.seq);
	assert_true(exhausted);
	std::sort(seqs.begin(), seqs.end());
	for (size_t i = 0; i < seqs.size(); i++)
		assert_int_equal(seqs[i], static_cast<int64_t>(i) + 1);
	assert_int_equal(check_seqs(s, g, "a"), 5);
	assert_true(s.healthy());
}

// Fibers as the server runs requests: only one runs at a time, and a
// call that waits parks its fiber until the descriptor is ready while the
// others run; a scheduler polls for every parked fiber at once.  Each
// fiber is a thread handing a baton back and forth (rather than a
// ucontext, which AddressSanitizer does not fully follow), so they never
// run together.  Calls from the main thread (open) block as usual.
class FiberWait final : public IoWait
{
public:
	void spawn(std::function<void()> body)
	{
		auto f = std::make_unique<Fiber>();
		f->body = std::move(body);
		fibers_.push_back(std::move(f));
	}

	// Runs every fiber to its end.
	void run()
	{
		for (size_t i = 0; i < fibers_.size(); i++) {
			fibers_[i]->thread = std::thread([this, i]() {
				Fiber &f = *fibers_[i];
				t_fiber = static_cast<int>(i);
				{
					std::unique_lock<std::mutex> l(m_);
					cv_.wait(l, [&]() { return running_ == static_cast<int>(i); });
				}
				f.body();
				std::lock_guard<std::mutex> l(m_);
				f.done = true;
				running_ = -1;
				cv_.notify_all();
			});
		}
		for (size_t i = 0; i < fibers_.size(); i++)
			resume(i, true);
		for (;;) {
			std::vector<pollfd> fds;
			std::vector<size_t> who;
			int64_t first = -1;
			for (size_t i = 0; i < fibers_.size(); i++) {
				const Fiber &f = *fibers_[i];
				if (f.done)
					continue;
				fds.push_back({f.fd, static_cast<short>(f.write ? POLLOUT : POLLIN), 0});
				who.push_back(i);
				if (f.deadline >= 0 && (first < 0 || f.deadline < first))
					first = f.deadline;
			}
			if (who.empty())
				break;
			int timeout = first < 0 ? -1 : static_cast<int>(std::max<int64_t>(0, first - mono_us() / 1000));
			if (poll(fds.data(), fds.size(), timeout) < 0 && errno != EINTR)
				fail_msg("poll: %s", strerror(errno));
			int64_t now = mono_us() / 1000;
			for (size_t k = 0; k < who.size(); k++) {
				const Fiber &f = *fibers_[who[k]];
				if (fds[k].revents)
					resume(who[k], true);
				else if (f.deadline >= 0 && f.deadline <= now)
					resume(who[k], false);
			}
		}
		for (auto &f : fibers_)
			f->thread.join();
	}

	bool wait(int fd, bool write, int64_t timeout_ms) override
	{
		if (t_fiber < 0)
			return blocking_io_wait().wait(fd, write, timeout_ms);
		std::unique_lock<std::mutex> l(m_);
		Fiber &f = *fibers_[t_fiber];
		f.fd = fd;
		f.write = write;
		f.deadline = timeout_ms < 0 ? -1 : mono_us() / 1000 + timeout_ms;
		max_parked = std::max(max_parked, ++parked_);
		running_ = -1; // back to the scheduler
		cv_.notify_all();
		cv_.wait(l, [&]() { return running_ == t_fiber; });
		parked_--;
		return f.ready;
	}

	int max_parked = 0; // the most fibers waiting at once

private:
	struct Fiber {
		std::thread thread;
		std::function<void()> body;
		bool done = false;
		int fd = -1;
		bool write = false;
		int64_t deadline = -1;
		bool ready = false;
	};

	// Hands the baton to fiber i until it waits again or ends.
	void resume(size_t i, bool ready)
	{
		std::unique_lock<std::mutex> l(m_);
		fibers_[i]->ready = ready;
		running_ = static_cast<int>(i);
		cv_.notify_all();
		cv_.wait(l, [&]() { return running_ == -1; });
	}

	static thread_local int t_fiber; // this thread's fiber, -1 on the main thread
	std::mutex m_;
	std::condition_variable cv_;
	int running_ = -1; // the fiber holding the baton, -1: the scheduler
	int parked_ = 0;
	std::vector<std::unique_ptr<Fiber>> fibers_;
};
thread_local int FiberWait::t_fiber = -1;

// More requests at once than the pool has connections, as fibers of one
// thread: each call waits for a free connection, and all complete.
static void test_fibers_share_the_pool(void **state)
{
	users(store(state), {"a", "b"});
	std::string g = make_group(store(state), "a", {"b"});
	FiberWait w;
	PgOptions o = options(dsn(state));
	o.io = &w;
	o.connections = 2;
	auto opened = open_postgres_store(o);
	assert_true(opened.ok());
	Store &s = **opened;
	const int fibers = 6, each = 20;
	int failures = 0;
	std::vector<int64_t> seqs;
	for (int i = 0; i < fibers; i++)
		w.spawn([&, i]() {
			for (int n = 0; n < each; n++) {
				auto m = s.insert_message(text_message(g, i % 2 ? "a" : "b", "fiber"));
				auto p = s.load_messages(PageQuery{g, "a", 5, std::nullopt, std::nullopt});
				if (!m || !p || !s.healthy())
					failures++;
				else
					seqs.push_back(m->message.seq);
			}
		});
	w.run();
	assert_int_equal(failures, 0);
	assert_int_equal(w.max_parked, fibers); // all were waiting at once, most for a connection
	std::sort(seqs.begin(), seqs.end());
	for (size_t i = 0; i < seqs.size(); i++)
		assert_int_equal(seqs[i], static_cast<int64_t>(i) + 1);
	assert_int_equal(check_seqs(s, g, "a"), fibers * each);
}

// ---- several nodes ----

// Two stores on one database (two nodes), writing the same conversation
// in turn, then a burst from several processes at once: every seq once.
static void test_concurrent_writers(void **state)
{
	Store &s1 = store(state);
	auto s2 = open_store(dsn(state));
	users(s1, {"a", "b"});
	std::string g = make_group(s1, "a", {"b"});
	for (int i = 1; i <= 100; i++) {
		Store &s = i % 2 ? s1 : *s2;
		assert_int_equal(send(s, g, i % 3 ? "a" : "b", "x").message.seq, i);
	}
	const int kids = 6, each = 60;
	std::string d = dsn(state);
	bool ok = in_children(kids, [&](int i) {
		auto r = open_postgres_store(options(d));
		if (!r)
			return 2;
		for (int n = 0; n < each; n++) {
			auto m = (*r)->insert_message(child_message(g, i % 2 ? "a" : "b", "burst"));
			if (!m) {
				fprintf(stderr, "insert: %s\n", m.error().message.c_str());
				return 3;
			}
			if (!m->created)
				return 4;
		}
		return 0;
	});
	assert_true(ok);
	assert_int_equal(check_seqs(s1, g, "a"), 100 + kids * each);
	Admin a(d);
	assert_str_eq(a.value("SELECT last_seq FROM conversations WHERE id = '" + g + "'"),
		      std::to_string(100 + kids * each));
	assert_str_eq(a.value("SELECT count(DISTINCT seq) FROM messages"), std::to_string(100 + kids * each));
}

// Waits until `n` sessions of the database wait for a lock (asked on a
// connection of its own: statistics views are read once per transaction).
static void await_lock_waiters(const std::string &dsn, int n)
{
	Admin a(dsn);
	int64_t deadline = mono_us() / 1000 + 30000;
	std::string q = "SELECT count(*) FROM pg_stat_activity "
			"WHERE datname = current_database() AND wait_event_type = 'Lock'";
	while (a.value(q) != std::to_string(n)) {
		if (mono_us() / 1000 > deadline)
			fail_msg("%d sessions never waited for a lock together", n);
		usleep(10000); // polling interval, not a synchronisation
	}
}

// The same (sender, client_message_id) sent by several processes at once:
// one message, every sender told of that one, no seq used by the others.
// For the first key the race is certain: this test holds the
// conversation's row until every child has found no message under the
// key and waits for the row, so all but one insert it only to find it
// stored by another.
static void test_idempotency_race(void **state)
{
	Store &s = store(state);
	users(s, {"a", "b"});
	std::string g = make_group(s, "a", {"b"});
	std::string d = dsn(state);
	int out[2];
	assert_int_equal(pipe(out), 0);
	const int kids = 6, keys = 20;
	Admin a(d);
	a.value("BEGIN");
	a.value("SELECT 1 FROM conversations WHERE id = '" + g + "' FOR UPDATE");
	auto release = [&]() {
		await_lock_waiters(d, kids);
		a.value("COMMIT");
	};
	bool ok = in_children(kids, [&](int) {
		close(out[0]);
		auto r = open_postgres_store(options(d));
		if (!r)
			return 2;
		for (int k = 0; k < keys; k++) {
			auto m = (*r)->insert_message(child_message(g, "a", "same", "key" + std::to_string(k)));
			if (!m)
				return 3;
			// one line per answer, short enough to be written at once
			std::string line = std::to_string(k) + " " + m->message.id + " " +
					   (m->created ? "1" : "0") + " " + std::to_string(m->message.seq) + "\n";
			if (write(out[1], line.data(), line.size()) != static_cast<ssize_t>(line.size()))
				return 4;
		}
		return 0;
	}, release);
	close(out[1]);
	assert_true(ok);
	std::string all;
	char buf[4096];
	ssize_t n;
	while ((n = read(out[0], buf, sizeof buf)) > 0)
		all.append(buf, static_cast<size_t>(n));
	close(out[0]);
	std::map<int, std::set<std::string>> ids;
	std::map<int, int> created;
	std::set<std::string> seqs;
	size_t pos = 0, lines = 0;
	while (pos < all.size()) {
		size_t eol = all.find('\n', pos);
		char id[64];
		int k, c;
		long long seq;
		assert_int_equal(sscanf(all.substr(pos, eol - pos).c_str(), "%d %63s %d %lld", &k, id, &c, &seq), 4);
		ids[k].insert(id);
		created[k] += c;
		seqs.insert(std::to_string(seq));
		pos = eol + 1;
		lines++;
	}
	assert_int_equal(lines, kids * keys);
	for (int k = 0; k < keys; k++) {
		assert_int_equal(ids[k].size(), 1);
		assert_int_equal(created[k], 1);
	}
	assert_int_equal(seqs.size(), keys);
	assert_int_equal(check_seqs(s, g, "a"), keys);
	assert_int_equal(send(s, g, "b", "after").message.seq, keys + 1);
}

// Both sides of many pairs create their direct conversation at once from
// several processes: one conversation per pair.  For the first pair the
// race is certain: this test inserts the pair's conversation and holds
// its transaction open until every child's insert waits for it, so all
// of them find the pair taken only once it commits.
static void test_direct_pair_race(void **state)
{
	Store &s = store(state);
	const int pairs = 10, kids = 6;
	for (int p = 0; p < pairs; p++) {
		assert_true(s.upsert_user("x" + std::to_string(p), ProfileHints{}).ok());
		assert_true(s.upsert_user("y" + std::to_string(p), ProfileHints{}).ok());
	}
	std::string d = dsn(state);
	int out[2];
	assert_int_equal(pipe(out), 0);
	Admin a(d);
	a.value("BEGIN");
	a.value("INSERT INTO conversations (id, type, created_by, created_at, updated_at, direct_key) "
		"VALUES ('held', 'direct', 'x0', 1, 1, E'x0\\ny0')");
	a.value("INSERT INTO participants (conversation_id, user_id, role, joined_at) "
		"VALUES ('held', 'x0', 'admin', 1), ('held', 'y0', 'member', 1)");
	auto release = [&]() {
		await_lock_waiters(d, kids);
		a.value("COMMIT");
	};
	bool ok = in_children(kids, [&](int i) {
		close(out[0]);
		auto r = open_postgres_store(options(d));
		if (!r)
			return 2;
		for (int p = 0; p < pairs; p++) {
			std::string x = "x" + std::to_string(p), y = "y" + std::to_string(p);
			NewConversation nc = i % 2 ? direct_of(x, y) : direct_of(y, x);
			nc.id += "-" + std::to_string(getpid()); // as child_message()
			auto c = (*r)->create_conversation(nc);
			if (!c || c->view.participants.size() != 2)
				return 3;
			std::string line = std::to_string(p) + " " + c->id + "\n";
			if (write(out[1], line.data(), line.size()) != static_cast<ssize_t>(line.size()))
				return 4;
		}
		return 0;
	}, release);
	close(out[1]);
	assert_true(ok);
	std::string all;
	char buf[4096];
	ssize_t n;
	while ((n = read(out[0], buf, sizeof buf)) > 0)
		all.append(buf, static_cast<size_t>(n));
	close(out[0]);
	std::map<int, std::set<std::string>> ids;
	size_t pos = 0;
	while (pos < all.size()) {
		size_t eol = all.find('\n', pos);
		char id[64];
		int p;
		assert_int_equal(sscanf(all.substr(pos, eol - pos).c_str(), "%d %63s", &p, id), 2);
		ids[p].insert(id);
		pos = eol + 1;
	}
	assert_int_equal(ids.size(), pairs);
	for (const auto &it : ids)
		assert_int_equal(it.second.size(), 1);
	assert_str_eq(*ids[0].begin(), "held");
	assert_str_eq(a.value("SELECT count(*) FROM conversations"), std::to_string(pairs));
	assert_str_eq(a.value("SELECT count(*) FROM participants"), std::to_string(2 * pairs));
}

// Nodes starting together on an empty database: one creates the schema,
// the others wait for it and use it.  The test holds the store's schema
// lock (the key of store_pg.cpp) until all six wait for it, so that they
// all find the database empty before any goes on.
static void test_schema_applied_once(void **)
{
	std::string d = fresh_db();
	Admin a(d);
	a.value("BEGIN");
	a.value("SELECT pg_advisory_xact_lock(8174729797241954676)");
	auto release = [&]() {
		await_lock_waiters(d, 6);
		a.value("COMMIT");
	};
	bool ok = in_children(6, [&](int) {
		auto r = open_postgres_store(options(d));
		if (!r) {
			fprintf(stderr, "open: %s\n", r.error().message.c_str());
			return 2;
		}
		return (*r)->upsert_user("u", ProfileHints{}).ok() ? 0 : 3;
	}, release);
	assert_true(ok);
	assert_str_eq(a.value("SELECT count(*) || ' ' || max(version) FROM qryptchat_schema"), "1 1");
	auto s = open_store(d); // and a later start finds it
	assert_true((*s->get_user("u")).has_value());
}

static void test_newer_schema_refused(void **)
{
	std::string d = fresh_db();
	open_store(d).reset();
	{
		Admin a(d);
		a.value("UPDATE qryptchat_schema SET version = 99");
	}
	auto r = open_postgres_store(options(d));
	assert_false(r.ok());
	assert_int_equal(r.error().code, Err::DatabaseError);
	if (r.error().message.find("schema version 99 is newer") == std::string::npos)
		fail_msg("%s", r.error().message.c_str());
}

static void test_open_errors(void **)
{
	PgOptions o;
	o.dsn = "host=/nonexistent-dir dbname=qryptchat user=nobody password=s3cr3t";
	auto r = open_postgres_store(o);
	assert_false(r.ok());
	const std::string &m = r.error().message;
	if (m.find("cannot connect") == std::string::npos || m.find("/nonexistent-dir") == std::string::npos)
		fail_msg("%s", m.c_str());
	assert_true(m.find("s3cr3t") == std::string::npos);
	o.dsn = "postgresql://nobody:s3cr3t@/qryptchat?host=/nonexistent-dir";
	r = open_postgres_store(o);
	assert_false(r.ok());
	assert_true(r.error().message.find("s3cr3t") == std::string::npos);
	o.dsn = "postgresql://nobody:s3%zzcr3t@/qryptchat"; // libpq quotes what it cannot decode
	r = open_postgres_store(o);
	assert_false(r.ok());
	if (r.error().message.find("s3%zzcr3t") != std::string::npos ||
	    r.error().message.find("zzcr") != std::string::npos)
		fail_msg("%s", r.error().message.c_str());
	o.dsn = dsn_of("no_such_database");
	r = open_postgres_store(o);
	assert_false(r.ok());
	if (r.error().message.find("no_such_database") == std::string::npos)
		fail_msg("%s", r.error().message.c_str());
}

// A statement held up past query_timeout_ms (here by another
// transaction's lock on the conversation) fails DATABASE_ERROR, leaves
// nothing behind, and the store goes on.
static void test_query_timeout(void **state)
{
	Store &s = store(state);
	users(s, {"a"});
	std::string g = make_group(s, "a", {});
	assert_int_equal(send(s, g, "a", "1").message.seq, 1);
	PgOptions o = options(dsn(state));
	o.query_timeout_ms = 300;
	auto quick = open_postgres_store(o);
	assert_true(quick.ok());
	Admin a(dsn(state));
	a.value("BEGIN");
	a.value("SELECT 1 FROM conversations WHERE id = '" + g + "' FOR UPDATE");
	auto r = (*quick)->insert_message(text_message(g, "a", "held up"));
	assert_false(r.ok());
	assert_int_equal(r.error().code, Err::DatabaseError);
	assert_true((*quick)->healthy());
	a.value("COMMIT");
	assert_int_equal(send(**quick, g, "a", "2").message.seq, 2);
	assert_int_equal(check_seqs(s, g, "a"), 2);
}

// The database goes away: calls fail DATABASE_ERROR and healthy() says
// so; once it is back, the next call reconnects and succeeds.
static void test_database_down_and_back(void **state)
{
	Store &s = store(state);
	users(s, {"a", "b"});
	std::string g = make_group(s, "a", {"b"});
	send(s, g, "a", "before");
	assert_true(s.healthy());
	assert_true(g_pg->stop());
	auto down = s.insert_message(text_message(g, "a", "lost"));
	assert_false(down.ok());
	assert_int_equal(down.error().code, Err::DatabaseError);
	auto read = s.load_messages(PageQuery{g, "b", 10, std::nullopt, std::nullopt});
	assert_false(read.ok());
	assert_int_equal(read.error().code, Err::DatabaseError);
	assert_false(s.upsert_user("c", ProfileHints{}).ok());
	assert_false(s.healthy());
	assert_true(g_pg->start());
	assert_int_equal(send(s, g, "b", "after").message.seq, 2);
	assert_true(s.healthy());
	auto p = s.load_messages(PageQuery{g, "b", 10, std::nullopt, std::nullopt});
	assert_true(p.ok());
	assert_int_equal(p->messages.size(), 2);
}

int main(void)
{
	g_log_level = LogLevel::Error;
	signal(SIGPIPE, SIG_IGN);
	std::string why;
	g_pg = test::start_postgres(&why);
	if (!g_pg) {
		test::skip_without_engine("test_store_pg", why);
		return 0;
	}
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
		cmocka_unit_test_setup_teardown(test_nul_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_overlapping_calls, setup, teardown),
		cmocka_unit_test_setup_teardown(test_fibers_share_the_pool, setup, teardown),
		cmocka_unit_test_setup_teardown(test_concurrent_writers, setup, teardown),
		cmocka_unit_test_setup_teardown(test_idempotency_race, setup, teardown),
		cmocka_unit_test_setup_teardown(test_direct_pair_race, setup, teardown),
		cmocka_unit_test(test_schema_applied_once),
		cmocka_unit_test(test_newer_schema_refused),
		cmocka_unit_test(test_open_errors),
		cmocka_unit_test_setup_teardown(test_query_timeout, setup, teardown),
		cmocka_unit_test_setup_teardown(test_database_down_and_back, setup, teardown),
	};
	int failed = cmocka_run_group_tests_name("store (PostgreSQL)", tests, nullptr, nullptr);
	g_pg.reset();
	return failed;
}
