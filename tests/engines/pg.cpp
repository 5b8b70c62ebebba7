// engines: a private PostgreSQL server (see engines.hpp).
//
// initdb and postgres run as the `postgres` user when the tests run as
// root (PostgreSQL refuses to run as root): the child process drops its
// groups and ids before exec, so no `su` is involved.  The server listens
// only on its Unix socket in the temporary directory; its log is
// <dir>/postgres.log.
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <libpq-fe.h>
#include <pwd.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "engines.hpp"

namespace qc::test {

namespace {

// Monotonic milliseconds (this file is also linked without libqryptchat).
int64_t now_ms()
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

} // namespace

namespace {

// How long the server may take to accept connections after it starts.
constexpr int64_t kReadyTimeoutMs = 60000;

// The bin directory of the highest installed PostgreSQL version, or "".
std::string find_bindir()
{
	DIR *d = opendir("/usr/lib/postgresql");
	if (!d)
		return "";
	int best = -1;
	while (struct dirent *e = readdir(d)) {
		char *end = nullptr;
		long v = strtol(e->d_name, &end, 10);
		if (end == e->d_name || *end)
			continue;
		std::string bin = std::string("/usr/lib/postgresql/") + e->d_name + "/bin";
		if (access((bin + "/postgres").c_str(), X_OK) == 0 &&
		    access((bin + "/initdb").c_str(), X_OK) == 0 && v > best)
			best = static_cast<int>(v);
	}
	closedir(d);
	return best < 0 ? "" : "/usr/lib/postgresql/" + std::to_string(best) + "/bin";
}

// Who runs the server: `postgres` when we are root, else ourselves.
struct RunAs {
	bool drop = false;
	uid_t uid = 0;
	gid_t gid = 0;
	std::string name;
};

bool run_as(RunAs &as, std::string *why_not)
{
	if (geteuid() != 0) {
		struct passwd *pw = getpwuid(geteuid());
		if (!pw) {
			*why_not = "the current user has no name";
			return false;
		}
		as.name = pw->pw_name;
		return true;
	}
	struct passwd *pw = getpwnam("postgres");
	if (!pw) {
		*why_not = "running as root and there is no postgres user";
		return false;
	}
	as.drop = true;
	as.uid = pw->pw_uid;
	as.gid = pw->pw_gid;
	as.name = "postgres";
	return true;
}

// Forks and execs argv as `as`, with stdout and stderr appended to `log`.
pid_t spawn(const RunAs &as, const std::vector<std::string> &argv, const std::string &log)
{
	std::vector<char *> args;
	for (const auto &a : argv)
		args.push_back(const_cast<char *>(a.c_str()));
	args.push_back(nullptr);
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid != 0)
		return pid;
	// The child: only async-signal-safe calls until exec.
	int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (fd >= 0) {
		dup2(fd, 1);
		dup2(fd, 2);
	}
	int null = open("/dev/null", O_RDONLY);
	if (null >= 0)
		dup2(null, 0);
	setsid(); // a terminal's ^C reaches the tests, which stop the server themselves
	if (as.drop && (setgroups(0, nullptr) != 0 || setgid(as.gid) != 0 || setuid(as.uid) != 0))
		_exit(126);
	// A test that crashes takes its server with it (fast shutdown).  Set
	// after setuid(), which clears it; a parent already gone is seen by
	// getppid() no longer being it.  (The signal comes when the thread
	// that forked ends: servers are started from the test's main thread.)
	if (prctl(PR_SET_PDEATHSIG, SIGINT) != 0 || getppid() != parent)
		_exit(125);
	execv(args[0], args.data());
	_exit(127);
}

int wait_exit(pid_t pid)
{
	int status = 0;
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR)
			return -1;
	}
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int remove_entry(const char *path, const struct stat *, int, struct FTW *)
{
	remove(path);
	return 0;
}

void sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	nanosleep(&ts, nullptr);
}

// Found by start_postgres(), used again by PgServer::start() (whose
// struct, shared with the Redis half in engines.hpp, has no room for them).
std::string g_bindir;
RunAs g_as;

} // namespace

// Starts postgres on the data directory and waits until it accepts
// connections (or has exited).
bool PgServer::start()
{
	if (running())
		return true;
	pid = spawn(g_as,
		    {g_bindir + "/postgres", "-D", dir + "/data", "-c", "listen_addresses=",
		     "-c", "unix_socket_directories=" + dir, "-c", "fsync=off", "-c",
		     "max_connections=100", "-c", "shared_buffers=16MB"},
		    dir + "/postgres.log");
	if (pid < 0) {
		pid = -1;
		return false;
	}
	std::string ping = "host=" + dir + " dbname=postgres user=" + g_as.name;
	int64_t deadline = now_ms() + kReadyTimeoutMs;
	while (now_ms() < deadline) {
		if (PQping(ping.c_str()) == PQPING_OK)
			return true;
		int status;
		if (waitpid(pid, &status, WNOHANG) == pid) {
			pid = -1;
			return false;
		}
		sleep_ms(20); // polling interval, not a synchronisation
	}
	stop();
	return false;
}

bool PgServer::stop()
{
	if (!running())
		return true;
	kill(pid, SIGINT); // fast shutdown: clients are disconnected, nothing is lost
	int rc = wait_exit(pid);
	pid = -1;
	return rc == 0;
}

PgServer::~PgServer()
{
	stop();
	if (!dir.empty())
		nftw(dir.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

std::unique_ptr<PgServer> start_postgres(std::string *why_not)
{
	std::string scratch;
	if (!why_not)
		why_not = &scratch;
	g_bindir = find_bindir();
	if (g_bindir.empty()) {
		*why_not = "PostgreSQL is not installed (no /usr/lib/postgresql/<version>/bin/postgres; "
			   "apt-get install postgresql)";
		return nullptr;
	}
	if (!run_as(g_as, why_not))
		return nullptr;
	char tmpl[] = "/tmp/qc-pg-XXXXXX";
	if (!mkdtemp(tmpl)) {
		*why_not = std::string("mkdtemp: ") + strerror(errno);
		return nullptr;
	}
	auto s = std::make_unique<PgServer>();
	s->dir = tmpl;
	if (g_as.drop && chown(tmpl, g_as.uid, g_as.gid) != 0) {
		*why_not = std::string("chown ") + tmpl + ": " + strerror(errno);
		return nullptr;
	}
	pid_t init = spawn(g_as,
			   {g_bindir + "/initdb", "-D", s->dir + "/data", "-U", g_as.name,
			    "--auth=trust", "--no-locale", "-E", "UTF8", "--no-sync"},
			   s->dir + "/initdb.log");
	if (init < 0 || wait_exit(init) != 0) {
		*why_not = "initdb failed (see " + s->dir + "/initdb.log)";
		s->dir.clear(); // kept for the log
		return nullptr;
	}
	if (!s->start()) {
		*why_not = "postgres did not start (see " + s->dir + "/postgres.log)";
		s->dir.clear();
		return nullptr;
	}
	// The database the tests use (CREATE DATABASE cannot be a parameter,
	// and the name is ours).
	std::string admin = "host=" + s->dir + " dbname=postgres user=" + g_as.name;
	PGconn *c = PQconnectdb(admin.c_str());
	PGresult *r = PQstatus(c) == CONNECTION_OK ? PQexec(c, "CREATE DATABASE qryptchat") : nullptr;
	bool created = r && PQresultStatus(r) == PGRES_COMMAND_OK;
	if (!created)
		*why_not = std::string("CREATE DATABASE qryptchat: ") + PQerrorMessage(c);
	PQclear(r);
	PQfinish(c);
	if (!created)
		return nullptr;
	s->dsn = "host=" + s->dir + " dbname=qryptchat user=" + g_as.name;
	return s;
}

} // namespace qc::test
