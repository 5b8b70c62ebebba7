// store_pg: the Store on PostgreSQL (libpq), for several qryptchatd nodes
// sharing one database.
//
// A small pool of connections.  Every call is one transaction, sent
// without blocking; the call then waits on the connection's socket through
// an IoWait (io_wait.hpp), so that in the server a slow query suspends
// only the request that made it.  Calls may overlap (from different fibers
// of the one loop thread) up to `connections` at a time: each takes an
// idle connection of the pool for its duration.  A connection found broken
// is reconnected by the next call that needs it.  The schema
// (schema-postgres.sql, compiled in) is applied to an empty database and
// migrated forward by its recorded version, under an advisory lock so that
// nodes starting together create it once; a database from a newer
// qryptchatd is refused.
//
// PostgreSQL text cannot hold a NUL character: a call given one in any
// text (an id, content, a client message id) fails INVALID_DATA without
// reaching the database, where SQLite would have stored it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "qryptchat/io_wait.hpp"
#include "qryptchat/store.hpp"

namespace qc {

struct PgOptions {
	std::string dsn;                   // libpq connection string or URI
	IoWait *io = nullptr;              // nullptr: blocking_io_wait()
	size_t connections = 4;            // pool size (the most overlapping calls)
	int64_t connect_timeout_ms = 5000; // per connection attempt (0: no limit)
	// Per call: the server cancels a statement running longer (its
	// statement_timeout, so a cancelled write is rolled back) and the call
	// fails DATABASE_ERROR; a server silent for 2 s more has its
	// connection dropped.  Also the longest wait for a free connection.
	// 0: no limit.
	int64_t query_timeout_ms = 5000;
};

// Connects (all connections of the pool), creating or migrating the schema
// as needed.  Errors carry a message for the operator.
Result<std::unique_ptr<Store>> open_postgres_store(const PgOptions &opts);

} // namespace qc
