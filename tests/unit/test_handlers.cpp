// handlers with a store that fails: every DATABASE_ERROR path leaves
// nothing half-written and pushes nothing.  Failures are injected at the
// interface (the Nth store call) and inside SQLite transactions (a trigger
// that aborts the last row of a multi-row write).
#include <sqlite3.h>
#include <unistd.h>

#include <functional>
#include <map>

#include "cmocka.hpp"
#include "fakes/failing_store.hpp"
#include "qryptchat/handlers.hpp"
#include "qryptchat/log.hpp"
#include "qryptchat/store_sqlite.hpp"

using namespace qc;

namespace {

struct Recorder final : public Host, public DeliverySink {
	std::map<SessionId, std::vector<std::string>> frames;
	std::vector<std::pair<SessionId, int>> closes;
	void send(SessionId s, const FramePtr &f) override { deliver(s, f); }
	void deliver(SessionId s, const FramePtr &f) override
	{
		frames[s].emplace_back(f->data(), f->size());
	}
	void close(SessionId s, int code, const std::string &) override { closes.emplace_back(s, code); }
	void token_changed(SessionId) override {}
	void typing_changed() override {}
	size_t total() const
	{
		size_t n = 0;
		for (const auto &kv : frames)
			n += kv.second.size();
		return n;
	}
};

const std::string kSecret = "handlers-test-secret-0123456789abcdef";

// A chat world: users a, b, c (a on two sockets), group G with a1 and b1
// joined and three messages.
struct World {
	std::string dir, path;
	std::unique_ptr<Store> real;
	std::unique_ptr<test::FailingStore> store;
	RoomTable rooms;
	Recorder rec;
	PresencePusher presence;
	std::unique_ptr<LocalBroker> broker;
	Stats stats;
	Config cfg = config_defaults();
	AuthParams auth;
	std::unique_ptr<Ctx> ctx;
	std::map<std::string, Caller> sock; // a1, a2, b1, c1
	std::string group;

	World()
	{
		char d[] = "/tmp/qc-handlers-XXXXXX";
		dir = mkdtemp(d);
		path = dir + "/chat.db";
		SqliteOptions o;
		o.path = path;
		real = std::move(*open_sqlite_store(o));
		store = std::make_unique<test::FailingStore>(*real);
		broker = std::make_unique<LocalBroker>(rooms, rec, presence);
		auth.secret = kSecret;
		ctx = std::make_unique<Ctx>(Ctx{*store, rooms, *broker, stats, cfg, auth, rec});
		presence.ctx = ctx.get();
		SessionId id = 1;
		for (const char *name : {"a1", "a2", "b1", "c1", "d1"}) {
			Caller c;
			c.id = id++;
			Claims cl;
			cl.sub = std::string(1, name[0]);
			cl.exp = now_ms() / 1000 + 3600;
			handle_upgrade_auth(*ctx, c, cl);
			sock[name] = c;
		}
		request("a1", "create_conversation", R"({"participantIds":["b","c"],"name":"G"})");
		group = field(last("a1"), "conversation", "id");
		request("b1", "join_conversation", "{\"conversationId\":\"" + group + "\"}");
		for (int i = 0; i < 3; i++)
			request("a1", "send_message",
				"{\"conversationId\":\"" + group + "\",\"content\":\"m" + std::to_string(i) + "\"}");
		rec.frames.clear();
	}
	~World()
	{
		ctx.reset();
		store.reset();
		real.reset();
		for (const char *s : {"", "-wal", "-shm"})
			unlink((path + s).c_str());
		rmdir(dir.c_str());
	}

	void request(const std::string &who, const std::string &type, const std::string &payload)
	{
		handle_text(*ctx, sock[who],
			    "{\"type\":\"" + type + "\",\"payload\":" + payload + ",\"requestId\":\"r\"}");
	}
	std::string last(const std::string &who)
	{
		auto &v = rec.frames[sock[who].id];
		assert_false(v.empty());
		return v.back();
	}
	static std::string field(const std::string &frame, const char *obj, const char *key)
	{
		JsonDoc d = json_parse(frame);
		return std::string(json_root(d).get("payload").get(obj).get(key).str());
	}
	// Everything a failed request must not have changed.
	std::string snapshot()
	{
		std::string s;
		for (const char *u : {"a", "b", "c", "d"}) {
			auto list = real->conversations(u);
			for (const auto &v : *list) {
				s += v.id + ":" + std::to_string(v.participants.size()) + ";";
				auto p = real->load_messages(PageQuery{v.id, u, 200, std::nullopt, std::nullopt});
				for (const auto &m : p->messages)
					s += std::to_string(m.seq) + "=" + m.id + "=" + m.content.value_or("-") + ",";
			}
			s += "|";
		}
		return s;
	}
};

std::string type_of(const std::string &frame)
{
	JsonDoc d = json_parse(frame);
	return std::string(json_root(d).get("type").str());
}

std::string code_of(const std::string &frame)
{
	JsonDoc d = json_parse(frame);
	return std::string(json_root(d).get("payload").get("code").str());
}

// Runs `act` with the Nth store call failing, for N = 1, 2, ... until a
// run makes fewer calls than N.  Each failure must either be answered
// with DATABASE_ERROR (then nothing changed and nothing was pushed) or be
// one of the best-effort calls (then the request succeeds as `ok_type`).
void every_failure(const char *what, const std::string &ok_type,
		   const std::function<void(World &)> &act)
{
	int tried = 0;
	for (int n = 1;; n++) {
		World w;
		std::string before = w.snapshot();
		w.store->fail_call(n);
		act(w);
		if (!w.store->fired())
			break; // the request needs fewer than n calls: all covered
		tried++;
		w.store->fail_call(0);
		auto &mine = w.rec.frames[w.sock["a1"].id];
		assert_int_equal(mine.size() >= 1, 1);
		const std::string &reply = mine.front();
		if (type_of(reply) == "error") {
			if (code_of(reply) != "DATABASE_ERROR")
				fail_msg("%s, call %d: %s", what, n, reply.c_str());
			assert_int_equal(mine.size(), 1);
			if (w.rec.total() != 1)
				fail_msg("%s, call %d: a failed request pushed %zu frames", what, n,
					 w.rec.total() - 1);
			if (w.snapshot() != before)
				fail_msg("%s, call %d: a failed request changed the store", what, n);
			assert_true(w.stats.database_errors >= 1);
		} else if (type_of(reply) != ok_type) {
			fail_msg("%s, call %d: unexpected %s", what, n, reply.c_str());
		}
	}
	assert_true(tried >= 1);
}

} // namespace

static void test_send_message_failures(void **)
{
	every_failure("send_message", "message_sent", [](World &w) {
		w.request("a1", "send_message", "{\"conversationId\":\"" + w.group + "\",\"content\":\"x\"}");
	});
}

static void test_send_copies_reply_failures(void **)
{
	every_failure("send_message copies", "message_sent", [](World &w) {
		auto p = w.real->load_messages(PageQuery{w.group, "a", 1, std::nullopt, std::nullopt});
		std::string reply = p->messages.back().id;
		w.request("a1", "send_message",
			  "{\"conversationId\":\"" + w.group +
				  "\",\"encryptedContents\":{\"a\":\"A\",\"b\":\"B\",\"c\":\"C\"},"
				  "\"replyToId\":\"" + reply + "\",\"clientMessageId\":\"k\"}");
	});
}

static void test_create_conversation_failures(void **)
{
	every_failure("create group", "conversation_created", [](World &w) {
		w.request("a1", "create_conversation", R"({"participantIds":["b","c","d"],"name":"H"})");
	});
	every_failure("create direct", "conversation_created", [](World &w) {
		w.request("a1", "create_conversation", R"({"type":"direct","participant_ids":["d"]})");
	});
}

static void test_read_path_failures(void **)
{
	every_failure("load_messages", "messages_loaded", [](World &w) {
		w.request("a1", "load_messages", "{\"conversationId\":\"" + w.group + "\",\"limit\":2}");
	});
	every_failure("load_conversations", "conversations_loaded",
		      [](World &w) { w.request("a1", "load_conversations", "{}"); });
	every_failure("join_conversation", "conversation_joined", [](World &w) {
		w.request("a1", "join_conversation", "{\"conversationId\":\"" + w.group + "\"}");
	});
	every_failure("typing_start", "typing_start", [](World &w) {
		w.request("a1", "typing_start", "{\"conversationId\":\"" + w.group + "\"}");
	});
}

static void test_auth_failure(void **)
{
	every_failure("auth", "auth_success", [](World &w) {
		std::string claims = "{\"sub\":\"a\",\"exp\":" + std::to_string(now_ms() / 1000 + 60) + "}";
		w.request("a1", "auth", "{\"token\":\"" + sign_jwt_hs256(claims, kSecret) + "\"}");
	});
}

// A failure in the middle of a multi-row write rolls the whole request
// back: a trigger aborts the copy for "c" after the message row and the
// copies for "a" and "b" were written.
static void test_mid_transaction_rollback(void **)
{
	World w;
	std::string before = w.snapshot();
	sqlite3 *db = nullptr;
	assert_int_equal(sqlite3_open(w.path.c_str(), &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db,
				      "CREATE TRIGGER inject BEFORE INSERT ON message_copies "
				      "WHEN NEW.recipient_id = 'c' BEGIN SELECT RAISE(ABORT, 'injected'); END;"
				      "CREATE TRIGGER inject2 BEFORE INSERT ON participants "
				      "WHEN NEW.user_id = 'd' BEGIN SELECT RAISE(ABORT, 'injected'); END;",
				      nullptr, nullptr, nullptr),
			 SQLITE_OK);
	w.request("a1", "send_message",
		  "{\"conversationId\":\"" + w.group + "\",\"encryptedContents\":{\"a\":\"A\",\"b\":\"B\",\"c\":\"C\"}}");
	assert_str_eq(code_of(w.last("a1")), "DATABASE_ERROR");
	w.request("a1", "create_conversation", R"({"participantIds":["b","c","d"]})");
	assert_str_eq(code_of(w.last("a1")), "DATABASE_ERROR");
	assert_int_equal(w.rec.total(), 2); // the two errors, no push
	assert_str_eq(w.snapshot(), before);
	assert_int_equal(sqlite3_exec(db, "DROP TRIGGER inject; DROP TRIGGER inject2;", nullptr, nullptr, nullptr),
			 SQLITE_OK);
	sqlite3_close(db);
	// The next message gets the next seq: the failed one left no gap.
	w.request("a1", "send_message", "{\"conversationId\":\"" + w.group + "\",\"content\":\"after\"}");
	JsonDoc d = json_parse(w.rec.frames[w.sock["a1"].id].back());
	assert_int_equal(*json_root(d).get("payload").get("message").get("seq").integer(), 4);
}

int main(void)
{
	g_log_level = LogLevel::Error;
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_send_message_failures),
		cmocka_unit_test(test_send_copies_reply_failures),
		cmocka_unit_test(test_create_conversation_failures),
		cmocka_unit_test(test_read_path_failures),
		cmocka_unit_test(test_auth_failure),
		cmocka_unit_test(test_mid_transaction_rollback),
	};
	return cmocka_run_group_tests_name("handlers", tests, nullptr, nullptr);
}
