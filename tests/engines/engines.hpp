// engines: private PostgreSQL and Redis servers for the tests that need
// them (the PostgreSQL store, the Redis broker, the cluster).  Each server
// runs in a fresh temporary directory and listens only on a Unix socket
// there: no TCP port, nothing shared with a system instance.
//
// Where an engine is not installed, start_* returns nullptr with the
// reason; the test then skips with a visible "SKIPPED: ..." line, unless
// QC_REQUIRE_ENGINES=1 (set by .ci/run), when it fails instead.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>

namespace qc::test {

// PostgreSQL from Debian's postgresql package (initdb and postgres from
// /usr/lib/postgresql/<version>/bin), run as the `postgres` system user
// when the tests run as root.  fsync is off: the tests kill nodes, not the
// database.
struct PgServer {
	std::string dir;      // data directory and socket directory
	std::string dsn;      // libpq connection string for the database qryptchat
	pid_t pid = -1;
	bool running() const { return pid > 0; }
	bool stop();          // fast shutdown; waits for the process to exit
	bool start();         // starts again on the same directory and socket
	~PgServer();
};
std::unique_ptr<PgServer> start_postgres(std::string *why_not);

// Redis from Debian's redis-server package, with no persistence.
struct RedisServer {
	std::string dir;      // socket directory
	std::string url;      // unix:<dir>/redis.sock
	pid_t pid = -1;
	bool running() const { return pid > 0; }
	bool stop();          // SIGTERM; waits for the process to exit
	bool start();         // starts again on the same socket
	~RedisServer();
};
std::unique_ptr<RedisServer> start_redis(std::string *why_not);

// Prints "SKIPPED: <what>: <why>" and returns true when the test should be
// skipped; with QC_REQUIRE_ENGINES=1 it prints the reason and exits 1.
bool skip_without_engine(const char *what, const std::string &why);

} // namespace qc::test
