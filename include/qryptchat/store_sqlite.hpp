// store_sqlite: the Store on SQLite in WAL mode, the default backend.
//
// One connection, used only from the loop thread.  Every statement is
// prepared once at open; every multi-row write is one IMMEDIATE
// transaction.  The schema (schema.sql, compiled in) is applied to an empty
// database and migrated forward by PRAGMA user_version; a database from a
// newer qryptchatd is refused.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "qryptchat/store.hpp"

namespace qc {

// The schema version this build writes.
constexpr int kSchemaVersion = 1;

struct SqliteOptions {
	std::string path;             // file, or ":memory:"
	bool durability_full = false; // synchronous=FULL instead of NORMAL
	int busy_timeout_ms = 1000;   // wait this long for another writer's lock
};

// Opens (creating and migrating as needed).  Errors carry a message for
// the operator (file, SQLite's reason).
Result<std::unique_ptr<Store>> open_sqlite_store(const SqliteOptions &opts);

// EXPLAIN QUERY PLAN of every prepared statement of a store opened by
// open_sqlite_store: (sql, plan lines).  For tests that check that no
// request scans a table.
std::vector<std::pair<std::string, std::string>> sqlite_query_plans(Store &store);

} // namespace qc
