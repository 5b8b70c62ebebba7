// Starting and stopping the server binary for integration tests.
//
// Children are created with fork/execve from argv/envp vectors prepared
// before the fork.  Each child gets PR_SET_PDEATHSIG(SIGKILL), so a test
// process that dies (or aborts a test by longjmp and then exits) never
// leaves a server behind; an atexit handler also kills and cleans up
// servers whose ServerProcess was skipped by a failing test's longjmp.
#include "spawn.hpp"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
extern "C" { // cmocka 1.1.5 has no C++ guards
#include <cmocka.h>
}

#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>

namespace qc::test {

const char *const kTestSecret = "qryptchatd-test-secret-0123456789abcdefghij";

namespace {

using Clock = std::chrono::steady_clock;
using Env = std::vector<std::pair<std::string, std::string>>;

// How much of the server's stderr a start failure quotes.
constexpr size_t kLogTail = 4000;

char g_failure[16384];

__attribute__((format(printf, 1, 2))) void set_failure(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	std::vsnprintf(g_failure, sizeof g_failure, fmt, ap);
	va_end(ap);
}

Clock::time_point deadline_in(int ms)
{
	return Clock::now() + std::chrono::milliseconds(ms < 0 ? 0 : ms);
}

int remaining_ms(Clock::time_point deadline)
{
	auto left = deadline - Clock::now();
	if (left <= Clock::duration::zero())
		return 0;
	long long ms = std::chrono::ceil<std::chrono::milliseconds>(left).count();
	return ms > INT_MAX ? INT_MAX : static_cast<int>(ms);
}

// Sleeps `ms` milliseconds between polls of a file or of waitpid().
void pause_ms(int ms)
{
	::poll(nullptr, 0, ms);
}

class UniqueFd {
public:
	UniqueFd() = default;
	explicit UniqueFd(int fd) : fd_(fd) {}
	~UniqueFd() { reset(); }
	UniqueFd(const UniqueFd &) = delete;
	UniqueFd &operator=(const UniqueFd &) = delete;

	int get() const { return fd_; }
	bool valid() const { return fd_ >= 0; }
	void reset(int fd = -1)
	{
		if (fd_ >= 0)
			::close(fd_);
		fd_ = fd;
	}

private:
	int fd_ = -1;
};

// 0..255 for an exit, 128+signal for a kill, -1 otherwise.
int decode_status(int st)
{
	if (WIFEXITED(st))
		return WEXITSTATUS(st);
	if (WIFSIGNALED(st))
		return 128 + WTERMSIG(st);
	return -1;
}

// Reaps `pid` without blocking.  True once it has exited; `status` is then
// its decoded status (-1 if it could not be reaped: not our child).
bool try_reap(pid_t pid, int &status)
{
	int st = 0;
	pid_t r = ::waitpid(pid, &st, WNOHANG);
	if (r == pid) {
		status = decode_status(st);
		return true;
	}
	if (r < 0 && errno != EINTR) {
		status = -1;
		return true;
	}
	return false;
}

// Blocks until `pid` is reaped.
void reap_blocking(pid_t pid)
{
	while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
	}
}

// Polls every 5 ms until `pid` exits (true, `status` set) or the deadline.
bool wait_pid_until(pid_t pid, Clock::time_point deadline, int &status)
{
	for (;;) {
		if (try_reap(pid, status))
			return true;
		if (Clock::now() >= deadline)
			return false;
		pause_ms(5);
	}
}

bool filtered_name(const std::string &name)
{
	return name.compare(0, 10, "QRYPTCHAT_") == 0 || name.compare(0, 14, "WEBSOCKET_PORT") == 0;
}

// The child's environment: ours minus QRYPTCHAT_* and WEBSOCKET_PORT*, minus
// the names in `extra`, plus `extra`.
std::vector<std::string> child_env(const Env &extra)
{
	std::vector<std::string> out;
	for (char **e = environ; e && *e; e++) {
		std::string kv(*e);
		std::string name = kv.substr(0, kv.find('='));
		if (filtered_name(name))
			continue;
		bool overridden = false;
		for (const auto &x : extra)
			overridden = overridden || x.first == name;
		if (!overridden)
			out.push_back(kv);
	}
	for (const auto &x : extra)
		out.push_back(x.first + "=" + x.second);
	return out;
}

// NULL-terminated pointer array over `v` (which must outlive it).
std::vector<char *> c_array(std::vector<std::string> &v)
{
	std::vector<char *> out;
	for (auto &s : v)
		out.push_back(&s[0]);
	out.push_back(nullptr);
	return out;
}

// In the forked child: wires fds 0/1/2, closes everything else, restores
// default signal handling and executes `path`.  Never returns.
[[noreturn]] void exec_child(const char *path, char *const argv[], char *const envp[], int in,
			     int out, int err, pid_t parent)
{
	::prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (::getppid() != parent)
		::_exit(127);
	const int fds[3] = {in, out, err};
	for (int target = 0; target < 3; target++) {
		if (fds[target] == target)
			::fcntl(target, F_SETFD, 0);
		else
			::dup2(fds[target], target);
	}
	::close_range(3, ~0U, 0);
	for (int sig = 1; sig < NSIG; sig++)
		if (sig != SIGKILL && sig != SIGSTOP)
			::signal(sig, SIG_DFL);
	sigset_t none;
	sigemptyset(&none);
	::sigprocmask(SIG_SETMASK, &none, nullptr);
	::execve(path, argv, envp);
	const char *why = std::strerror(errno);
	const char prefix[] = "qctest: cannot execute ";
	ssize_t ignored = ::write(2, prefix, sizeof prefix - 1);
	ignored = ::write(2, path, std::strlen(path));
	ignored = ::write(2, ": ", 2);
	ignored = ::write(2, why, std::strlen(why));
	ignored = ::write(2, "\n", 1);
	(void)ignored;
	::_exit(127);
}

// `name` if it contains a slash, else its first executable match in $PATH
// (resolved before the fork: the child only calls execve).  `name` itself
// when nothing matches, so that the child's error names it.
std::string find_program(const std::string &name)
{
	if (name.find('/') != std::string::npos)
		return name;
	const char *path = std::getenv("PATH");
	std::string dirs = path && *path ? path : "/usr/local/bin:/usr/bin:/bin";
	size_t start = 0;
	for (;;) {
		size_t colon = dirs.find(':', start);
		std::string dir = dirs.substr(start, colon == std::string::npos ? colon : colon - start);
		std::string candidate = (dir.empty() ? "." : dir) + "/" + name;
		if (::access(candidate.c_str(), X_OK) == 0)
			return candidate;
		if (colon == std::string::npos)
			return name;
		start = colon + 1;
	}
}

// The words of $QRYPTCHATD_WRAPPER, split at blanks: a program (and its
// options) that runs the server binary, e.g. "qemu-aarch64-static" for an
// arm64 build on another machine.  Empty when unset.
std::vector<std::string> wrapper_words()
{
	std::vector<std::string> words;
	const char *w = std::getenv("QRYPTCHATD_WRAPPER");
	std::string s = w ? w : "";
	size_t i = 0;
	while (i < s.size()) {
		size_t start = s.find_first_not_of(" \t", i);
		if (start == std::string::npos)
			break;
		size_t end = s.find_first_of(" \t", start);
		words.push_back(s.substr(start, end == std::string::npos ? end : end - start));
		i = end == std::string::npos ? s.size() : end;
	}
	return words;
}

// Forks and execs server_binary() with `args` (argv[0] is added), through
// the wrapper when $QRYPTCHATD_WRAPPER names one: the pid is then the
// wrapper's, which for qemu-user is the emulated server itself.
// Returns the pid, -1 if fork failed.
pid_t spawn(const std::vector<std::string> &args, const Env &env, int in, int out, int err)
{
	std::string path = server_binary();
	std::vector<std::string> argv_s = wrapper_words();
	if (!argv_s.empty())
		path = find_program(argv_s[0]);
	argv_s.push_back(server_binary());
	argv_s.insert(argv_s.end(), args.begin(), args.end());
	std::vector<std::string> env_s = child_env(env);
	std::vector<char *> argv = c_array(argv_s);
	std::vector<char *> envp = c_array(env_s);
	pid_t parent = ::getpid();
	pid_t pid = ::fork();
	if (pid == 0)
		exec_child(path.c_str(), argv.data(), envp.data(), in, out, err, parent);
	return pid;
}

// Servers alive or with a directory to remove, for the atexit cleanup.
struct Tracked {
	pid_t pid = -1; // -1 once reaped
	std::string dir;
	bool keep = false;
};

pid_t g_owner = -1; // the process whose children are tracked (not forks)

std::map<unsigned long, Tracked> &tracked()
{
	static auto *m = new std::map<unsigned long, Tracked>; // never destroyed
	return *m;
}

void cleanup_at_exit()
{
	if (::getpid() != g_owner)
		return;
	for (auto &entry : tracked()) {
		Tracked &t = entry.second;
		if (t.pid > 0) {
			::kill(t.pid, SIGKILL);
			reap_blocking(t.pid);
		}
		if (!t.keep && !t.dir.empty())
			remove_tree(t.dir);
	}
	tracked().clear();
}

unsigned long track(pid_t pid, const std::string &dir)
{
	static unsigned long next_id;
	if (g_owner != ::getpid()) {
		g_owner = ::getpid();
		tracked().clear();
		std::atexit(cleanup_at_exit);
	}
	unsigned long id = ++next_id;
	tracked()[id] = Tracked{pid, dir, false};
	return id;
}

int nftw_remove(const char *path, const struct stat *, int, struct FTW *)
{
	::remove(path);
	return 0;
}

// Writes `text` to `path` (created with `mode`, truncated); false on error.
bool write_file_mode(const std::string &path, const std::string &text, mode_t mode)
{
	UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode));
	if (!fd.valid() || ::fchmod(fd.get(), mode) != 0)
		return false;
	size_t done = 0;
	while (done < text.size()) {
		ssize_t n = ::write(fd.get(), text.data() + done, text.size() - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return false;
		done += static_cast<size_t>(n);
	}
	return true;
}

std::string tail(const std::string &text, size_t n)
{
	return text.size() <= n ? text : "..." + text.substr(text.size() - n);
}

} // namespace

std::string server_binary()
{
	const char *env = std::getenv("QRYPTCHATD");
	return env && *env ? env : "build/qryptchatd";
}

struct ServerProcess::Impl {
	pid_t pid = -1;
	bool running = false;
	int status = -1; // decoded exit status once reaped
	int port = 0;
	std::string dir;
	bool keep = false;
	unsigned long id = 0; // key in tracked()

	// Reaps without blocking; true once the child has exited.
	bool poll_exit();
	// Waits for the exit until the deadline; the status or -1.
	int wait_until(Clock::time_point deadline);
	// Everything of start() that can fail; false with g_failure set.
	bool launch(const ServerOptions &opts);
};

bool ServerProcess::Impl::poll_exit()
{
	if (!running)
		return true;
	if (!try_reap(pid, status))
		return false;
	running = false;
	tracked()[id].pid = -1;
	return true;
}

int ServerProcess::Impl::wait_until(Clock::time_point deadline)
{
	for (;;) {
		if (poll_exit())
			return status;
		if (Clock::now() >= deadline)
			return -1;
		pause_ms(5);
	}
}

bool ServerProcess::Impl::launch(const ServerOptions &opts)
{
	dir = opts.dir.empty() ? make_temp_dir() : opts.dir;
	keep = !opts.dir.empty(); // never delete a caller's directory on failure
	id = track(-1, dir);
	tracked()[id].keep = keep;
	if (opts.dir.empty() && !write_file_mode(dir + "/secret", kTestSecret, 0600)) {
		set_failure("cannot write %s/secret: %s", dir.c_str(), std::strerror(errno));
		return false;
	}
	std::string conf = "listen 127.0.0.1:0\n"
			   "database " + dir + "/chat.db\n"
			   "jwt_secret_file " + dir + "/secret\n"
			   "log_level debug\n"
			   "web_root\n"; // an installed web client must not change what tests see
	for (const auto &kv : opts.config)
		conf += kv.first + " " + kv.second + "\n";
	if (!write_file_mode(dir + "/qryptchatd.conf", conf, 0644)) {
		set_failure("cannot write %s/qryptchatd.conf: %s", dir.c_str(),
			    std::strerror(errno));
		return false;
	}
	const std::string ready = dir + "/ready";
	::unlink(ready.c_str());

	const int log_flags = O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC;
	UniqueFd in(::open("/dev/null", O_RDONLY | O_CLOEXEC));
	UniqueFd out(::open((dir + "/stdout.log").c_str(), log_flags, 0644));
	UniqueFd err(::open((dir + "/stderr.log").c_str(), log_flags, 0644));
	if (!in.valid() || !out.valid() || !err.valid()) {
		set_failure("cannot open the log files in %s: %s", dir.c_str(),
			    std::strerror(errno));
		return false;
	}
	std::vector<std::string> args = {"-c", dir + "/qryptchatd.conf", "--ready-file", ready};
	args.insert(args.end(), opts.extra_args.begin(), opts.extra_args.end());
	pid = spawn(args, opts.env, in.get(), out.get(), err.get());
	if (pid < 0) {
		set_failure("fork: %s", std::strerror(errno));
		return false;
	}
	running = true;
	tracked()[id].pid = pid;

	auto deadline = deadline_in(opts.ready_timeout_ms);
	for (;;) {
		std::string text = read_file(ready);
		size_t nl = text.find('\n');
		if (nl != std::string::npos) {
			char *end = nullptr;
			long p = std::strtol(text.c_str(), &end, 10);
			if (nl == 0 || end != text.c_str() + nl || p <= 0 || p > 65535) {
				set_failure("%s wrote a bad ready file %s: \"%s\"",
					    server_binary().c_str(), ready.c_str(), text.c_str());
				return false;
			}
			port = static_cast<int>(p);
			return true;
		}
		if (poll_exit()) {
			set_failure("%s exited with status %d before it was ready; stderr:\n%s",
				    server_binary().c_str(), status,
				    tail(read_file(dir + "/stderr.log"), kLogTail).c_str());
			return false;
		}
		if (Clock::now() >= deadline) {
			set_failure("%s not ready within %d ms; stderr:\n%s",
				    server_binary().c_str(), opts.ready_timeout_ms,
				    tail(read_file(dir + "/stderr.log"), kLogTail).c_str());
			return false;
		}
		pause_ms(10);
	}
}

std::unique_ptr<ServerProcess> ServerProcess::start(const ServerOptions &opts)
{
	std::unique_ptr<ServerProcess> sp(new ServerProcess());
	sp->impl_ = std::make_unique<Impl>();
	if (!sp->impl_->launch(opts)) {
		sp.reset(); // kills the child, removes a directory of our own
		fail_msg("%s", g_failure);
		return nullptr;
	}
	sp->impl_->keep = false;
	tracked()[sp->impl_->id].keep = false;
	return sp;
}

ServerProcess::~ServerProcess()
{
	if (!impl_)
		return;
	Impl &s = *impl_;
	if (s.running) {
		::kill(s.pid, SIGTERM);
		if (s.wait_until(deadline_in(5000)) < 0 && s.running) {
			::kill(s.pid, SIGKILL);
			reap_blocking(s.pid);
			s.running = false;
		}
	}
	if (!s.keep && !s.dir.empty())
		remove_tree(s.dir);
	if (s.id != 0)
		tracked().erase(s.id);
}

int ServerProcess::port() const
{
	return impl_->port;
}

pid_t ServerProcess::pid() const
{
	return impl_->pid;
}

const std::string &ServerProcess::dir() const
{
	return impl_->dir;
}

std::string ServerProcess::db_path() const
{
	return impl_->dir + "/chat.db";
}

std::string ServerProcess::config_path() const
{
	return impl_->dir + "/qryptchatd.conf";
}

int ServerProcess::stop(int sig, int timeout_ms)
{
	// Once the process has been reaped, returns its status again.
	if (impl_->running)
		::kill(impl_->pid, sig);
	return impl_->wait_until(deadline_in(timeout_ms));
}

void ServerProcess::signal(int sig)
{
	if (impl_->running)
		::kill(impl_->pid, sig);
}

int ServerProcess::wait_exit(int timeout_ms)
{
	return impl_->wait_until(deadline_in(timeout_ms));
}

std::string ServerProcess::log() const
{
	return read_file(impl_->dir + "/stderr.log");
}

bool ServerProcess::wait_log(const std::string &needle, int timeout_ms) const
{
	// Returns early (after a last look) once the server has exited.
	auto deadline = deadline_in(timeout_ms);
	for (;;) {
		bool exited = impl_->poll_exit();
		if (log().find(needle) != std::string::npos)
			return true;
		if (exited || Clock::now() >= deadline)
			return false;
		pause_ms(10);
	}
}

void ServerProcess::keep_dir(bool keep)
{
	impl_->keep = keep;
	tracked()[impl_->id].keep = keep;
}

RunResult run_binary(const std::vector<std::string> &args,
		     const std::vector<std::pair<std::string, std::string>> &env, int timeout_ms)
{
	RunResult res;
	int outp[2], errp[2];
	if (::pipe2(outp, O_CLOEXEC) != 0) {
		res.err = std::string("run_binary: pipe: ") + std::strerror(errno);
		return res;
	}
	UniqueFd out_r(outp[0]), out_w(outp[1]);
	if (::pipe2(errp, O_CLOEXEC) != 0) {
		res.err = std::string("run_binary: pipe: ") + std::strerror(errno);
		return res;
	}
	UniqueFd err_r(errp[0]), err_w(errp[1]);
	UniqueFd in(::open("/dev/null", O_RDONLY | O_CLOEXEC));
	pid_t pid = spawn(args, env, in.get(), out_w.get(), err_w.get());
	out_w.reset();
	err_w.reset();
	if (pid < 0) {
		res.err = std::string("run_binary: fork: ") + std::strerror(errno);
		return res;
	}
	::fcntl(out_r.get(), F_SETFL, O_NONBLOCK);
	::fcntl(err_r.get(), F_SETFL, O_NONBLOCK);

	auto deadline = deadline_in(timeout_ms);
	UniqueFd *fds[2] = {&out_r, &err_r};
	std::string *sinks[2] = {&res.out, &res.err};
	bool timed_out = false;
	while (!timed_out && (out_r.valid() || err_r.valid())) {
		struct pollfd p[2];
		int idx[2];
		nfds_t n = 0;
		for (int i = 0; i < 2; i++) {
			if (fds[i]->valid()) {
				p[n] = {fds[i]->get(), POLLIN, 0};
				idx[n++] = i;
			}
		}
		int r = ::poll(p, n, remaining_ms(deadline));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			timed_out = true;
			break;
		}
		for (nfds_t k = 0; k < n; k++) {
			if (!p[k].revents)
				continue;
			char buf[65536];
			ssize_t got = ::read(p[k].fd, buf, sizeof buf);
			if (got > 0)
				sinks[idx[k]]->append(buf, static_cast<size_t>(got));
			else if (got == 0 || (errno != EINTR && errno != EAGAIN))
				fds[idx[k]]->reset();
		}
	}
	int status = -1;
	if (timed_out || !wait_pid_until(pid, deadline, status)) {
		::kill(pid, SIGKILL);
		reap_blocking(pid);
		status = -1;
	}
	res.status = status;
	return res;
}

std::string make_temp_dir()
{
	const char *base = std::getenv("TMPDIR");
	std::string tmpl = std::string(base && *base ? base : "/tmp") + "/qctest.XXXXXX";
	if (!::mkdtemp(&tmpl[0])) {
		set_failure("mkdtemp(%s): %s", tmpl.c_str(), std::strerror(errno));
		fail_msg("%s", g_failure);
		return "";
	}
	return tmpl;
}

void remove_tree(const std::string &dir)
{
	// Depth first, without following symbolic links or leaving the file
	// system; errors are ignored.
	if (dir.empty() || dir == "/")
		return;
	::nftw(dir.c_str(), nftw_remove, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
}

void write_file(const std::string &path, const std::string &text)
{
	// Creates (mode 0644) or truncates; fails the test on error.
	if (!write_file_mode(path, text, 0644)) {
		set_failure("cannot write %s: %s", path.c_str(), std::strerror(errno));
		fail_msg("%s", g_failure);
	}
}

std::string read_file(const std::string &path)
{
	// The whole file; "" when it cannot be opened.
	std::string out;
	UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
	if (!fd.valid())
		return out;
	char buf[65536];
	for (;;) {
		ssize_t n = ::read(fd.get(), buf, sizeof buf);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		out.append(buf, static_cast<size_t>(n));
	}
	return out;
}

long process_rss_kb(pid_t pid)
{
	// -1 when the process does not exist or has no VmRSS (a zombie).
	std::string status = read_file("/proc/" + std::to_string(pid) + "/status");
	size_t pos = status.find("\nVmRSS:");
	if (pos == std::string::npos)
		return -1;
	return std::strtol(status.c_str() + pos + 7, nullptr, 10);
}

int process_fd_count(pid_t pid)
{
	// -1 when /proc/PID/fd cannot be read.  For the calling process itself
	// the count includes the descriptor used to read the directory.
	std::string path = "/proc/" + std::to_string(pid) + "/fd";
	DIR *d = ::opendir(path.c_str());
	if (!d)
		return -1;
	int n = 0;
	while (struct dirent *e = ::readdir(d))
		if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0)
			n++;
	::closedir(d);
	return n;
}

} // namespace qc::test
