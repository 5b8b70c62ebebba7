// Private to the SQLite store (store_sqlite.cpp, store_sqlite_admin.cpp):
// RAII for the connection and statements, and one use of a statement.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

namespace qc::sqlite {

struct DbCloser {
	void operator()(sqlite3 *db) const noexcept { sqlite3_close_v2(db); }
};
struct StmtFinalizer {
	void operator()(sqlite3_stmt *s) const noexcept { sqlite3_finalize(s); }
};
using DbPtr = std::unique_ptr<sqlite3, DbCloser>;

// A prepared statement, reset and unbound after each use by Use.
class Stmt
{
public:
	Stmt() = default;
	bool prepare(sqlite3 *db, const char *sql)
	{
		sqlite3_stmt *s = nullptr;
		int rc = sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s, nullptr);
		stmt_.reset(s);
		sql_ = sql;
		return rc == SQLITE_OK;
	}
	sqlite3_stmt *get() const { return stmt_.get(); }
	const char *sql() const { return sql_; }

private:
	std::unique_ptr<sqlite3_stmt, StmtFinalizer> stmt_;
	const char *sql_ = "";
};

// One use of a prepared statement: binds, steps, reads columns; resets on
// destruction so the statement is ready for the next call.
class Use
{
public:
	explicit Use(Stmt &s) : s_(s.get()) {}
	~Use()
	{
		sqlite3_reset(s_);
		sqlite3_clear_bindings(s_);
	}
	Use(const Use &) = delete;
	Use &operator=(const Use &) = delete;

	// Text is bound without a copy (SQLITE_STATIC): it must outlive the
	// step() of this use, so never bind a temporary.
	Use &bind(int i, const char *literal)
	{
		sqlite3_bind_text(s_, i, literal, -1, SQLITE_STATIC);
		return *this;
	}
	Use &bind(int i, const std::string &v)
	{
		sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_STATIC);
		return *this;
	}
	Use &bind(int i, const std::optional<std::string> &v)
	{
		if (v)
			return bind(i, *v);
		sqlite3_bind_null(s_, i);
		return *this;
	}
	Use &bind(int i, int64_t v)
	{
		sqlite3_bind_int64(s_, i, v);
		return *this;
	}
	// SQLITE_ROW, SQLITE_DONE or an error code.
	int step() { return sqlite3_step(s_); }
	std::string text(int col) const
	{
		const unsigned char *p = sqlite3_column_text(s_, col);
		return p ? std::string(reinterpret_cast<const char *>(p),
				       static_cast<size_t>(sqlite3_column_bytes(s_, col)))
			 : std::string();
	}
	std::optional<std::string> opt_text(int col) const
	{
		if (sqlite3_column_type(s_, col) == SQLITE_NULL)
			return std::nullopt;
		return text(col);
	}
	int64_t i64(int col) const { return sqlite3_column_int64(s_, col); }
	std::optional<int64_t> opt_i64(int col) const
	{
		if (sqlite3_column_type(s_, col) == SQLITE_NULL)
			return std::nullopt;
		return i64(col);
	}

private:
	sqlite3_stmt *s_;
};

} // namespace qc::sqlite
