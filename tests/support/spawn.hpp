// Starts the real qryptchatd binary for an integration test, the same way
// every time: a fresh temporary directory with a config file, a secret file
// and the database; `--ready-file` to learn the port (the server listens on
// 127.0.0.1 port 0); a deadline on readiness; a check that the child did not
// die early; TERM then KILL when the test is done.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace qc::test {

// The secret every test server is given and every test token is signed with.
extern const char *const kTestSecret;

// Path of the binary under test: $QRYPTCHATD if set, else "build/qryptchatd".
// ServerProcess and run_binary start it through $QRYPTCHATD_WRAPPER when
// that is set (a program and its options, split at blanks), e.g.
// "qemu-aarch64-static" to run an arm64 build on an x86-64 machine.
std::string server_binary();

struct ServerOptions {
	// Directives written to the config file, one "name value" line each,
	// after the test defaults (listen 127.0.0.1:0, database DIR/chat.db,
	// jwt_secret_file DIR/secret, log_level debug, web_root empty).  A later entry for the
	// same name wins.
	std::vector<std::pair<std::string, std::string>> config;
	std::vector<std::string> extra_args;                      // appended to argv
	std::vector<std::pair<std::string, std::string>> env;     // added to the environment
	// Reuse an existing directory (its database), e.g. for a restart test.
	std::string dir;
	int ready_timeout_ms = 10000;
};

class ServerProcess {
public:
	// Starts the server and waits for the ready file.  Aborts the test
	// (cmocka fail) if the server exits or is not ready in time.
	static std::unique_ptr<ServerProcess> start(const ServerOptions &opts = {});
	~ServerProcess();   // TERM, wait up to 5 s, then KILL; removes the dir unless kept
	ServerProcess(const ServerProcess &) = delete;
	ServerProcess &operator=(const ServerProcess &) = delete;

	int port() const;
	pid_t pid() const;
	const std::string &dir() const;        // the temporary directory
	std::string db_path() const;           // DIR/chat.db
	std::string config_path() const;       // DIR/qryptchatd.conf

	// Sends `sig` and waits up to timeout_ms for exit.  Returns the exit
	// status (0..255), 128+signal if killed by a signal, -1 on timeout.
	int stop(int sig = 15, int timeout_ms = 5000);
	// Sends a signal without waiting (SIGHUP for reload tests).
	void signal(int sig);
	// Waits for the process to exit by itself; same return as stop().
	int wait_exit(int timeout_ms);
	// Everything the server wrote to stderr so far.
	std::string log() const;
	// Blocks until the log contains `needle` or timeout; true if found.
	bool wait_log(const std::string &needle, int timeout_ms = 5000) const;
	// Keeps the directory after destruction (to restart on the same data).
	void keep_dir(bool keep);

private:
	ServerProcess() = default;
	struct Impl;
	std::unique_ptr<Impl> impl_;
};

// Runs the binary to completion with these arguments (no ready file), e.g.
// `--check-config`.  Returns the exit status and the captured output.
struct RunResult {
	int status = -1;
	std::string out;   // stdout
	std::string err;   // stderr
};
RunResult run_binary(const std::vector<std::string> &args,
		     const std::vector<std::pair<std::string, std::string>> &env = {},
		     int timeout_ms = 10000);

// A fresh temporary directory (removed by the caller or left for debugging).
std::string make_temp_dir();
void remove_tree(const std::string &dir);
void write_file(const std::string &path, const std::string &text);
std::string read_file(const std::string &path);

// Resident set size and open file descriptors of a live process.
long process_rss_kb(pid_t pid);
int process_fd_count(pid_t pid);

} // namespace qc::test
