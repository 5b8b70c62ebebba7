// A cluster: three qryptchatd nodes on one PostgreSQL and one Redis (each
// private to the test, on Unix sockets), clients spread across the nodes.
// The chat scenarios (messages, typing, presence, new conversations,
// history paging, recovery after reconnecting to another node) and the
// failures: Redis down and back, PostgreSQL down and back, a node killed
// with kill -9.  Skipped, saying so, where PostgreSQL or Redis is not
// installed (.ci/run installs both and requires these tests).
#include <poll.h>
#include <signal.h>

#include <algorithm>
#include <map>
#include <set>
#include <vector>

#include "../engines/engines.hpp"
#include "common.hpp"

using namespace qc::test;

namespace {

std::unique_ptr<PgServer> g_pg;
std::unique_ptr<RedisServer> g_redis;
std::vector<std::unique_ptr<ServerProcess>> g_nodes;

// Short enough for the kill -9 test to see a dead node's users go.
constexpr const char *kPresenceTtl = "2s";

std::unique_ptr<ServerProcess> start_node(const std::string &name)
{
	ServerOptions o;
	o.config = {{"store", "postgresql"},
		    {"postgres_dsn", g_pg->dsn},
		    {"broker", "redis"},
		    {"redis_url", g_redis->url},
		    {"node_id", name},
		    {"presence_ttl", kPresenceTtl},
		    {"rate_burst", "1000"},
		    {"rate_limit", "1000"}};
	return ServerProcess::start(o);
}

ServerProcess &node(int i) { return *g_nodes.at(static_cast<size_t>(i)); }

std::string profile(const std::string &id)
{
	return "\"user_metadata\":{\"username\":" + jquote(id) + ",\"full_name\":" + jquote("Name of " + id) +
	       "}";
}

std::unique_ptr<WsClient> user(const std::string &id, int n)
{
	auto c = connect_as(node(n).port(), id, profile(id));
	if (!c)
		fail_msg("cannot connect as %s to node %d", id.c_str(), n);
	return c;
}

// The next frame of `type`, passing over presence pushes: in a cluster
// they come once Redis has settled the user's state, so their place among
// other frames varies (test_presence_across_nodes checks them).
Json next_frame(WsClient &c, const std::string &type)
{
	for (;;) {
		Json j = expect_frame(c);
		std::string t = jstr(j.get(), "type");
		if (t == type)
			return j;
		if (t != "user_online" && t != "user_offline")
			fail_msg("expected %s, got %s", type.c_str(), t.c_str());
	}
}

std::string create_group(WsClient &c, const std::vector<std::string> &others)
{
	send_request(c, "create_conversation",
		     "{\"type\":\"group\",\"participant_ids\":" + ids_json(others) + ",\"name\":\"g\"}", "cc");
	Json j = expect_frame(c, "conversation_created");
	return jstr(j.get(), "payload.conversation.id");
}

Json join(WsClient &c, const std::string &conv)
{
	send_request(c, "join_conversation", conv_payload(conv), "join");
	Json j = next_frame(c, "conversation_joined");
	assert_str_eq(jstr(j.get(), "payload.conversationId"), conv);
	return j;
}

// Nothing but presence pushes is queued for this socket: a ping is answered
// next.
void quiet(WsClient &c)
{
	send_request(c, "ping", "{}", "quiet");
	next_frame(c, "pong");
}

// Sends a message from a socket joined to the room: the ack, then the push
// that every joined socket gets, the sender's own included.
int send_text(WsClient &c, const std::string &conv, const std::string &text)
{
	send_request(c, "send_message", conv_payload(conv, "\"content\":" + jquote(text)), "s");
	Json j = next_frame(c, "message_sent");
	int seq = static_cast<int>(jnum(j.get(), "payload.message.seq"));
	Json echo = next_frame(c, "message_received");
	assert_int_equal(static_cast<int>(jnum(echo.get(), "payload.message.seq")), seq);
	return seq;
}

Json load(WsClient &c, const std::string &conv, const std::string &more)
{
	send_request(c, "load_messages", conv_payload(conv, more), "ld");
	return next_frame(c, "messages_loaded");
}

// The next `n` message_received frames of a socket: their seqs, in the
// order they came.
std::vector<int> received(WsClient &c, int n)
{
	std::vector<int> out;
	for (int i = 0; i < n; i++) {
		Json j = next_frame(c, "message_received");
		out.push_back(static_cast<int>(jnum(j.get(), "payload.message.seq")));
	}
	return out;
}

// Polls a node's /stats until `path` reads `want` (10 s at most).
void wait_stat(const ServerProcess &s, const std::string &path, int want)
{
	int v = -1;
	for (int i = 0; i < 1000 && v != want; i++) {
		if (i)
			poll(nullptr, 0, 10);
		v = static_cast<int>(jnum(http_json(http_request(s.port(), "GET", "/stats")).get(), path));
	}
	if (v != want)
		fail_msg("%s is %d, not %d, after 10 s", path.c_str(), v, want);
}

bool cluster_connected(const ServerProcess &s)
{
	Json j = http_json(http_request(s.port(), "GET", "/stats"));
	const cJSON *c = jget(j.get(), "cluster.connected");
	return c && cJSON_IsTrue(c);
}

void wait_cluster_connected(const ServerProcess &s, bool want)
{
	for (int i = 0; i < 1000; i++) {
		if (cluster_connected(s) == want)
			return;
		poll(nullptr, 0, 10);
	}
	fail_msg("cluster.connected is not %s after 10 s", want ? "true" : "false");
}

} // namespace

// --- fan-out -----------------------------------------------------------------

// Sockets on three nodes in one room: each message, from whichever node, is
// delivered once to every joined socket but the sender's.
static void test_messages_reach_every_node_once(void **)
{
	if (g_nodes.empty())
		skip(); // no PostgreSQL or Redis here (said once, above)
	auto a = user("fo-a", 0), b = user("fo-b", 1), c = user("fo-c", 2), b2 = user("fo-b", 2);
	std::string g = create_group(*a, {"fo-b", "fo-c"});
	expect_frame(*b, "conversation_created"); // pushed across nodes
	expect_frame(*c, "conversation_created");
	expect_frame(*b2, "conversation_created");
	for (auto *s : {b.get(), c.get(), b2.get()})
		join(*s, g);

	// 10 from each node, sent without waiting for one another.
	constexpr int kEach = 10;
	for (int i = 0; i < kEach; i++)
		for (auto *s : {a.get(), b.get(), c.get()})
			send_request(*s, "send_message", conv_payload(g, "\"content\":\"m\""), "s");
	for (auto *s : {a.get(), b.get(), c.get(), b2.get()}) {
		// Every joined socket gets every message pushed, its own too;
		// a sender also gets its kEach acks (b2 sends nothing).
		int acks = s == b2.get() ? 0 : kEach;
		std::multiset<int> pushed;
		while (acks > 0 || pushed.size() < 3 * kEach) {
			Json j = expect_frame(*s);
			std::string type = jstr(j.get(), "type");
			if (type == "message_sent")
				acks--;
			else if (type == "message_received")
				pushed.insert(static_cast<int>(jnum(j.get(), "payload.message.seq")));
			else
				fail_msg("unexpected %s", type.c_str());
		}
		assert_int_equal(acks, 0);
		quiet(*s); // nothing twice
		// Seqs 1..30 once each: no gap, no duplicate, whichever node
		// assigned them.
		assert_true(std::vector<int>(pushed.begin(), pushed.end()) == range(1, 3 * kEach));
	}
}

// A node subscribes to a room's channel only while one of its sockets is
// joined to it; it still gets the room's pushes for its sockets then.
static void test_subscriptions_follow_joins(void **)
{
	if (g_nodes.empty())
		skip(); // no PostgreSQL or Redis here (said once, above)
	auto a = user("sj-a", 0), b = user("sj-b", 1);
	int before = static_cast<int>(jnum(http_json(http_request(node(1).port(), "GET", "/stats")).get(),
					   "cluster.subscribedRooms"));
	std::string g = create_group(*a, {"sj-b"});
	expect_frame(*b, "conversation_created");
	send_text(*a, g, "before b joins");
	quiet(*b); // not joined: not delivered
	join(*b, g);
	wait_stat(node(1), "cluster.subscribedRooms", before + 1);
	// /metrics carries the same gauge.
	assert_contains(http_request(node(1).port(), "GET", "/metrics").body,
			"\nqryptchatd_cluster_subscribed_rooms " + std::to_string(before + 1) + "\n");
	send_text(*a, g, "after");
	assert_true(received(*b, 1) == std::vector<int>{2});
	send_request(*b, "leave_conversation", conv_payload(g), "lv");
	expect_frame(*b, "conversation_left");
	wait_stat(node(1), "cluster.subscribedRooms", before);
	send_text(*a, g, "after b left");
	quiet(*b);
}

// --- typing and presence -------------------------------------------------

static void test_typing_across_nodes(void **)
{
	if (g_nodes.empty())
		skip(); // no PostgreSQL or Redis here (said once, above)
	auto a = user("ty-a", 0), b = user("ty-b", 1);
	std::string g = create_group(*a, {"ty-b"});
	expect_frame(*b, "conversation_created");
	join(*b, g);
	send_request(*a, "typing_start", conv_payload(g), "t1");
	next_frame(*a, "typing_start");
	Json j = next_frame(*b, "typing_update");
	assert_str_eq(jstr(j.get(), "payload.userId"), "ty-a");
	assert_true(jbool(j.get(), "payload.isTyping"));
	send_request(*a, "typing_stop", conv_payload(g), "t2");
	next_frame(*a, "typing_stop");
	j = next_frame(*b, "typing_update");
	assert_false(jbool(j.get(), "payload.isTyping"));
	quiet(*b);
}

// Presence is the cluster's: online with the first socket on any node,
// offline with the last one on any node; one push per transition.
static void test_presence_across_nodes(void **)
{
	if (g_nodes.empty())
		skip(); // no PostgreSQL or Redis here (said once, above)
	auto w = user("pr-w", 0);
	auto s1 = user("pr-s", 1);
	std::string g = create_group(*w, {"pr-s"});
	expect_frame(*s1, "conversation_created");
	// The subject is online on node 1: node 0's join sees it.
	Json j = join(*w, g);
	std::set<std::string> online;
	for (int i = 0; i < jsize(j.get(), "payload.onlineUsers"); i++)
		online.insert(jstr(j.get(), "payload.onlineUsers." + std::to_string(i)));
	assert_true((online == std::set<std::string>{"pr-w", "pr-s"}));

	auto s2 = user("pr-s", 2); // a second device, on a third node: nothing
	expect_quiet(*w);
	s1.reset(); // one of two closed: nothing
	expect_quiet(*w);
	s2.reset(); // the last: offline, once
	j = expect_frame(*w, "user_offline");
	assert_str_eq(jstr(j.get(), "payload.userId"), "pr-s");
	expect_quiet(*w);
	auto s3 = user("pr-s", 1);
	j = expect_frame(*w, "user_online");
	assert_str_eq(jstr(j.get(), "payload.userId"), "pr-s");
	expect_quiet(*w);
}

// --- history and recovery ----------------------------------------------------

// History pages read the same on every node; a client that reconnects to
// another node gets exactly what it missed with afterSeq.
static void test_history_and_recovery_on_another_node(void **)
{
	if (g_nodes.empty())
		skip(); // no PostgreSQL or Redis here (said once, above)
	auto a = user("hr-a", 0), b = user("hr-b", 1);
	std::string g = create_group(*a, {"hr-b"});
	expect_frame(*b, "conversation_created");
	join(*b, g);
	for (int i = 1; i <= 25; i++)
		send_text(*a, g, "m" + std::to_string(i));
	assert_true(received(*b, 25) == range(1, 25));
	for (int n = 0; n < 3; n++) {
		auto r = user("hr-b", n);
		Json p = load(*r, g, "\"limit\":10");
		assert_true(seqs(p.get()) == range(16, 25));
		assert_true(jbool(p.get(), "payload.hasMore"));
		std::string oldest = jstr(p.get(), "payload.messages.0.id");
		p = load(*r, g, "\"limit\":10,\"beforeMessageId\":" + jquote(oldest));
		assert_true(seqs(p.get()) == range(6, 15));
	}
	b.reset(); // b drops off node 1...
	for (int i = 26; i <= 32; i++)
		send_text(*a, g, "missed " + std::to_string(i));
	auto b3 = user("hr-b", 2); // ...and comes back on node 2
	join(*b3, g);
	Json p = load(*b3, g, "\"afterSeq\":25");
	assert_true(seqs(p.get()) == range(26, 32));
	assert_false(jbool(p.get(), "payload.hasMore"));
	send_text(*a, g, "live again");
	assert_true(received(*b3, 1) == std::vector<int>{33});
}

// --- failures ------------------------------------------------------------------

// Redis down: each node still delivers to its own sockets; cross-node
// delivery resumes when Redis is back, and afterSeq recovers the gap.
static void test_redis_down_and_back(void **)
{
	if (g_nodes.empty())
		skip(); // no PostgreSQL or Redis here (said once, above)
	auto a = user("rd-a", 0), a2 = user("rd-a2", 0), b = user("rd-b", 1);
	std::string g = create_group(*a, {"rd-a2", "rd-b"});
	expect_frame(*a2, "conversation_created");
	expect_frame(*b, "conversation_created");
	join(*a2, g);
	join(*b, g);
	assert_int_equal(send_text(*a, g, "1"), 1);
	assert_true(received(*a2, 1) == std::vector<int>{1});
	assert_true(received(*b, 1) == std::vector<int>{1});

	assert_true(g_redis->stop());
	for (int i = 0; i < 3; i++)
		wait_cluster_connected(node(i), false);
	assert_int_equal(send_text(*a, g, "2"), 2); // stored and acknowledged
	assert_true(received(*a2, 1) == std::vector<int>{2}); // same node: delivered
	quiet(*b); // other node: not now
	assert_int_equal(http_request(node(1).port(), "GET", "/health").status, 200);

	assert_true(g_redis->start());
	for (int i = 0; i < 3; i++)
		wait_cluster_connected(node(i), true);
	// The nodes re-subscribed: live delivery across nodes again.
	assert_int_equal(send_text(*a, g, "3"), 3);
	assert_true(received(*a2, 1) == std::vector<int>{3});
	assert_true(received(*b, 1) == std::vector<int>{3});
	// And b recovers what it missed.
	Json p = load(*b, g, "\"afterSeq\":1");
	assert_true(seqs(p.get()) == range(2, 3));
}

// PostgreSQL down: writes are answered DATABASE_ERROR, nothing is pushed,
// /health says degraded; all recovers by itself when it is back.
static void test_postgres_down_and_back(void **)
{
	if (g_nodes.empty())
		skip(); // no PostgreSQL or Redis here (said once, above)
	auto a = user("pg-a", 0), b = user("pg-b", 1);
	std::string g = create_group(*a, {"pg-b"});
	expect_frame(*b, "conversation_created");
	join(*b, g);
	assert_int_equal(send_text(*a, g, "1"), 1);
	received(*b, 1);

	assert_true(g_pg->stop());
	send_request(*a, "send_message", conv_payload(g, "\"content\":\"lost\""), "s");
	expect_error(*a, "DATABASE_ERROR", 15000);
	quiet(*b);
	bool degraded = false;
	for (int i = 0; i < 500 && !degraded; i++) {
		if (i)
			poll(nullptr, 0, 20);
		degraded = http_request(node(0).port(), "GET", "/health").status == 503;
	}
	assert_true(degraded);

	assert_true(g_pg->start());
	bool ok = false;
	for (int i = 0; i < 500 && !ok; i++) {
		if (i)
			poll(nullptr, 0, 20);
		ok = http_request(node(0).port(), "GET", "/health").status == 200;
	}
	assert_true(ok);
	// The refused message took no seq.
	assert_int_equal(send_text(*a, g, "2"), 2);
	assert_true(received(*b, 1) == std::vector<int>{2});
	// Every node is back: a new user (a write at authentication) on each.
	for (int n = 0; n < 3; n++) {
		auto c = ws(node(n));
		send_request(*c, "auth", "{\"token\":" + jquote(token_for("pg-new-" + std::to_string(n), 3600)) + "}");
		WsEvent e = c->recv(5000);
		if (e.kind != WsEvent::Text || e.data.find("auth_success") == std::string::npos) {
			fprintf(stderr, "node %d log, warnings and errors:\n", n);
			std::string log = node(n).log();
			for (size_t at = 0, nl; at < log.size(); at = nl + 1) {
				nl = log.find('\n', at);
				if (nl == std::string::npos)
					nl = log.size();
				std::string line = log.substr(at, nl - at);
				if (line.find(" warn ") != std::string::npos || line.find(" error ") != std::string::npos ||
				    getenv("QC_DEBUG_CLUSTER"))
					fprintf(stderr, "  %s\n", line.c_str());
			}
			fail_msg("node %d: no login after PostgreSQL came back: %s", n, e.data.c_str());
		}
	}
}

// A node stopped with SIGTERM closes its sockets with 1001 and withdraws its
// users from the cluster as it goes: the others show them offline without
// waiting for its lease (no node counts it as expired).
static void test_node_stopped(void **)
{
	if (g_nodes.empty())
		skip(); // no PostgreSQL or Redis here (said once, above)
	auto w = user("ns-w", 1);
	auto u = user("ns-u", 2); // only on the node that stops
	std::string g = create_group(*w, {"ns-u"});
	next_frame(*u, "conversation_created");
	join(*u, g);
	int expired0 = static_cast<int>(jnum(http_json(http_request(node(0).port(), "GET", "/stats")).get(),
					     "cluster.nodesExpired"));
	int expired1 = static_cast<int>(jnum(http_json(http_request(node(1).port(), "GET", "/stats")).get(),
					     "cluster.nodesExpired"));
	assert_int_equal(node(2).stop(SIGTERM), 0);
	expect_close(*u, 1001);
	Json j = next_frame(*w, "user_offline");
	assert_str_eq(jstr(j.get(), "payload.userId"), "ns-u");
	assert_int_equal(static_cast<int>(jnum(http_json(http_request(node(0).port(), "GET", "/stats")).get(),
					       "cluster.nodesExpired")),
			 expired0);
	assert_int_equal(static_cast<int>(jnum(http_json(http_request(node(1).port(), "GET", "/stats")).get(),
					       "cluster.nodesExpired")),
			 expired1);
	g_nodes[2] = start_node("n2b");
	wait_cluster_connected(node(2), true);
}

// kill -9 of a node while its clients send: every acknowledged message is
// in the store, with contiguous seqs; its users go offline elsewhere once
// its presence lease runs out; its clients carry on on another node.
static void test_node_killed(void **)
{
	if (g_nodes.empty())
		skip(); // no PostgreSQL or Redis here (said once, above)
	auto w = user("kn-w", 1);
	auto v = user("kn-v", 0); // lives only on the node that dies
	std::string g = create_group(*w, {"kn-v"});
	expect_frame(*v, "conversation_created");
	join(*w, g);
	join(*v, g);
	// v sends without waiting; the node dies in the middle.
	for (int i = 0; i < 200; i++)
		send_request(*v, "send_message", conv_payload(g, "\"content\":\"k\""), "k" + std::to_string(i));
	int acked = 0, last = 0;
	for (;;) {
		WsEvent e = v->recv(200);
		if (e.kind != WsEvent::Text)
			break;
		Json j = parse_json(e.data);
		if (jstr(j.get(), "type") == "message_sent") {
			acked++;
			last = static_cast<int>(jnum(j.get(), "payload.message.seq"));
		}
		if (acked == 20)
			kill(node(0).pid(), SIGKILL);
	}
	assert_true(acked >= 20);
	assert_int_equal(node(0).wait_exit(5000), 128 + SIGKILL);
	// v, who had no other socket, goes offline for w once the dead node's
	// lease (2 s) has run out; w reads the pushes of v's messages first.
	bool offline = false;
	std::vector<int> pushed;
	while (!offline) {
		WsEvent e = w->recv(10000);
		if (e.kind != WsEvent::Text)
			fail_msg("no user_offline for the killed node's user within 10 s of silence");
		Json j = parse_json(e.data);
		std::string type = jstr(j.get(), "type");
		if (type == "message_received")
			pushed.push_back(static_cast<int>(jnum(j.get(), "payload.message.seq")));
		offline = type == "user_offline" && jstr(j.get(), "payload.userId") == "kn-v";
	}
	// Everything acknowledged is stored, with seqs 1..n and nothing more
	// than was sent.
	auto v2 = user("kn-v", 2);
	Json p = load(*v2, g, "\"limit\":200");
	std::vector<int> s = seqs(p.get());
	assert_true(s == range(1, static_cast<int>(s.size())));
	assert_true(static_cast<int>(s.size()) >= last);
	assert_true(s.size() <= 200);
	// The pushes that reached w came in order without a gap; those the
	// kill cut off before they reached Redis, w recovers with afterSeq.
	assert_true(pushed == range(1, static_cast<int>(pushed.size())));
	int seen = static_cast<int>(pushed.size());
	p = load(*w, g, "\"afterSeq\":" + std::to_string(seen));
	assert_true(seqs(p.get()) == range(seen + 1, static_cast<int>(s.size())));
	// A new node takes the dead one's place.
	g_nodes[0] = start_node("n0b");
	auto v3 = user("kn-v", 0);
	join(*v3, g);
	int seq = send_text(*w, g, "welcome back");
	assert_true(received(*v3, 1) == std::vector<int>{seq});
}

static int setup(void **)
{
	std::string why;
	g_pg = start_postgres(&why);
	if (!g_pg) {
		skip_without_engine("cluster tests", why);
		return 0;
	}
	g_redis = start_redis(&why);
	if (!g_redis) {
		skip_without_engine("cluster tests", why);
		return 0;
	}
	for (const char *n : {"n0", "n1", "n2"})
		g_nodes.push_back(start_node(n));
	for (auto &n : g_nodes)
		wait_cluster_connected(*n, true);
	return 0;
}

static int teardown(void **)
{
	g_nodes.clear();
	g_redis.reset();
	g_pg.reset();
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_messages_reach_every_node_once),
		cmocka_unit_test(test_subscriptions_follow_joins),
		cmocka_unit_test(test_typing_across_nodes),
		cmocka_unit_test(test_presence_across_nodes),
		cmocka_unit_test(test_history_and_recovery_on_another_node),
		cmocka_unit_test(test_redis_down_and_back),
		cmocka_unit_test(test_postgres_down_and_back),
		cmocka_unit_test(test_node_stopped),
		cmocka_unit_test(test_node_killed),
	};
	return cmocka_run_group_tests_name("cluster", tests, setup, teardown);
}
