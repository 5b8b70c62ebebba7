// The daemon's life: ready file, listening only where told, liveness
// (pings and idle timeout), SIGTERM/SIGINT under load and idle, SIGHUP,
// and dropping root for the `user` directive.
#include <arpa/inet.h>
#include <ifaddrs.h>
#include <grp.h>
#include <net/if.h>
#include <netinet/in.h>
#include <pwd.h>
#include <sys/stat.h>
#include <sys/time.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include <thread>
#include <atomic>

#include "common.hpp"

using namespace qc::test;

namespace {

long now_ms_mono()
{
	timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

// Every address of this machine except the one the server listens on.
std::vector<std::string> other_addresses()
{
	std::vector<std::string> out = {"127.0.0.2", "::1"};
	ifaddrs *ifa = nullptr;
	if (getifaddrs(&ifa) != 0)
		return out;
	for (ifaddrs *i = ifa; i; i = i->ifa_next) {
		if (!i->ifa_addr || !(i->ifa_flags & IFF_UP))
			continue;
		char buf[INET6_ADDRSTRLEN];
		if (i->ifa_addr->sa_family == AF_INET) {
			inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in *>(i->ifa_addr)->sin_addr, buf, sizeof buf);
		} else if (i->ifa_addr->sa_family == AF_INET6) {
			auto *in6 = reinterpret_cast<sockaddr_in6 *>(i->ifa_addr);
			if (IN6_IS_ADDR_LINKLOCAL(&in6->sin6_addr))
				continue; // needs a scope id
			inet_ntop(AF_INET6, &in6->sin6_addr, buf, sizeof buf);
		} else {
			continue;
		}
		if (std::string(buf) != "127.0.0.1")
			out.push_back(buf);
	}
	freeifaddrs(ifa);
	return out;
}

} // namespace

static void test_ready_file(void **)
{
	auto s = start_server();
	std::string text = read_file(s->dir() + "/ready");
	assert_str_eq(text, std::to_string(s->port()) + "\n");
	assert_true(s->port() > 0);
	assert_int_equal(http_request(s->port(), "GET", "/health").status, 200);
}

// lws 4.1.6 alone would listen on every interface; the server must not.
static void test_listens_only_where_told(void **)
{
	auto s = start_server(); // listen 127.0.0.1:0
	assert_int_equal(http_request_to("127.0.0.1", s->port(), "GET", "/health").status, 200);
	for (const auto &addr : other_addresses()) {
		HttpResponse r = http_request_to(addr, s->port(), "GET", "/health");
		if (r.status != -1)
			fail_msg("a server on 127.0.0.1 answered on %s (status %d)", addr.c_str(), r.status);
	}
	// and on IPv6 loopback only when told so
	ServerOptions o;
	o.config = {{"listen", "[::1]:0"}};
	auto v6 = ServerProcess::start(o);
	assert_int_equal(http_request_to("::1", v6->port(), "GET", "/health").status, 200);
	assert_int_equal(http_request_to("127.0.0.1", v6->port(), "GET", "/health").status, -1);
}

static void test_sigterm_idle(void **)
{
	auto s = start_server();
	auto c = connect_as(s->port(), "idle-user");
	long t0 = now_ms_mono();
	s->signal(SIGTERM);
	expect_close(*c, 1001, 2000);
	int st = s->wait_exit(2000);
	long took = now_ms_mono() - t0;
	assert_int_equal(st, 0);
	if (took > 1000)
		fail_msg("SIGTERM took %ld ms", took);
	assert_true(s->wait_log("shutdown", 100));
}

static void test_sigint(void **)
{
	auto s = start_server();
	auto c = ws(*s);
	s->signal(SIGINT);
	expect_close(*c, 1001, 2000);
	assert_int_equal(s->wait_exit(2000), 0);
}

// Under load: clients keep sending while the server is told to stop; it
// closes them all with 1001 and exits 0 within a second.
static void test_sigterm_under_load(void **)
{
	auto s = start_server({{"rate_limit", "100000"}, {"rate_burst", "100000"}});
	const int n = 8;
	std::vector<std::unique_ptr<WsClient>> clients;
	for (int i = 0; i < n; i++)
		clients.push_back(connect_as(s->port(), "loader-" + std::to_string(i)));
	std::atomic<bool> go{true};
	std::vector<std::thread> writers;
	for (int i = 0; i < n; i++) {
		WsClient *c = clients[i].get();
		writers.emplace_back([c, &go] {
			while (go.load())
				if (!c->send_text("{\"type\":\"load_conversations\"}"))
					break;
		});
	}
	// Let the load build up: wait until the server has answered some.
	for (int tries = 0; tries < 200; tries++) {
		Json st = parse_json(http_request(s->port(), "GET", "/stats").body);
		if (st && jnum(st.get(), "framesIn") > 2000)
			break;
	}
	long t0 = now_ms_mono();
	s->signal(SIGTERM);
	int st = s->wait_exit(3000);
	long took = now_ms_mono() - t0;
	go = false;
	for (auto &w : writers)
		w.join();
	assert_int_equal(st, 0);
	if (took > 1000)
		fail_msg("SIGTERM under load took %ld ms", took);
	// Every client saw its connection end (a close frame 1001, or EOF once
	// the grace period cut a client that was still writing).
	for (auto &c : clients) {
		for (;;) {
			WsEvent e = c->recv(2000);
			if (e.kind == WsEvent::Close) {
				assert_int_equal(e.close_code, 1001);
				break;
			}
			if (e.kind == WsEvent::Eof || e.kind == WsEvent::Error)
				break;
			if (e.kind == WsEvent::Timeout)
				fail_msg("a client's connection outlived the server");
		}
	}
}

static void test_pings_and_idle_timeout(void **)
{
	auto s = start_server({{"ping_interval", "1s"}, {"idle_timeout", "2s"}});
	auto silent = ws(*s);
	silent->set_auto_pong(false);
	auto lively = ws(*s); // answers pings (while it reads)
	auto chatty = ws(*s); // never answers pings, but sends requests
	chatty->set_auto_pong(false);
	long t0 = now_ms_mono();
	bool silent_closed = false;
	// Read all three for 4 s: the silent one must be dropped after the
	// idle timeout, the other two must stay.
	while (now_ms_mono() - t0 < 4000) {
		if (!silent_closed) {
			WsEvent e = silent->recv(100);
			if (e.kind == WsEvent::Close || e.kind == WsEvent::Eof) {
				silent_closed = true;
				long took = now_ms_mono() - t0;
				if (took < 1500 || took > 3500)
					fail_msg("idle connection closed after %ld ms (idle_timeout 2s)", took);
			}
		}
		WsEvent l = lively->recv(100);
		assert_int_equal(l.kind, WsEvent::Timeout);
		expect_quiet(*chatty); // application traffic counts as life
	}
	assert_true(silent_closed);
	assert_true(lively->pings_received() >= 1);
	expect_quiet(*lively);
	expect_quiet(*chatty);
}

static void test_sighup_reload(void **)
{
	auto s = start_server({{"max_message_bytes", "1K"}});
	auto c = ws(*s);
	std::string big = "{\"type\":\"ping\",\"requestId\":\"" + std::string(1500, 'x') + "\"}";
	// rewrite the config: a larger limit (reloadable), another listen (not)
	std::string conf = read_file(s->config_path());
	conf += "max_message_bytes 4K\nlisten 127.0.0.1:1\n";
	write_file(s->config_path(), conf);
	s->signal(SIGHUP);
	assert_true(s->wait_log("reloaded", 5000));
	assert_true(s->wait_log("reload directive=max_message_bytes old=\"1K\" new=\"4K\"", 100));
	assert_true(s->wait_log("reload_ignored directive=listen", 100));
	assert_true(c->send_text(big));
	expect_frame(*c, "pong");
	// still on the same port
	assert_int_equal(http_request(s->port(), "GET", "/health").status, 200);
	// a broken config is refused as a whole; the running one stays
	write_file(s->config_path(), conf + "max_message_bytes lots\n");
	s->signal(SIGHUP);
	assert_true(s->wait_log("reload_failed", 5000));
	assert_true(c->send_text(big));
	expect_frame(*c, "pong");
}

// The value of a "Name:" line of /proc/PID/status, tabs as spaces.
static std::string proc_status(pid_t pid, const std::string &name)
{
	std::ifstream f("/proc/" + std::to_string(pid) + "/status");
	std::string line;
	while (std::getline(f, line))
		if (line.rfind(name + ":", 0) == 0) {
			std::string v = line.substr(name.size() + 1);
			std::replace(v.begin(), v.end(), '\t', ' ');
			v.erase(0, v.find_first_not_of(' '));
			v.erase(v.find_last_not_of(' ') + 1);
			return v;
		}
	return "";
}

// Started as root with `user nobody`: serves as nobody, with nobody's
// groups and no way back, on a database that now belongs to nobody.
static void test_drops_privileges(void **)
{
	if (geteuid() != 0)
		skip(); // only root can switch users
	const passwd *pw = getpwnam("nobody");
	assert_non_null(pw);
	uid_t uid = pw->pw_uid;
	gid_t gid = pw->pw_gid;
	gid_t groups[64];
	int ngroups = 64;
	assert_true(getgrouplist("nobody", gid, groups, &ngroups) >= 0);
	std::vector<gid_t> want_groups(groups, groups + ngroups);
	std::sort(want_groups.begin(), want_groups.end());

	// The directory (for the ready file, written once serving) is nobody's;
	// the secret stays root's and is read before the switch.
	std::string dir = make_temp_dir();
	write_file(dir + "/secret", kTestSecret);
	assert_int_equal(chmod((dir + "/secret").c_str(), 0600), 0);
	assert_int_equal(chown(dir.c_str(), uid, gid), 0);
	ServerOptions o;
	o.dir = dir;
	o.config = {{"user", "nobody"}};
	// After setuid the process may not be traced, which LeakSanitizer
	// needs at exit; the other tests check for leaks.
	std::string asan = getenv("ASAN_OPTIONS") ? getenv("ASAN_OPTIONS") : "";
	o.env = {{"ASAN_OPTIONS", asan + (asan.empty() ? "" : ":") + "detect_leaks=0"}};
	auto s = ServerProcess::start(o);
	assert_true(s->wait_log("privileges_dropped user=\"nobody\""));

	std::string u = std::to_string(uid), g = std::to_string(gid);
	assert_str_eq(proc_status(s->pid(), "Uid"), u + " " + u + " " + u + " " + u);
	assert_str_eq(proc_status(s->pid(), "Gid"), g + " " + g + " " + g + " " + g);
	std::vector<gid_t> have_groups;
	std::istringstream gs(proc_status(s->pid(), "Groups"));
	for (gid_t x; gs >> x;)
		have_groups.push_back(x);
	std::sort(have_groups.begin(), have_groups.end());
	assert_true(have_groups == want_groups);

	// It still writes to the database opened as root.
	auto bob = connect_as(s->port(), "bob");
	auto alice = connect_as(s->port(), "alice");
	send_request(*alice, "create_conversation", R"({"participantIds":["bob"]})", "cc");
	std::string conv = jstr(expect_frame(*alice, "conversation_created").get(), "payload.conversation.id");
	send_request(*alice, "send_message", "{\"conversationId\":" + jquote(conv) + ",\"content\":\"hi\"}", "s");
	expect_frame(*alice, "message_sent");
	struct stat st;
	assert_int_equal(stat(s->db_path().c_str(), &st), 0);
	assert_int_equal(st.st_uid, uid);
	assert_true(s->log().find("running_as_root") == std::string::npos);
	assert_int_equal(s->stop(), 0);
	s.reset();
	remove_tree(dir);
}

// Started as root without `user`: one warning, and it serves.
static void test_root_without_user_warns(void **)
{
	if (geteuid() != 0)
		skip();
	auto s = start_server();
	std::string log = s->log();
	size_t first = log.find("running_as_root");
	assert_true(first != std::string::npos);
	assert_true(log.find("running_as_root", first + 1) == std::string::npos);
	assert_int_equal(http_request(s->port(), "GET", "/health").status, 200);
}

// An unknown user is a configuration error, found before anything starts.
static void test_unknown_user(void **)
{
	std::string dir = make_temp_dir();
	RunResult r = run_binary({"-D", "listen=127.0.0.1:0", "-D", "database=" + dir + "/chat.db", "-D",
				  "user=qc-no-such-user"},
				 {{"QRYPTCHAT_JWT_SECRET", kTestSecret}});
	assert_int_equal(r.status, 2);
	assert_true(r.err.find("user qc-no-such-user: no such user") != std::string::npos);
	assert_int_equal(access((dir + "/chat.db").c_str(), F_OK), -1); // nothing was created
	remove_tree(dir);
}

// Waits (5 s at most) until the file contains `needle`.
static bool file_has(const std::string &path, const std::string &needle)
{
	for (int i = 0; i < 500; i++) {
		if (read_file(path).find(needle) != std::string::npos)
			return true;
		poll(nullptr, 0, 10);
	}
	return false;
}

// log_file, reopened on SIGUSR1 after a rotation; log_format json.
static void test_log_file_and_json(void **)
{
	std::string dir = make_temp_dir();
	std::string log = dir + "/qryptchatd.log";
	auto s = start_server({{"log_file", log}, {"log_format", "json"}});
	assert_true(file_has(log, "\"event\":\"listening\""));
	assert_true(s->log().find("listening") == std::string::npos); // not on stderr
	auto c = connect_as(s->port(), "alice");
	assert_true(file_has(log, "\"event\":\"auth\""));
	// Every line is one JSON object with ts, level and event.
	std::istringstream lines(read_file(log));
	int n = 0;
	for (std::string line; std::getline(lines, line); n++) {
		Json j = parse_json(line);
		if (!j)
			fail_msg("not JSON: %s", line.c_str());
		assert_true(jstr(j.get(), "ts").size() == 24);
		assert_false(jstr(j.get(), "level").empty());
		assert_non_null(jget(j.get(), "event"));
	}
	assert_true(n >= 2);
	Json listening = nullptr;
	std::istringstream again(read_file(log));
	for (std::string line; std::getline(again, line);)
		if (line.find("\"listening\"") != std::string::npos)
			listening = parse_json(line);
	assert_int_equal(jnum(listening.get(), "port"), s->port());

	// logrotate: move the file, then SIGUSR1; new lines go to a new file.
	assert_int_equal(rename(log.c_str(), (log + ".1").c_str()), 0);
	s->signal(SIGUSR1);
	assert_true(file_has(log, "\"event\":\"log_reopened\""));
	c.reset();
	assert_true(file_has(log, "\"event\":\"ws_close\""));
	assert_true(read_file(log + ".1").find("log_reopened") == std::string::npos);
	assert_int_equal(s->stop(), 0);
	s.reset();
	remove_tree(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ready_file),
		cmocka_unit_test(test_listens_only_where_told),
		cmocka_unit_test(test_sigterm_idle),
		cmocka_unit_test(test_sigint),
		cmocka_unit_test(test_sigterm_under_load),
		cmocka_unit_test(test_pings_and_idle_timeout),
		cmocka_unit_test(test_sighup_reload),
		cmocka_unit_test(test_drops_privileges),
		cmocka_unit_test(test_root_without_user_warns),
		cmocka_unit_test(test_unknown_user),
		cmocka_unit_test(test_log_file_and_json),
	};
	return cmocka_run_group_tests_name("lifecycle", tests, nullptr, nullptr);
}
