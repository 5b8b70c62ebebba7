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
// migrated forward by its recorded version; a database from a newer
// qryptchatd is refused.
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
	int64_t connect_timeout_ms = 5000; // per connection attempt
	int64_t query_timeout_ms = 5000;   // per call; past it the call fails DATABASE_ERROR
};

// Connects (all connections of the pool), creating or migrating the schema
// as needed.  Errors carry a message for the operator.
Result<std::unique_ptr<Store>> open_postgres_store(const PgOptions &opts);

} // namespace qc
