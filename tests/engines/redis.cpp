// engines: the private Redis server (engines.hpp).
//
// redis-server runs as a child of the test, in a fresh temporary directory,
// listening only on <dir>/redis.sock (--port 0: no TCP), with no
// persistence.  Readiness is a successful connect + PING on that socket,
// tried at short intervals up to a deadline.  The child gets
// PR_SET_PDEATHSIG(SIGKILL) so that a test that dies leaves no server
// behind, and an atexit handler stops the servers (and removes the
// directories) of tests that a failed assertion cut short: cmocka leaves
// a failing test by longjmp, past every destructor.
#include "engines.hpp"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <vector>

namespace qc::test {

namespace {

// How long redis-server may take to answer PING after it is started, and
// how often readiness is tried meanwhile.
constexpr int64_t kReadyTimeoutMs = 10000;
constexpr long kReadyPollMs = 10;

int64_t mono_ms()
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

// Servers alive now, stopped at exit if a test skipped their destructor.
std::vector<RedisServer *> &live()
{
	static std::vector<RedisServer *> v;
	return v;
}

void stop_all_at_exit()
{
	// The destructor unregisters itself; work on a copy.
	auto servers = live();
	for (RedisServer *s : servers)
		s->~RedisServer();
}

std::string find_redis_server()
{
	const char *path = getenv("PATH");
	std::string p = path ? path : "";
	size_t start = 0;
	while (start <= p.size()) {
		size_t end = p.find(':', start);
		if (end == std::string::npos)
			end = p.size();
		std::string dir = p.substr(start, end - start);
		if (!dir.empty()) {
			std::string cand = dir + "/redis-server";
			if (access(cand.c_str(), X_OK) == 0)
				return cand;
		}
		start = end + 1;
	}
	if (access("/usr/bin/redis-server", X_OK) == 0)
		return "/usr/bin/redis-server";
	return "";
}

// One readiness probe: connect to the socket, send PING, expect +PONG
// within a short time.
bool ping(const std::string &sock)
{
	struct sockaddr_un sa;
	memset(&sa, 0, sizeof sa);
	sa.sun_family = AF_UNIX;
	if (sock.size() >= sizeof sa.sun_path)
		return false;
	memcpy(sa.sun_path, sock.c_str(), sock.size() + 1);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return false;
	bool ok = false;
	char buf[16];
	if (connect(fd, reinterpret_cast<struct sockaddr *>(&sa), sizeof sa) == 0 &&
	    write(fd, "PING\r\n", 6) == 6) {
		struct pollfd pfd = {fd, POLLIN, 0};
		if (poll(&pfd, 1, 1000) == 1) {
			ssize_t n = read(fd, buf, sizeof buf);
			ok = n >= 5 && memcmp(buf, "+PONG", 5) == 0;
		}
	}
	close(fd);
	return ok;
}

} // namespace

bool RedisServer::start()
{
	if (running())
		return true;
	std::string exe = find_redis_server();
	if (exe.empty())
		return false;
	std::string sock = dir + "/redis.sock";
	std::string log = dir + "/redis.log";
	// argv prepared before the fork: the child only execs.
	std::vector<std::string> args = {exe,
					 "--port",
					 "0",
					 "--unixsocket",
					 sock,
					 "--unixsocketperm",
					 "700",
					 "--save",
					 "",
					 "--appendonly",
					 "no",
					 "--dir",
					 dir,
					 "--logfile",
					 log,
					 "--daemonize",
					 "no"};
	std::vector<char *> argv;
	for (auto &a : args)
		argv.push_back(&a[0]);
	argv.push_back(nullptr);
	pid_t parent = getpid();
	pid_t p = fork();
	if (p < 0)
		return false;
	if (p == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127);
		setpgid(0, 0); // terminal signals to the test do not reach it
		int devnull = open("/dev/null", O_RDWR);
		if (devnull >= 0) {
			dup2(devnull, 0);
			dup2(devnull, 1);
			dup2(devnull, 2);
		}
		execv(argv[0], argv.data());
		_exit(127);
	}
	pid = p;
	int64_t deadline = mono_ms() + kReadyTimeoutMs;
	while (mono_ms() < deadline) {
		if (ping(sock))
			return true;
		int st;
		if (waitpid(pid, &st, WNOHANG) == pid) {
			pid = -1; // exited before it was ready (its log says why)
			return false;
		}
		struct timespec ts = {0, kReadyPollMs * 1000000L};
		nanosleep(&ts, nullptr);
	}
	stop();
	return false;
}

bool RedisServer::stop()
{
	if (!running())
		return true;
	kill(pid, SIGTERM);
	int st = 0;
	pid_t r;
	do
		r = waitpid(pid, &st, 0);
	while (r < 0 && errno == EINTR);
	pid = -1;
	return r > 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

RedisServer::~RedisServer()
{
	stop();
	if (!dir.empty()) {
		std::error_code ec;
		std::filesystem::remove_all(dir, ec);
		dir.clear();
	}
	auto &v = live();
	v.erase(std::remove(v.begin(), v.end(), this), v.end());
}

std::unique_ptr<RedisServer> start_redis(std::string *why_not)
{
	if (find_redis_server().empty()) {
		if (why_not)
			*why_not = "redis-server not found (Debian package redis-server)";
		return nullptr;
	}
	char tmpl[] = "/tmp/qc-redis-XXXXXX";
	if (!mkdtemp(tmpl)) {
		if (why_not)
			*why_not = std::string("mkdtemp: ") + strerror(errno);
		return nullptr;
	}
	auto s = std::make_unique<RedisServer>();
	s->dir = tmpl;
	s->url = "unix:" + s->dir + "/redis.sock";
	static bool registered = false;
	if (!registered) {
		atexit(stop_all_at_exit);
		registered = true;
	}
	live().push_back(s.get());
	if (!s->start()) {
		if (why_not)
			*why_not = "redis-server did not answer PING on " + s->dir + "/redis.sock";
		return nullptr;
	}
	return s;
}

} // namespace qc::test
