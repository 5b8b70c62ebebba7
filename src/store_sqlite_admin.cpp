// The AdminStore on SQLite: a second connection beside the server's (WAL
// lets both read and write), for the operator's subcommands.
#include <sys/stat.h>

#include "qryptchat/admin.hpp"
#include "qryptchat/store_sqlite.hpp"
#include "sqlite_stmt.hpp"

namespace qc {

using sqlite::DbPtr;
using sqlite::Stmt;
using sqlite::Use;

namespace {

const char kUserColumns[] =
	"u.id, u.username, u.display_name, u.email, u.avatar_url, u.disabled, u.created_at, u.updated_at, "
	"(SELECT count(*) FROM participants p WHERE p.user_id = u.id AND p.left_at IS NULL) ";

const char kConversationColumns[] =
	"c.id, c.type, c.name, c.created_by, c.created_at, c.updated_at, c.last_seq, "
	"(SELECT count(*) FROM messages m WHERE m.conversation_id = c.id), "
	"(SELECT count(*) FROM participants p WHERE p.conversation_id = c.id AND p.left_at IS NULL) ";

UserInfo read_user(const Use &u)
{
	UserInfo i;
	i.user.id = u.text(0);
	i.user.username = u.text(1);
	i.user.display_name = u.text(2);
	i.user.email = u.opt_text(3);
	i.user.avatar_url = u.opt_text(4);
	i.user.disabled = u.i64(5) != 0;
	i.created_at = u.i64(6);
	i.updated_at = u.i64(7);
	i.conversations = u.i64(8);
	return i;
}

ConversationInfo read_conversation(const Use &u)
{
	ConversationInfo c;
	c.id = u.text(0);
	c.type = u.text(1);
	c.name = u.opt_text(2);
	c.created_by = u.text(3);
	c.created_at = u.i64(4);
	c.updated_at = u.i64(5);
	c.last_seq = u.i64(6);
	c.messages = u.i64(7);
	c.participants = u.i64(8);
	return c;
}

class SqliteAdmin final : public AdminStore
{
public:
	Status open(const std::string &path);

	Result<std::vector<UserInfo>> users() override;
	Result<std::optional<UserInfo>> user(const std::string &id) override;
	Result<bool> add_user(const std::string &id, const ProfileHints &hints) override;
	Result<bool> set_disabled(const std::string &id, bool disabled) override;
	Result<std::vector<ConversationInfo>> conversations(const std::optional<std::string> &member) override;
	Result<std::optional<ConversationInfo>> conversation(const std::string &id) override;
	Status add_member(const std::string &conversation, const std::string &user) override;
	Status remove_member(const std::string &conversation, const std::string &user) override;
	Status backup(const std::string &path) override;
	Result<CheckReport> check() override;
	Result<int64_t> prune(int64_t before_ms) override;

private:
	// The operator sees SQLite's reason.
	Error fail(const std::string &what)
	{
		return make_error(Err::DatabaseError, what + ": " + sqlite3_errmsg(db_.get()));
	}
	bool prepare(Stmt &s, const char *sql) { return s.prepare(db_.get(), sql); }
	bool exec(const char *sql) { return sqlite3_exec(db_.get(), sql, nullptr, nullptr, nullptr) == SQLITE_OK; }
	// Runs `body` in an IMMEDIATE transaction: committed when it returns
	// an ok Status, rolled back otherwise.
	template <typename F> Status write(F &&body)
	{
		if (!exec("BEGIN IMMEDIATE"))
			return fail("begin");
		Status st = body();
		if (st.ok() && !exec("COMMIT"))
			st = fail("commit");
		if (!st.ok())
			exec("ROLLBACK");
		return st;
	}

	DbPtr db_;
	std::string path_;
};

Status SqliteAdmin::open(const std::string &path)
{
	path_ = path;
	struct stat st;
	if (stat(path.c_str(), &st) != 0)
		return make_error(Err::DatabaseError, path + ": no database here (the server creates it)");
	sqlite3 *db = nullptr;
	int rc = sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, nullptr);
	db_.reset(db);
	if (rc != SQLITE_OK)
		return make_error(Err::DatabaseError,
				  path + ": " + (db ? sqlite3_errmsg(db) : sqlite3_errstr(rc)));
	sqlite3_busy_timeout(db, 5000); // a command may wait for the server's commit
	if (!exec("PRAGMA foreign_keys = ON"))
		return fail(path);
	Stmt v;
	if (!prepare(v, "PRAGMA user_version"))
		return fail(path);
	Use u(v);
	int version = u.step() == SQLITE_ROW ? static_cast<int>(u.i64(0)) : -1;
	if (version != kSchemaVersion)
		return make_error(Err::DatabaseError,
				  path + ": schema version " + std::to_string(version) + ", this qryptchatd uses " +
					  std::to_string(kSchemaVersion) + " (start the server once to migrate)");
	return ok_status();
}

Result<std::vector<UserInfo>> SqliteAdmin::users()
{
	Stmt s;
	if (!prepare(s, (std::string("SELECT ") + kUserColumns + "FROM users u ORDER BY u.id").c_str()))
		return fail("users");
	std::vector<UserInfo> out;
	Use u(s);
	int rc;
	while ((rc = u.step()) == SQLITE_ROW)
		out.push_back(read_user(u));
	if (rc != SQLITE_DONE)
		return fail("users");
	return out;
}

Result<std::optional<UserInfo>> SqliteAdmin::user(const std::string &id)
{
	Stmt s;
	if (!prepare(s, (std::string("SELECT ") + kUserColumns + "FROM users u WHERE u.id = ?1").c_str()))
		return fail("user");
	Use u(s);
	u.bind(1, id);
	int rc = u.step();
	if (rc == SQLITE_ROW)
		return std::optional<UserInfo>(read_user(u));
	if (rc != SQLITE_DONE)
		return fail("user");
	return std::optional<UserInfo>();
}

Result<bool> SqliteAdmin::add_user(const std::string &id, const ProfileHints &h)
{
	Stmt s;
	if (!prepare(s, "INSERT INTO users (id, username, display_name, email, avatar_url, created_at, "
			"updated_at) VALUES (?1, coalesce(?2, ?6), coalesce(?3, ?2, ?6), ?4, ?5, ?7, ?7) "
			"ON CONFLICT (id) DO NOTHING"))
		return fail("add user");
	Use u(s);
	std::string fallback = "user_" + utf8_prefix(id, 8);
	int64_t now = now_ms();
	u.bind(1, id).bind(2, h.username).bind(3, h.display_name).bind(4, h.email).bind(5, h.avatar_url);
	u.bind(6, fallback).bind(7, now);
	if (u.step() != SQLITE_DONE)
		return fail("add user");
	return sqlite3_changes(db_.get()) == 1;
}

Result<bool> SqliteAdmin::set_disabled(const std::string &id, bool disabled)
{
	Stmt s;
	if (!prepare(s, "UPDATE users SET disabled = ?2, updated_at = ?3 WHERE id = ?1"))
		return fail("user");
	Use u(s);
	u.bind(1, id).bind(2, static_cast<int64_t>(disabled ? 1 : 0)).bind(3, now_ms());
	if (u.step() != SQLITE_DONE)
		return fail("user");
	return sqlite3_changes(db_.get()) == 1;
}

Result<std::vector<ConversationInfo>> SqliteAdmin::conversations(const std::optional<std::string> &member)
{
	std::string sql = std::string("SELECT ") + kConversationColumns + "FROM conversations c ";
	if (member)
		sql += "JOIN participants q ON q.conversation_id = c.id AND q.user_id = ?1 AND q.left_at IS NULL ";
	sql += "ORDER BY c.updated_at DESC, c.id";
	Stmt s;
	if (!prepare(s, sql.c_str()))
		return fail("conversations");
	Use u(s);
	if (member)
		u.bind(1, *member);
	std::vector<ConversationInfo> out;
	int rc;
	while ((rc = u.step()) == SQLITE_ROW)
		out.push_back(read_conversation(u));
	if (rc != SQLITE_DONE)
		return fail("conversations");
	return out;
}

Result<std::optional<ConversationInfo>> SqliteAdmin::conversation(const std::string &id)
{
	Stmt s, m;
	if (!prepare(s, (std::string("SELECT ") + kConversationColumns +
			 "FROM conversations c WHERE c.id = ?1").c_str()) ||
	    !prepare(m, "SELECT p.user_id, u.username, p.role, p.joined_at, p.left_at "
			"FROM participants p JOIN users u ON u.id = p.user_id "
			"WHERE p.conversation_id = ?1 ORDER BY p.joined_at, p.user_id"))
		return fail("conversation");
	Use u(s);
	u.bind(1, id);
	int rc = u.step();
	if (rc == SQLITE_DONE)
		return std::optional<ConversationInfo>();
	if (rc != SQLITE_ROW)
		return fail("conversation");
	ConversationInfo c = read_conversation(u);
	Use p(m);
	p.bind(1, id);
	while ((rc = p.step()) == SQLITE_ROW)
		c.members.push_back(MemberInfo{p.text(0), p.text(1), p.text(2), p.i64(3), p.opt_i64(4)});
	if (rc != SQLITE_DONE)
		return fail("conversation");
	return std::optional<ConversationInfo>(std::move(c));
}

Status SqliteAdmin::add_member(const std::string &conversation, const std::string &user)
{
	return write([&]() -> Status {
		Stmt t, x, ins;
		if (!prepare(t, "SELECT type FROM conversations WHERE id = ?1") ||
		    !prepare(x, "SELECT 1 FROM users WHERE id = ?1") ||
		    !prepare(ins, "INSERT INTO participants (conversation_id, user_id, role, joined_at) "
				  "VALUES (?1, ?2, 'member', ?3) ON CONFLICT (conversation_id, user_id) "
				  "DO UPDATE SET left_at = NULL WHERE left_at IS NOT NULL"))
			return fail("add member");
		Use tu(t);
		tu.bind(1, conversation);
		if (tu.step() != SQLITE_ROW)
			return make_error(Err::AccessDenied, "no conversation " + conversation);
		if (tu.text(0) != "group")
			return make_error(Err::InvalidData, "a direct conversation has exactly two participants");
		Use xu(x);
		xu.bind(1, user);
		if (xu.step() != SQLITE_ROW)
			return make_error(Err::UserNotFound, "no user " + user);
		Use iu(ins);
		int64_t now = now_ms();
		iu.bind(1, conversation).bind(2, user).bind(3, now);
		if (iu.step() != SQLITE_DONE)
			return fail("add member");
		return ok_status();
	});
}

Status SqliteAdmin::remove_member(const std::string &conversation, const std::string &user)
{
	return write([&]() -> Status {
		Stmt up;
		if (!prepare(up, "UPDATE participants SET left_at = ?3 "
				 "WHERE conversation_id = ?1 AND user_id = ?2 AND left_at IS NULL"))
			return fail("remove member");
		Use u(up);
		int64_t now = now_ms();
		u.bind(1, conversation).bind(2, user).bind(3, now);
		if (u.step() != SQLITE_DONE)
			return fail("remove member");
		if (sqlite3_changes(db_.get()) != 1)
			return make_error(Err::UserNotFound,
					  user + " is not a current participant of " + conversation);
		return ok_status();
	});
}

Status SqliteAdmin::backup(const std::string &path)
{
	struct stat st;
	if (stat(path.c_str(), &st) == 0)
		return make_error(Err::InvalidData, path + ": exists; a backup is written to a new file");
	Stmt s;
	if (!prepare(s, "VACUUM INTO ?1"))
		return fail("backup");
	Use u(s);
	u.bind(1, path);
	if (u.step() != SQLITE_DONE)
		return fail("backup to " + path);
	return ok_status();
}

Result<CheckReport> SqliteAdmin::check()
{
	CheckReport r;
	r.schema_version = kSchemaVersion;
	Stmt ic, fk, n;
	if (!prepare(ic, "PRAGMA integrity_check") || !prepare(fk, "PRAGMA foreign_key_check") ||
	    !prepare(n, "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM conversations), "
			"(SELECT count(*) FROM messages)"))
		return fail("check");
	{
		Use u(ic);
		int rc;
		while ((rc = u.step()) == SQLITE_ROW)
			if (u.text(0) != "ok")
				r.problems.push_back(u.text(0));
		if (rc != SQLITE_DONE)
			return fail("integrity_check");
	}
	{
		Use u(fk);
		int rc;
		while ((rc = u.step()) == SQLITE_ROW)
			r.problems.push_back("foreign key: a row of " + u.text(0) + " refers to a missing row of " +
					     u.text(2));
		if (rc != SQLITE_DONE)
			return fail("foreign_key_check");
	}
	Use u(n);
	if (u.step() != SQLITE_ROW)
		return fail("check");
	r.users = u.i64(0);
	r.conversations = u.i64(1);
	r.messages = u.i64(2);
	struct stat st;
	if (stat(path_.c_str(), &st) == 0)
		r.bytes = st.st_size;
	return r;
}

Result<int64_t> SqliteAdmin::prune(int64_t before_ms)
{
	int64_t removed = 0;
	Status st = write([&]() -> Status {
		Stmt unlink_replies, copies, msgs;
		if (!prepare(unlink_replies,
			     "UPDATE messages SET reply_to_id = NULL WHERE reply_to_id IN "
			     "(SELECT id FROM messages WHERE created_at < ?1)") ||
		    !prepare(copies, "DELETE FROM message_copies WHERE message_id IN "
				     "(SELECT id FROM messages WHERE created_at < ?1)") ||
		    !prepare(msgs, "DELETE FROM messages WHERE created_at < ?1"))
			return fail("prune");
		for (Stmt *s : {&unlink_replies, &copies, &msgs}) {
			Use u(*s);
			u.bind(1, before_ms);
			if (u.step() != SQLITE_DONE)
				return fail("prune");
		}
		removed = sqlite3_changes(db_.get());
		return ok_status();
	});
	if (!st)
		return st.error();
	return removed;
}

} // namespace

Result<std::unique_ptr<AdminStore>> open_sqlite_admin(const std::string &path)
{
	auto a = std::make_unique<SqliteAdmin>();
	if (auto st = a->open(path); !st)
		return st.error();
	return std::unique_ptr<AdminStore>(std::move(a));
}

Status sqlite_restore(const std::string &path, const std::string &backup)
{
	// The backup must be a sound database of a schema this build knows.
	sqlite3 *src_raw = nullptr;
	int rc = sqlite3_open_v2(backup.c_str(), &src_raw, SQLITE_OPEN_READONLY, nullptr);
	DbPtr src(src_raw);
	if (rc != SQLITE_OK)
		return make_error(Err::DatabaseError, backup + ": " + sqlite3_errstr(rc));
	{
		Stmt s;
		if (!s.prepare(src.get(), "SELECT (SELECT group_concat(integrity_check) FROM "
					  "pragma_integrity_check), (SELECT user_version FROM pragma_user_version)"))
			return make_error(Err::DatabaseError, backup + ": " + sqlite3_errmsg(src.get()));
		Use u(s);
		if (u.step() != SQLITE_ROW)
			return make_error(Err::DatabaseError, backup + ": " + sqlite3_errmsg(src.get()));
		if (u.text(0) != "ok")
			return make_error(Err::DatabaseError, backup + ": fails the integrity check: " + u.text(0));
		if (u.i64(1) < 1 || u.i64(1) > kSchemaVersion)
			return make_error(Err::DatabaseError, backup + ": not a qryptchatd database of schema 1 to " +
								      std::to_string(kSchemaVersion));
	}
	// An exclusive lock that is kept: refused while a server (or anything
	// else) has the database open.
	sqlite3 *dst_raw = nullptr;
	rc = sqlite3_open_v2(path.c_str(), &dst_raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr);
	DbPtr dst(dst_raw);
	if (rc != SQLITE_OK)
		return make_error(Err::DatabaseError, path + ": " + sqlite3_errstr(rc));
	if (sqlite3_exec(dst.get(), "PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; COMMIT", nullptr,
			 nullptr, nullptr) != SQLITE_OK)
		return make_error(Err::DatabaseError,
				  path + ": in use by another process; stop the server before restoring");
	sqlite3_backup *b = sqlite3_backup_init(dst.get(), "main", src.get(), "main");
	if (!b)
		return make_error(Err::DatabaseError, path + ": " + sqlite3_errmsg(dst.get()));
	rc = sqlite3_backup_step(b, -1);
	sqlite3_backup_finish(b);
	if (rc != SQLITE_DONE)
		return make_error(Err::DatabaseError, path + ": restore failed: " + sqlite3_errstr(rc));
	return ok_status();
}

} // namespace qc
