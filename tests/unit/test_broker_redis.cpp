// broker_redis: two or three cluster nodes in one process, on one libev
// loop, against a private redis-server (tests/engines): room and user
// fan-out across nodes, presence transitions seen exactly once, a node
// that dies, Redis going away and coming back.
//
// Waiting is on conditions: the loop runs until what a test expects holds
// or a deadline passes (a failure then).  Nothing is timed: the deadline
// only bounds a hang.
#include <ev.h>
#include <hiredis/hiredis.h>
#include <time.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "../engines/engines.hpp"
#include "cmocka.hpp"
#include "qryptchat/broker_redis.hpp"
#include "qryptchat/log.hpp"

using namespace qc;

namespace {

// How long a condition may take to hold before the test fails: long
// enough for a loaded machine or a sanitizer build, never reached when
// things work.
constexpr double kDeadlineS = 10.0;

std::unique_ptr<test::RedisServer> g_redis;
struct ev_loop *g_loop = nullptr;

struct Sink final : DeliverySink {
	std::vector<std::pair<SessionId, std::string>> got;
	void deliver(SessionId s, const FramePtr &f) override
	{
		got.emplace_back(s, std::string(f->data(), f->size()));
	}
	size_t count(SessionId s, const std::string &part) const
	{
		size_t n = 0;
		for (const auto &g : got)
			if (g.first == s && g.second.find(part) != std::string::npos)
				n++;
		return n;
	}
};

struct Listener final : ClusterListener {
	std::vector<std::pair<std::string, bool>> events;
	void presence_changed(const std::string &user, bool online) override
	{
		events.emplace_back(user, online);
	}
	size_t count(const std::string &user, bool online) const
	{
		size_t n = 0;
		for (const auto &e : events)
			if (e.first == user && e.second == online)
				n++;
		return n;
	}
};

// One node: its room table, what it delivered and pushed, its broker.
struct Node {
	RoomTable rooms;
	Sink sink;
	Listener listener;
	std::unique_ptr<RedisBroker> broker;

	Node(const std::string &id, int64_t ttl_ms = 15000, const std::string &url = g_redis->url)
	{
		RedisOptions o;
		o.url = url;
		o.node_id = id;
		o.presence_ttl_ms = ttl_ms;
		o.reconnect_ms = 50;
		broker = std::make_unique<RedisBroker>(g_loop, o, rooms, sink, listener);
	}
	// A socket of `user` authenticates and joins `room` (as dispatch does).
	void open(SessionId s, const std::string &user, const std::string &room = "")
	{
		if (rooms.add_user_session(user, s))
			broker->user_up(user);
		if (!room.empty() && rooms.join(s, room) && rooms.members(room).size() == 1)
			broker->room_opened(room);
	}
	void close(SessionId s)
	{
		std::string user = rooms.user_of(s);
		for (const auto &room : rooms.leave_all(s))
			if (rooms.members(room).empty())
				broker->room_closed(room);
		if (rooms.remove_user_session(user, s))
			broker->user_down(user);
	}
};

void wake(struct ev_loop *, ev_timer *, int) {}

// Runs the loop until `cond` holds; false after the deadline.  A short
// repeating timer wakes the loop so that the deadline is seen even when
// nothing else happens.
bool wait_for(const std::function<bool()> &cond)
{
	ev_timer tick;
	ev_timer_init(&tick, wake, 0.02, 0.02);
	ev_timer_start(g_loop, &tick);
	ev_now_update(g_loop);
	double deadline = ev_now(g_loop) + kDeadlineS;
	bool ok = true;
	while (!cond()) {
		ev_now_update(g_loop);
		if (ev_now(g_loop) > deadline) {
			ok = false;
			break;
		}
		ev_run(g_loop, EVRUN_ONCE);
	}
	ev_timer_stop(g_loop, &tick);
	return ok;
}

bool connected(const Node &n)
{
	return n.broker->stats().connected;
}

bool idle(std::initializer_list<const Node *> nodes)
{
	for (const Node *n : nodes)
		if (!n->broker->idle())
			return false;
	return true;
}

FramePtr frame(const std::string &text)
{
	auto f = std::make_shared<Frame>();
	f->buf.assign(kFrameHeadroom, '\0');
	f->buf += text;
	return f;
}

// A command sent to Redis by the test itself, outside the loop.
void redis_do(const char *command)
{
	std::string path = g_redis->url.substr(5);
	redisContext *c = redisConnectUnix(path.c_str());
	assert_non_null(c);
	assert_int_equal(c->err, 0);
	auto *r = static_cast<redisReply *>(redisCommand(c, command));
	assert_non_null(r);
	assert_int_not_equal(r->type, REDIS_REPLY_ERROR);
	freeReplyObject(r);
	redisFree(c);
}

// Each test starts from an empty Redis.
void flushall()
{
	redis_do("FLUSHALL");
}

int setup(void **)
{
	flushall();
	return 0;
}

} // namespace

static void test_room_fanout(void **)
{
	Node a("A"), b("B"), c("C");
	assert_true(wait_for([&] { return connected(a) && connected(b) && connected(c); }));
	a.open(11, "alice", "r");
	b.open(21, "bob", "r");
	b.open(22, "carol", "r");
	c.open(31, "dave", "other");
	// A marker room where B and C both listen, published to after "r".
	b.open(23, "erin", "m");
	c.open(32, "frank", "m");
	assert_true(wait_for([&] {
		return b.broker->stats().subscribed_rooms == 2 && c.broker->stats().subscribed_rooms == 2;
	}));

	RoomEvent ev;
	ev.frame = frame("{\"common\":1}");
	ev.per_user["carol"] = frame("{\"carol\":1}");
	ev.per_user["zed"] = frame("{\"zed\":1}"); // nobody's socket here
	ev.except = 11;                             // A's own socket: meaningless on B
	assert_int_equal(a.broker->publish("r", ev), 0);
	RoomEvent marker;
	marker.frame = frame("{\"marker\":1}");
	assert_int_equal(a.broker->publish("m", marker), 0);
	assert_true(wait_for([&] { return b.sink.count(23, "marker") && c.sink.count(32, "marker"); }));

	// Exactly once each, the per-user frame for carol, nothing on C
	// (not subscribed to "r"), nothing echoed back to A.
	assert_int_equal(b.sink.got.size(), 3);
	assert_int_equal(b.sink.count(21, "common"), 1);
	assert_int_equal(b.sink.count(22, "carol"), 1);
	assert_int_equal(c.sink.got.size(), 1);
	assert_true(a.sink.got.empty());
	assert_int_equal(a.broker->stats().published, 2);
	assert_int_equal(b.broker->stats().received, 2);
	assert_int_equal(b.broker->stats().remote_deliveries, 3);
	assert_int_equal(c.broker->stats().received, 1);

	// The room closes on B: no more deliveries there.
	b.close(21);
	b.close(22);
	assert_true(wait_for([&] { return b.broker->stats().subscribed_rooms == 1; }));
	a.broker->publish("r", ev);
	a.broker->publish("m", marker);
	assert_true(wait_for([&] { return b.sink.count(23, "marker") == 2; }));
	assert_int_equal(b.sink.got.size(), 4);
}

static void test_publish_user(void **)
{
	Node a("A"), b("B");
	assert_true(wait_for([&] { return connected(a) && connected(b); }));
	a.open(11, "bob");
	b.open(21, "bob");
	b.open(22, "bob");
	assert_true(wait_for([&] { return b.broker->stats().subscribed_users == 1; }));
	// Local sockets but `except` at once; the other node's sockets by Redis.
	assert_int_equal(a.broker->publish_user("bob", frame("{\"hello\":1}"), 11), 0);
	assert_int_equal(a.broker->publish_user("bob", frame("{\"marker\":1}"), 0), 1);
	assert_true(wait_for([&] { return b.sink.count(22, "marker") == 1; }));
	assert_int_equal(b.sink.count(21, "hello"), 1);
	assert_int_equal(b.sink.count(22, "hello"), 1);
	assert_int_equal(b.sink.got.size(), 4);
	assert_int_equal(a.sink.got.size(), 1);
}

static void test_presence_once(void **)
{
	Node a("A"), b("B"), c("C");
	assert_true(wait_for([&] { return connected(a) && connected(b) && connected(c); }));
	auto pushes = [&](bool online) {
		return a.listener.count("u", online) + b.listener.count("u", online) +
		       c.listener.count("u", online);
	};

	a.open(11, "u");
	assert_true(wait_for([&] { return idle({&a}) && c.broker->online("u") && b.broker->online("u"); }));
	assert_int_equal(a.listener.count("u", true), 1); // on the node where it happened
	assert_int_equal(pushes(true), 1);
	assert_false(a.broker->online_elsewhere("u", 11));
	assert_true(c.broker->online_elsewhere("u", 0));

	// A second node: no push; A now sees the user elsewhere.
	b.open(21, "u");
	assert_true(wait_for([&] { return idle({&b}) && a.broker->online_elsewhere("u", 11); }));
	assert_int_equal(pushes(true), 1);

	// Down on A: still on B, nothing.
	a.close(11);
	assert_true(wait_for([&] { return idle({&a}) && !b.broker->online_elsewhere("u", 21); }));
	assert_true(a.broker->online("u"));
	assert_int_equal(pushes(false), 0);

	// Down on B: offline everywhere, once.
	b.close(21);
	assert_true(wait_for([&] {
		return idle({&b}) && !a.broker->online("u") && !c.broker->online("u");
	}));
	assert_int_equal(b.listener.count("u", false), 1);
	assert_int_equal(pushes(false), 1);
	assert_int_equal(pushes(true), 1);
	assert_true(a.broker->online_users().empty());

	// Two nodes at once, in the same turn of the loop: one push each way.
	auto pushes_v = [&](bool online) {
		return a.listener.count("v", online) + b.listener.count("v", online) +
		       c.listener.count("v", online);
	};
	a.open(12, "v");
	b.open(22, "v");
	assert_true(wait_for([&] { return idle({&a, &b}) && c.broker->online("v"); }));
	assert_int_equal(pushes_v(true), 1);
	a.close(12);
	b.close(22);
	assert_true(wait_for([&] { return idle({&a, &b}) && !c.broker->online("v"); }));
	assert_int_equal(pushes_v(false), 1);
	assert_int_equal(pushes_v(true), 1);
}

static void test_node_death(void **)
{
	// A short lease: B's users are offline within 300 ms + one check.
	auto a = std::make_unique<Node>("A", 300);
	auto b = std::make_unique<Node>("B", 300);
	auto c = std::make_unique<Node>("C", 300);
	assert_true(wait_for([&] { return connected(*a) && connected(*b) && connected(*c); }));
	a->open(11, "alice", "r");
	a->open(12, "shared");
	b->open(21, "b1", "r");
	b->open(22, "shared");
	assert_true(wait_for([&] {
		return idle({a.get(), b.get()}) && a->broker->stats().subscribed_rooms == 1 &&
		       c->broker->online("b1") && c->broker->online_elsewhere("shared", 0);
	}));

	// b1 starts typing on B; A's socket in the room sees it.
	RoomEvent ev;
	ev.frame = frame("{\"type\":\"typing_update\",\"isTyping\":true}");
	ev.typing = RoomEvent::Typing{"b1", "Bee One", true};
	ev.except = 21;
	b->broker->publish("r", ev);
	assert_true(wait_for([&] { return a->sink.count(11, "typing_update") == 1; }));

	// B is killed: destroyed without shutdown, its lease left to expire.
	b.reset();
	auto pushes = [&](const std::string &u, bool online) {
		return a->listener.count(u, online) + c->listener.count(u, online);
	};
	assert_true(wait_for([&] { return pushes("b1", false) == 1; }));
	assert_true(wait_for([&] {
		return idle({a.get(), c.get()}) && !a->broker->online("b1") && !c->broker->online("b1") &&
		       !a->broker->online_elsewhere("shared", 12);
	}));
	assert_int_equal(pushes("b1", false), 1);
	assert_int_equal(pushes("shared", false), 0); // still on A
	assert_true(c->broker->online("shared"));
	assert_int_equal(a->broker->stats().nodes_expired + c->broker->stats().nodes_expired, 1);

	// The typing B had announced ends for A's socket.
	auto &got = a->sink.got;
	assert_int_equal(a->sink.count(11, "\"isTyping\":false"), 1);
	const std::string &stop = got.back().second;
	assert_true(stop.find("\"type\":\"typing_update\"") != std::string::npos);
	assert_true(stop.find("\"conversationId\":\"r\"") != std::string::npos);
	assert_true(stop.find("\"userId\":\"b1\"") != std::string::npos);
	assert_true(stop.find("\"username\":\"Bee One\"") != std::string::npos);
	assert_true(stop.find("\"requestId\":\"") != std::string::npos);
}

static void test_stalled_node(void **)
{
	// B stalls long enough for its lease to be claimed (its lease key is
	// removed here, as if it had expired), then carries on: its users,
	// pushed offline by A, are pushed online again when B finds out.
	Node a("A", 300), b("B");
	assert_true(wait_for([&] { return connected(a) && connected(b); }));
	b.open(21, "b1");
	assert_true(wait_for([&] { return idle({&b}) && a.broker->online("b1"); }));
	redis_do("DEL qc:node:B");
	assert_true(wait_for([&] { return a.listener.count("b1", false) == 1; }));
	assert_true(wait_for([&] { return idle({&a}) && !a.broker->online("b1"); }));
	assert_int_equal(a.broker->stats().nodes_expired, 1);
	// B's next presence script finds it unregistered and announces again.
	b.open(22, "b2");
	assert_true(wait_for([&] {
		return idle({&b}) && a.broker->online("b1") && a.broker->online("b2");
	}));
	assert_int_equal(b.listener.count("b1", true), 2);
	assert_int_equal(b.listener.count("b2", true), 1);
	assert_int_equal(a.listener.events.size(), 1);
	assert_true(b.broker->stats().connected);
}

static void test_shutdown_withdraws(void **)
{
	Node a("A");
	auto b = std::make_unique<Node>("B");
	assert_true(wait_for([&] { return connected(a) && connected(*b); }));
	b->open(21, "s");
	assert_true(wait_for([&] { return idle({b.get()}) && a.broker->online("s"); }));
	b->broker->shutdown();
	assert_false(b->broker->stats().connected);
	// Left on B at shutdown: withdrawn, pushed offline by B, seen by A.
	assert_true(wait_for([&] { return b->listener.count("s", false) == 1 && !a.broker->online("s"); }));
	assert_int_equal(a.listener.events.size(), 0);
	b.reset();
	assert_int_equal(a.broker->stats().nodes_expired, 0);
}

static void test_redis_restart(void **)
{
	Node a("A"), b("B");
	assert_true(wait_for([&] { return connected(a) && connected(b); }));
	a.open(11, "alice", "r");
	b.open(21, "bob", "r");
	assert_true(wait_for([&] { return b.broker->stats().subscribed_rooms == 1 && idle({&a, &b}); }));

	assert_true(g_redis->stop());
	assert_true(wait_for([&] { return !connected(a) && !connected(b); }));
	// Down: local delivery goes on, the cluster part is counted as failed.
	RoomEvent ev;
	ev.frame = frame("{\"during\":1}");
	assert_int_equal(a.broker->publish("r", ev), 1);
	assert_int_equal(a.broker->stats().publish_failures, 1);
	assert_int_equal(a.sink.count(11, "during"), 1);
	// Presence is local: pushed at once, like the local broker.
	a.open(12, "xavier");
	assert_int_equal(a.listener.count("xavier", true), 1);
	assert_true(a.broker->online("xavier"));
	assert_false(b.broker->online("xavier"));
	assert_false(b.broker->online("alice"));

	assert_true(g_redis->start());
	assert_true(wait_for([&] {
		return connected(a) && connected(b) && b.broker->stats().subscribed_rooms == 1 &&
		       b.broker->online("xavier") && b.broker->online("alice") && idle({&a, &b});
	}));
	assert_int_equal(a.broker->stats().reconnects, 1);
	assert_int_equal(b.broker->stats().reconnects, 1);
	// Re-announced without a second push (bob's one is from his login).
	assert_int_equal(a.listener.count("xavier", true), 1);
	assert_int_equal(a.listener.events.size(), 2);
	assert_int_equal(b.listener.events.size(), 1);

	ev.frame = frame("{\"after\":1}");
	assert_int_equal(a.broker->publish("r", ev), 1);
	assert_true(wait_for([&] { return b.sink.count(21, "after") == 1; }));
	assert_int_equal(b.sink.count(21, "during"), 0); // not replayed
}

static void test_unreachable(void **)
{
	// No Redis there: the broker is the local one, and keeps trying.
	std::string nowhere = "unix:" + g_redis->dir + "/nowhere.sock";
	Node a("A", 15000, nowhere);
	a.open(11, "alice", "r");
	a.open(12, "bob", "r");
	assert_int_equal(a.listener.count("alice", true), 1);
	assert_true(a.broker->online("alice"));
	assert_true(a.broker->online_elsewhere("alice", 12));
	assert_false(a.broker->online_elsewhere("alice", 11));
	RoomEvent ev;
	ev.frame = frame("{\"x\":1}");
	ev.per_user["bob"] = frame("{\"bob\":1}");
	ev.except = 11;
	assert_int_equal(a.broker->publish("r", ev), 1);
	assert_int_equal(a.sink.count(12, "bob"), 1);
	assert_int_equal(a.broker->publish_user("alice", frame("{\"y\":1}"), 0), 1);
	// Reconnection attempts run on the loop and keep failing.
	ev_timer tick;
	ev_timer_init(&tick, wake, 0.2, 0.);
	ev_timer_start(g_loop, &tick);
	assert_true(wait_for([&] { return !ev_is_active(&tick); }));
	ClusterStats st = a.broker->stats();
	assert_false(st.connected);
	assert_int_equal(st.publish_failures, 2);
	assert_int_equal(st.published, 0);
	assert_int_equal(st.online_users, 2);
	a.close(11);
	assert_int_equal(a.listener.count("alice", false), 1);
}

static void test_bad_url(void **)
{
	RoomTable rooms;
	Sink sink;
	Listener listener;
	for (const char *url : {"http://x", "redis://", "redis://h:0", "redis://h:1/x", "unix:"}) {
		RedisOptions o;
		o.url = url;
		o.node_id = "A";
		bool threw = false;
		try {
			RedisBroker b(g_loop, o, rooms, sink, listener);
		} catch (const std::exception &) {
			threw = true;
		}
		assert_true(threw);
	}
}

int main(void)
{
	std::string why;
	g_redis = test::start_redis(&why);
	if (!g_redis && test::skip_without_engine("broker_redis", why))
		return 0;
	// Connection changes are logged at warn; the rest would be noise here.
	g_log_level = LogLevel::Warn;
	g_loop = ev_loop_new(EVBACKEND_EPOLL);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup(test_room_fanout, setup),
		cmocka_unit_test_setup(test_publish_user, setup),
		cmocka_unit_test_setup(test_presence_once, setup),
		cmocka_unit_test_setup(test_node_death, setup),
		cmocka_unit_test_setup(test_stalled_node, setup),
		cmocka_unit_test_setup(test_shutdown_withdraws, setup),
		cmocka_unit_test_setup(test_redis_restart, setup),
		cmocka_unit_test(test_unreachable),
		cmocka_unit_test(test_bad_url),
	};
	int rc = cmocka_run_group_tests_name("broker_redis", tests, nullptr, nullptr);
	ev_loop_destroy(g_loop);
	g_redis.reset();
	return rc;
}
