#include "qryptchat/store_sqlite.hpp"

#include <sqlite3.h>

#include <algorithm>
#include <cstring>

#include "qryptchat/log.hpp"
#include "sqlite_stmt.hpp"

extern "C" const char kSchemaSql[]; // schema.sql, compiled in by the Makefile

namespace qc {

using sqlite::DbPtr;
using sqlite::Stmt;
using sqlite::Use;

namespace {

// The columns of a message as a viewer sees it; ?1 is always the viewer.
#define MESSAGE_COLUMNS                                                                            \
	"m.id, m.conversation_id, m.seq, m.sender_id, m.message_type, "                            \
	"coalesce(mc.content, m.content), m.reply_to_id, m.metadata, m.client_message_id, "        \
	"m.created_at, m.edited_at, m.deleted_at, u.username, u.display_name, u.avatar_url, "      \
	"r.id, r.sender_id, coalesce(rc.content, r.content) "
#define MESSAGE_JOINS                                                                              \
	"FROM messages m JOIN users u ON u.id = m.sender_id "                                      \
	"LEFT JOIN message_copies mc ON mc.message_id = m.id AND mc.recipient_id = ?1 "            \
	"LEFT JOIN messages r ON r.id = m.reply_to_id "                                            \
	"LEFT JOIN message_copies rc ON rc.message_id = r.id AND rc.recipient_id = ?1 "

MessageRow read_message(const Use &u)
{
	MessageRow m;
	m.id = u.text(0);
	m.conversation_id = u.text(1);
	m.seq = u.i64(2);
	m.sender_id = u.text(3);
	m.message_type = u.text(4);
	m.content = u.opt_text(5);
	m.reply_to_id = u.opt_text(6);
	m.metadata = u.opt_text(7);
	m.client_message_id = u.opt_text(8);
	m.created_at = u.i64(9);
	m.edited_at = u.opt_i64(10);
	m.deleted_at = u.opt_i64(11);
	m.sender.id = m.sender_id;
	m.sender.username = u.text(12);
	m.sender.display_name = u.text(13);
	m.sender.avatar_url = u.opt_text(14);
	if (auto rid = u.opt_text(15))
		m.reply_to = ReplyRef{*rid, u.text(16), u.opt_text(17)};
	return m;
}

class SqliteStore final : public Store
{
public:
	Status open(const SqliteOptions &opts);

	Result<User> upsert_user(const std::string &id, const ProfileHints &hints) override;
	Result<std::optional<User>> get_user(const std::string &id) override;
	Result<std::optional<std::string>> first_unknown_user(const std::vector<std::string> &ids) override;
	Result<bool> is_participant(const std::string &conversation, const std::string &user) override;
	Result<std::vector<std::string>> participant_ids(const std::string &conversation) override;
	Result<std::vector<std::string>> conversation_ids_of(const std::string &user) override;
	Result<CreatedConversation> create_conversation(const NewConversation &c) override;
	Result<ConversationView> conversation(const std::string &id, const std::string &viewer) override;
	Result<std::vector<ConversationView>> conversations(const std::string &viewer) override;
	Result<InsertedMessage> insert_message(const NewMessage &m) override;
	Result<std::optional<int64_t>> message_seq(const std::string &conversation,
						   const std::string &message_id) override;
	Result<Page> load_messages(const PageQuery &q) override;
	Status mark_read(const std::string &conversation, const std::string &user, int64_t seq) override;
	bool healthy() override;
	bool changed_by_others() override;
	void begin_batch() override { batching_ = true; }
	bool batch_has_writes() const override { return outer_open_; }
	Status end_batch() override;

	// (sql, plan) for every prepared statement.
	std::vector<std::pair<std::string, std::string>> query_plans();

private:
	// Logs SQLite's reason (never shown to clients) and returns the wire error.
	Error fail(const char *op);
	// The same for a write, which also marks the store degraded: until a
	// write succeeds again, /health says so and writes do not wait for
	// another process's lock (each would hold up the whole loop for the
	// busy timeout).
	Error write_error(const char *op);
	// A write succeeded: no longer degraded.
	void write_ok();
	void set_degraded(bool degraded);
	Status exec(const char *sql);
	Status migrate();
	Status prepare_all();
	// Finishes a view: participants, latest message, unread count.
	Status fill_view(ConversationView &v, const std::string &viewer, int64_t last_seq,
			 int64_t read_seq);

	// Opens the batch's transaction if it is not open yet.
	bool open_outer();
	// Before a single-statement write: in a batch, it joins the batch's
	// transaction (else it commits by itself).
	bool ready_to_write() { return !batching_ || open_outer(); }

	// One all-or-nothing write: its own transaction, or in a batch a
	// savepoint inside the batch's transaction.
	class Txn
	{
	public:
		explicit Txn(SqliteStore &s) : s_(s) {}
		~Txn()
		{
			if (!open_)
				return;
			if (s_.batching_) {
				Use(s_.rollback_to_).step();
				Use(s_.release_).step();
			} else {
				Use(s_.rollback_).step();
			}
		}
		bool begin()
		{
			if (s_.batching_)
				open_ = s_.open_outer() && Use(s_.savepoint_).step() == SQLITE_DONE;
			else
				open_ = Use(s_.begin_).step() == SQLITE_DONE;
			return open_;
		}
		bool commit()
		{
			if (Use(s_.batching_ ? s_.release_ : s_.commit_).step() != SQLITE_DONE)
				return false; // the destructor rolls back
			open_ = false;
			return true;
		}

	private:
		SqliteStore &s_;
		bool open_ = false;
	};

	DbPtr db_;
	std::string path_;
	bool write_failed_ = false; // the last write failed; cleared by a successful one
	int busy_timeout_ms_ = 0;   // SqliteOptions::busy_timeout_ms
	int64_t last_probe_us_ = 0; // mono_us() of the last write probe by healthy()
	bool batching_ = false;     // begin_batch() was called
	bool outer_open_ = false;   // the batch's transaction is open

	Stmt begin_, commit_, rollback_, savepoint_, release_, rollback_to_;
	Stmt user_get_, user_upsert_;
	Stmt part_check_, part_ids_, conv_ids_of_, part_insert_, part_list_, read_seq_;
	Stmt direct_find_, conv_insert_, conv_get_, conv_list_;
	Stmt latest_, unread_;
	Stmt by_client_id_, seq_next_, msg_insert_, copy_insert_, msg_seq_;
	Stmt page_newest_, page_before_, page_after_, mark_read_;
	Stmt health_, data_version_;
	int64_t data_version_seen_ = -1;
	std::vector<Stmt *> all_; // every statement above, for query_plans()
};

Error SqliteStore::fail(const char *op)
{
	QC_WARN("store_error op=%s code=%d reason=%s", op, sqlite3_extended_errcode(db_.get()),
		log_str(sqlite3_errmsg(db_.get())).c_str());
	return make_error(Err::DatabaseError, "Database error");
}

Error SqliteStore::write_error(const char *op)
{
	Error e = fail(op);
	set_degraded(true);
	return e;
}

void SqliteStore::write_ok()
{
	set_degraded(false);
}

void SqliteStore::set_degraded(bool degraded)
{
	if (degraded == write_failed_)
		return;
	write_failed_ = degraded;
	sqlite3_busy_timeout(db_.get(), degraded ? 0 : busy_timeout_ms_);
	if (degraded)
		QC_WARN("store_degraded database=%s", log_str(path_).c_str());
	else
		QC_INFO("store_recovered database=%s", log_str(path_).c_str());
}

Status SqliteStore::exec(const char *sql)
{
	char *msg = nullptr;
	if (sqlite3_exec(db_.get(), sql, nullptr, nullptr, &msg) != SQLITE_OK) {
		std::string m = msg ? msg : "unknown error";
		sqlite3_free(msg);
		return make_error(Err::DatabaseError, path_ + ": " + m);
	}
	return ok_status();
}

Status SqliteStore::migrate()
{
	int version = 0;
	{
		sqlite3_stmt *s = nullptr;
		if (sqlite3_prepare_v2(db_.get(), "PRAGMA user_version", -1, &s, nullptr) != SQLITE_OK)
			return make_error(Err::DatabaseError,
					  path_ + ": " + sqlite3_errmsg(db_.get()));
		if (sqlite3_step(s) == SQLITE_ROW)
			version = sqlite3_column_int(s, 0);
		sqlite3_finalize(s);
	}
	if (version > kSchemaVersion)
		return make_error(Err::DatabaseError,
				  path_ + ": database schema version " + std::to_string(version) +
					  " is newer than this qryptchatd supports (" +
					  std::to_string(kSchemaVersion) +
					  "); run a newer qryptchatd or restore a backup");
	if (version == kSchemaVersion)
		return ok_status();
	// Each step runs in its own transaction together with its version bump.
	// Version 0 → 1 creates everything from schema.sql.
	if (version == 0) {
		std::string sql = std::string("BEGIN IMMEDIATE;") + kSchemaSql +
				  "\nPRAGMA user_version = 1; COMMIT;";
		auto st = exec(sql.c_str());
		if (!st) {
			exec("ROLLBACK");
			return st;
		}
		QC_INFO("store_migrated path=%s from=0 to=1", log_str(path_).c_str());
	}
	return ok_status();
}

Status SqliteStore::prepare_all()
{
	struct Item {
		Stmt *stmt;
		const char *sql;
	};
	const Item items[] = {
		{&begin_, "BEGIN IMMEDIATE"},
		{&commit_, "COMMIT"},
		{&rollback_, "ROLLBACK"},
		{&savepoint_, "SAVEPOINT w"},
		{&release_, "RELEASE w"},
		{&rollback_to_, "ROLLBACK TO w"},
		{&user_get_, "SELECT id, username, display_name, email, avatar_url, disabled "
			     "FROM users WHERE id = ?1"},
		// Creates the user, or refreshes only the hints given; writes nothing
		// when they are unchanged (so authentication stays read-only).
		{&user_upsert_,
		 "INSERT INTO users (id, username, display_name, email, avatar_url, created_at, updated_at) "
		 "VALUES (?1, coalesce(?2, ?6), coalesce(?3, ?2, ?6), ?4, ?5, ?7, ?7) "
		 "ON CONFLICT (id) DO UPDATE SET "
		 "username = coalesce(?2, username), display_name = coalesce(?3, display_name), "
		 "email = coalesce(?4, email), avatar_url = coalesce(?5, avatar_url), updated_at = ?7 "
		 "WHERE (?2 IS NOT NULL AND ?2 IS NOT username) "
		 "OR (?3 IS NOT NULL AND ?3 IS NOT display_name) "
		 "OR (?4 IS NOT NULL AND ?4 IS NOT email) "
		 "OR (?5 IS NOT NULL AND ?5 IS NOT avatar_url)"},
		{&part_check_, "SELECT 1 FROM participants "
			       "WHERE conversation_id = ?1 AND user_id = ?2 AND left_at IS NULL"},
		{&part_ids_, "SELECT user_id FROM participants "
			     "WHERE conversation_id = ?1 AND left_at IS NULL ORDER BY joined_at, user_id"},
		{&conv_ids_of_, "SELECT conversation_id FROM participants "
				"WHERE user_id = ?1 AND left_at IS NULL"},
		{&part_insert_, "INSERT INTO participants (conversation_id, user_id, role, joined_at) "
				"VALUES (?1, ?2, ?3, ?4) "
				"ON CONFLICT (conversation_id, user_id) DO UPDATE SET left_at = NULL"},
		{&part_list_, "SELECT p.user_id, u.username, u.display_name, u.avatar_url, p.role "
			      "FROM participants p JOIN users u ON u.id = p.user_id "
			      "WHERE p.conversation_id = ?1 AND p.left_at IS NULL "
			      "ORDER BY p.joined_at, p.user_id"},
		{&read_seq_, "SELECT last_read_seq FROM participants "
			     "WHERE conversation_id = ?1 AND user_id = ?2"},
		{&direct_find_, "SELECT id FROM conversations WHERE direct_key = ?1"},
		{&conv_insert_, "INSERT INTO conversations "
				"(id, type, name, created_by, created_at, updated_at, direct_key) "
				"VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6)"},
		{&conv_get_, "SELECT c.id, c.type, c.name, c.avatar_url, c.created_by, c.created_at, "
			     "c.updated_at, c.last_seq, p.last_read_seq "
			     "FROM conversations c JOIN participants p "
			     "ON p.conversation_id = c.id AND p.user_id = ?2 "
			     "WHERE c.id = ?1"},
		{&conv_list_, "SELECT c.id, c.type, c.name, c.avatar_url, c.created_by, c.created_at, "
			      "c.updated_at, c.last_seq, p.last_read_seq "
			      "FROM participants p JOIN conversations c ON c.id = p.conversation_id "
			      "WHERE p.user_id = ?1 AND p.left_at IS NULL "
			      "ORDER BY c.updated_at DESC, c.id DESC"},
		{&latest_, "SELECT m.id, coalesce(mc.content, m.content), m.sender_id, u.username, "
			   "m.created_at FROM messages m JOIN users u ON u.id = m.sender_id "
			   "LEFT JOIN message_copies mc ON mc.message_id = m.id AND mc.recipient_id = ?1 "
			   "WHERE m.conversation_id = ?2 AND m.seq = ?3"},
		{&unread_, "SELECT count(*) FROM messages "
			   "WHERE conversation_id = ?1 AND seq > ?2 AND sender_id <> ?3"},
		{&by_client_id_, "SELECT " MESSAGE_COLUMNS MESSAGE_JOINS
				 "WHERE m.sender_id = ?2 AND m.client_message_id = ?3"},
		{&seq_next_, "UPDATE conversations SET last_seq = last_seq + 1, "
			     "updated_at = max(updated_at, ?2) WHERE id = ?1 RETURNING last_seq"},
		{&msg_insert_, "INSERT INTO messages (id, conversation_id, seq, sender_id, message_type, "
			       "content, reply_to_id, metadata, client_message_id, created_at) "
			       "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"},
		{&copy_insert_, "INSERT INTO message_copies (message_id, recipient_id, content) "
				"VALUES (?1, ?2, ?3)"},
		{&msg_seq_, "SELECT seq FROM messages WHERE id = ?1 AND conversation_id = ?2"},
		{&page_newest_, "SELECT " MESSAGE_COLUMNS MESSAGE_JOINS
				"WHERE m.conversation_id = ?2 ORDER BY m.seq DESC LIMIT ?3"},
		{&page_before_, "SELECT " MESSAGE_COLUMNS MESSAGE_JOINS
				"WHERE m.conversation_id = ?2 AND m.seq < ?4 "
				"ORDER BY m.seq DESC LIMIT ?3"},
		{&page_after_, "SELECT " MESSAGE_COLUMNS MESSAGE_JOINS
			       "WHERE m.conversation_id = ?2 AND m.seq > ?4 "
			       "ORDER BY m.seq ASC LIMIT ?3"},
		{&mark_read_, "UPDATE participants SET last_read_seq = ?3 "
			      "WHERE conversation_id = ?1 AND user_id = ?2 AND last_read_seq < ?3"},
		{&health_, "SELECT count(*) FROM sqlite_schema"},
		// Changes when another connection commits (never for our own).
		{&data_version_, "PRAGMA data_version"},
	};
	for (const auto &it : items) {
		if (!it.stmt->prepare(db_.get(), it.sql))
			return make_error(Err::DatabaseError, path_ + ": cannot prepare statement: " +
								      sqlite3_errmsg(db_.get()));
		all_.push_back(it.stmt);
	}
	return ok_status();
}

Status SqliteStore::open(const SqliteOptions &opts)
{
	path_ = opts.path;
	sqlite3 *db = nullptr;
	int rc = sqlite3_open_v2(opts.path.c_str(), &db,
				 SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
				 nullptr);
	db_.reset(db);
	if (rc != SQLITE_OK)
		return make_error(Err::DatabaseError,
				  path_ + ": cannot open database: " +
					  (db ? sqlite3_errmsg(db) : sqlite3_errstr(rc)));
	sqlite3_extended_result_codes(db, 1);
	busy_timeout_ms_ = opts.busy_timeout_ms;
	sqlite3_busy_timeout(db, busy_timeout_ms_);
	// WAL: readers (backups, the admin CLI) never block the server's writes.
	// synchronous=NORMAL in WAL mode loses no committed transaction on a
	// process crash; on power loss the last transactions before the crash
	// may roll back.  FULL syncs the WAL on every commit.
	// An 8 MiB page cache (SQLite's default is 2 MiB) keeps the pages that
	// every message touches (the conversations, the newest index leaves)
	// out of pread(); the WAL is checkpointed every 4000 pages (16 MiB)
	// rather than 1000, so a hot page is copied back to the database once
	// for more of its changes.
	std::string pragmas = std::string("PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; "
					  "PRAGMA cache_size = -8192; PRAGMA wal_autocheckpoint = 4000; "
					  "PRAGMA synchronous = ") +
			      (opts.durability_full ? "FULL" : "NORMAL") + ";";
	if (auto st = exec(pragmas.c_str()); !st)
		return st;
	if (opts.path != ":memory:") {
		sqlite3_stmt *s = nullptr;
		std::string mode;
		if (sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &s, nullptr) == SQLITE_OK &&
		    sqlite3_step(s) == SQLITE_ROW)
			mode = reinterpret_cast<const char *>(sqlite3_column_text(s, 0));
		sqlite3_finalize(s);
		if (mode != "wal")
			return make_error(Err::DatabaseError,
					  path_ + ": cannot switch the database to WAL mode (got '" +
						  mode + "')");
	}
	if (auto st = migrate(); !st)
		return st;
	return prepare_all();
}

Result<User> SqliteStore::upsert_user(const std::string &id, const ProfileHints &h)
{
	std::string fallback = "user_" + utf8_prefix(id, 8); // characters, not bytes
	{
		Use u(user_upsert_);
		u.bind(1, id).bind(2, h.username).bind(3, h.display_name).bind(4, h.email);
		u.bind(5, h.avatar_url).bind(6, fallback).bind(7, now_ms());
		if (!ready_to_write() || u.step() != SQLITE_DONE)
			return write_error("upsert_user");
	}
	write_ok();
	auto user = get_user(id);
	if (!user)
		return user.error();
	if (!*user)
		return fail("upsert_user");
	return std::move(**user);
}

Result<std::optional<User>> SqliteStore::get_user(const std::string &id)
{
	Use u(user_get_);
	u.bind(1, id);
	int rc = u.step();
	if (rc == SQLITE_DONE)
		return std::optional<User>();
	if (rc != SQLITE_ROW)
		return fail("get_user");
	User user;
	user.id = u.text(0);
	user.username = u.text(1);
	user.display_name = u.text(2);
	user.email = u.opt_text(3);
	user.avatar_url = u.opt_text(4);
	user.disabled = u.i64(5) != 0;
	return std::optional<User>(std::move(user));
}

Result<std::optional<std::string>> SqliteStore::first_unknown_user(const std::vector<std::string> &ids)
{
	for (const auto &id : ids) {
		Use u(user_get_);
		u.bind(1, id);
		int rc = u.step();
		if (rc == SQLITE_DONE)
			return std::optional<std::string>(id);
		if (rc != SQLITE_ROW)
			return fail("first_unknown_user");
	}
	return std::optional<std::string>();
}

Result<bool> SqliteStore::is_participant(const std::string &conversation, const std::string &user)
{
	Use u(part_check_);
	u.bind(1, conversation).bind(2, user);
	int rc = u.step();
	if (rc == SQLITE_ROW)
		return true;
	if (rc == SQLITE_DONE)
		return false;
	return fail("is_participant");
}

Result<std::vector<std::string>> SqliteStore::participant_ids(const std::string &conversation)
{
	std::vector<std::string> out;
	Use u(part_ids_);
	u.bind(1, conversation);
	int rc;
	while ((rc = u.step()) == SQLITE_ROW)
		out.push_back(u.text(0));
	if (rc != SQLITE_DONE)
		return fail("participant_ids");
	return out;
}

Result<std::vector<std::string>> SqliteStore::conversation_ids_of(const std::string &user)
{
	std::vector<std::string> out;
	Use u(conv_ids_of_);
	u.bind(1, user);
	int rc;
	while ((rc = u.step()) == SQLITE_ROW)
		out.push_back(u.text(0));
	if (rc != SQLITE_DONE)
		return fail("conversation_ids_of");
	return out;
}

Result<CreatedConversation> SqliteStore::create_conversation(const NewConversation &c)
{
	std::optional<std::string> direct_key;
	if (c.type == "direct" && c.members.size() == 1) {
		direct_key = direct_conversation_key(c.creator, c.members[0]);
	}
	Txn txn(*this);
	if (!txn.begin()) {
		return write_error("create_conversation");
	}
	if (direct_key) {
		Use u(direct_find_);
		u.bind(1, *direct_key);
		int rc = u.step();
		if (rc == SQLITE_ROW) {
			CreatedConversation existing{u.text(0), false, {}};
			// Both sides are participants again if one had been removed.
			for (const auto &who : {c.creator, c.members[0]}) {
				Use p(part_insert_);
				p.bind(1, existing.id).bind(2, who).bind(3, "member");
				p.bind(4, c.now);
				if (p.step() != SQLITE_DONE) {
					return write_error("create_conversation");
				}
			}
			auto view = conversation(existing.id, c.creator);
			if (!view)
				return view.error();
			existing.view = std::move(*view);
			if (!txn.commit()) {
				return write_error("create_conversation");
			}
			return existing;
		}
		if (rc != SQLITE_DONE)
			return fail("create_conversation");
	}
	{
		Use u(conv_insert_);
		u.bind(1, c.id).bind(2, c.type).bind(3, c.name).bind(4, c.creator).bind(5, c.now);
		u.bind(6, direct_key);
		if (u.step() != SQLITE_DONE) {
			return write_error("create_conversation");
		}
	}
	auto add = [&](const std::string &who, const char *role) {
		Use p(part_insert_);
		p.bind(1, c.id).bind(2, who).bind(3, role).bind(4, c.now);
		return p.step() == SQLITE_DONE;
	};
	if (!add(c.creator, "admin")) {
		return write_error("create_conversation");
	}
	for (const auto &m : c.members)
		if (!add(m, "member")) {
			return write_error("create_conversation");
		}
	auto view = conversation(c.id, c.creator);
	if (!view)
		return view.error();
	if (!txn.commit()) {
		return write_error("create_conversation");
	}
	write_ok();
	return CreatedConversation{c.id, true, std::move(*view)};
}

Status SqliteStore::fill_view(ConversationView &v, const std::string &viewer, int64_t last_seq,
			      int64_t read_seq)
{
	{
		Use u(part_list_);
		u.bind(1, v.id);
		int rc;
		while ((rc = u.step()) == SQLITE_ROW)
			v.participants.push_back(Participant{u.text(0), u.text(1), u.text(2),
							     u.opt_text(3), u.text(4)});
		if (rc != SQLITE_DONE)
			return fail("conversation");
	}
	if (last_seq > 0) {
		Use u(latest_);
		u.bind(1, viewer).bind(2, v.id).bind(3, last_seq);
		int rc = u.step();
		if (rc == SQLITE_ROW)
			v.latest = LatestMessage{u.text(0), u.opt_text(1), u.text(2), u.text(3), u.i64(4)};
		else if (rc != SQLITE_DONE)
			return fail("conversation");
	}
	if (last_seq > read_seq) {
		Use u(unread_);
		u.bind(1, v.id).bind(2, read_seq).bind(3, viewer);
		if (u.step() != SQLITE_ROW)
			return fail("conversation");
		v.unread_count = u.i64(0);
	}
	return ok_status();
}

namespace {

ConversationView read_view(const Use &u, int64_t &last_seq, int64_t &read_seq)
{
	ConversationView v;
	v.id = u.text(0);
	v.type = u.text(1);
	v.name = u.opt_text(2);
	v.avatar_url = u.opt_text(3);
	v.created_by = u.text(4);
	v.created_at = u.i64(5);
	v.updated_at = u.i64(6);
	last_seq = u.i64(7);
	read_seq = u.i64(8);
	return v;
}

} // namespace

Result<ConversationView> SqliteStore::conversation(const std::string &id, const std::string &viewer)
{
	ConversationView v;
	int64_t last_seq = 0, read_seq = 0;
	{
		Use u(conv_get_);
		u.bind(1, id).bind(2, viewer);
		int rc = u.step();
		if (rc == SQLITE_DONE)
			return make_error(Err::AccessDenied, "Access denied to conversation");
		if (rc != SQLITE_ROW)
			return fail("conversation");
		v = read_view(u, last_seq, read_seq);
	}
	if (auto st = fill_view(v, viewer, last_seq, read_seq); !st)
		return st.error();
	return v;
}

Result<std::vector<ConversationView>> SqliteStore::conversations(const std::string &viewer)
{
	struct Row {
		ConversationView v;
		int64_t last_seq, read_seq;
	};
	std::vector<Row> rows;
	{
		Use u(conv_list_);
		u.bind(1, viewer);
		int rc;
		while ((rc = u.step()) == SQLITE_ROW) {
			Row r;
			r.v = read_view(u, r.last_seq, r.read_seq);
			rows.push_back(std::move(r));
		}
		if (rc != SQLITE_DONE)
			return fail("conversations");
	}
	std::vector<ConversationView> out;
	out.reserve(rows.size());
	for (auto &r : rows) {
		if (auto st = fill_view(r.v, viewer, r.last_seq, r.read_seq); !st)
			return st.error();
		out.push_back(std::move(r.v));
	}
	return out;
}

Result<InsertedMessage> SqliteStore::insert_message(const NewMessage &m)
{
	if (m.client_message_id) {
		Use u(by_client_id_);
		u.bind(1, m.sender_id).bind(2, m.sender_id).bind(3, *m.client_message_id);
		int rc = u.step();
		if (rc == SQLITE_ROW) {
			InsertedMessage replay{read_message(u), false};
			replay.message.reply_to.reset(); // loads only
			return replay;
		}
		if (rc != SQLITE_DONE)
			return fail("insert_message");
	}
	auto sender = get_user(m.sender_id);
	if (!sender)
		return sender.error();
	if (!*sender)
		return make_error(Err::UserNotFound, "Unknown sender");

	Txn txn(*this);
	auto failed = [&]() {
		return write_error("insert_message");
	};
	if (!txn.begin())
		return failed();
	int64_t seq;
	{
		Use u(seq_next_);
		u.bind(1, m.conversation_id).bind(2, m.now);
		if (u.step() != SQLITE_ROW)
			return failed();
		seq = u.i64(0);
	}
	{
		Use u(msg_insert_);
		u.bind(1, m.id).bind(2, m.conversation_id).bind(3, seq).bind(4, m.sender_id);
		u.bind(5, m.message_type).bind(6, m.content).bind(7, m.reply_to_id);
		u.bind(8, m.metadata).bind(9, m.client_message_id).bind(10, m.now);
		if (u.step() != SQLITE_DONE)
			return failed();
	}
	std::optional<std::string> own_copy = m.content;
	for (const auto &c : m.copies) {
		Use u(copy_insert_);
		u.bind(1, m.id).bind(2, c.first).bind(3, c.second);
		if (u.step() != SQLITE_DONE)
			return failed();
		if (c.first == m.sender_id)
			own_copy = c.second;
	}
	if (!txn.commit())
		return failed();
	write_ok();

	InsertedMessage out;
	out.created = true;
	MessageRow &r = out.message;
	r.id = m.id;
	r.conversation_id = m.conversation_id;
	r.seq = seq;
	r.sender_id = m.sender_id;
	r.message_type = m.message_type;
	r.content = own_copy;
	r.reply_to_id = m.reply_to_id;
	r.metadata = m.metadata;
	r.client_message_id = m.client_message_id;
	r.created_at = m.now;
	r.sender = std::move(**sender);
	return out;
}

Result<std::optional<int64_t>> SqliteStore::message_seq(const std::string &conversation,
							 const std::string &message_id)
{
	Use u(msg_seq_);
	u.bind(1, message_id).bind(2, conversation);
	int rc = u.step();
	if (rc == SQLITE_ROW)
		return std::optional<int64_t>(u.i64(0));
	if (rc == SQLITE_DONE)
		return std::optional<int64_t>();
	return fail("message_seq");
}

Result<Page> SqliteStore::load_messages(const PageQuery &q)
{
	Stmt &s = q.after_seq ? page_after_ : q.before_seq ? page_before_ : page_newest_;
	Page page;
	{
		Use u(s);
		u.bind(1, q.viewer).bind(2, q.conversation_id).bind(3, q.limit + 1);
		if (q.after_seq)
			u.bind(4, *q.after_seq);
		else if (q.before_seq)
			u.bind(4, *q.before_seq);
		int rc;
		while ((rc = u.step()) == SQLITE_ROW)
			page.messages.push_back(read_message(u));
		if (rc != SQLITE_DONE)
			return fail("load_messages");
	}
	if (static_cast<int64_t>(page.messages.size()) > q.limit) {
		page.has_more = true;
		page.messages.pop_back();
	}
	if (!q.after_seq) // fetched newest first
		std::reverse(page.messages.begin(), page.messages.end());
	return page;
}

Status SqliteStore::mark_read(const std::string &conversation, const std::string &user, int64_t seq)
{
	// Best effort (PROTOCOL.md §5): not tried while writes are failing,
	// so that a load's read mark cannot fail the batch it would join.
	if (write_failed_)
		return make_error(Err::DatabaseError, "Database error");
	Use u(mark_read_);
	u.bind(1, conversation).bind(2, user).bind(3, seq);
	if (!ready_to_write() || u.step() != SQLITE_DONE)
		return write_error("mark_read");
	write_ok();
	return ok_status();
}

bool SqliteStore::open_outer()
{
	if (outer_open_)
		return true;
	outer_open_ = Use(begin_).step() == SQLITE_DONE;
	return outer_open_;
}

Status SqliteStore::end_batch()
{
	if (!outer_open_)
		return ok_status();
	outer_open_ = false;
	if (Use(commit_).step() == SQLITE_DONE)
		return ok_status();
	Error e = write_error("commit");
	Use(rollback_).step(); // SQLite may have rolled back already
	return e;
}

bool SqliteStore::changed_by_others()
{
	Use u(data_version_);
	if (u.step() != SQLITE_ROW)
		return false;
	int64_t v = u.i64(0);
	bool changed = data_version_seen_ >= 0 && v != data_version_seen_;
	data_version_seen_ = v;
	return changed;
}

bool SqliteStore::healthy()
{
	{
		Use u(health_);
		if (u.step() != SQLITE_ROW)
			return false;
	}
	if (!write_failed_)
		return true;
	// Degraded: once a second at most, and never inside a batch, try a
	// write that changes nothing (the schema version written again,
	// committed through the WAL), so that the store is seen to recover
	// when the fault clears even if no client writes.
	int64_t now = mono_us();
	if (outer_open_ || now - last_probe_us_ < 1000000)
		return false;
	last_probe_us_ = now;
	std::string probe = "BEGIN IMMEDIATE; PRAGMA user_version = " + std::to_string(kSchemaVersion) +
			    "; COMMIT";
	if (sqlite3_exec(db_.get(), probe.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK) {
		write_ok();
		return true;
	}
	if (!sqlite3_get_autocommit(db_.get()))
		sqlite3_exec(db_.get(), "ROLLBACK", nullptr, nullptr, nullptr);
	return false;
}

std::vector<std::pair<std::string, std::string>> SqliteStore::query_plans()
{
	std::vector<std::pair<std::string, std::string>> out;
	for (Stmt *st : all_) {
		std::string sql = st->sql();
		if (sql == "BEGIN IMMEDIATE" || sql == "COMMIT" || sql == "ROLLBACK" ||
		    sql.rfind("SAVEPOINT", 0) == 0 || sql.rfind("RELEASE", 0) == 0 ||
		    sql.rfind("ROLLBACK TO", 0) == 0)
			continue;
		sqlite3_stmt *s = nullptr;
		std::string plan;
		if (sqlite3_prepare_v2(db_.get(), ("EXPLAIN QUERY PLAN " + sql).c_str(), -1, &s,
				       nullptr) == SQLITE_OK) {
			while (sqlite3_step(s) == SQLITE_ROW)
				plan += reinterpret_cast<const char *>(sqlite3_column_text(s, 3)) +
					std::string("\n");
		}
		sqlite3_finalize(s);
		out.emplace_back(sql, plan);
	}
	return out;
}

} // namespace

std::vector<std::pair<std::string, std::string>> sqlite_query_plans(Store &store)
{
	auto *s = dynamic_cast<SqliteStore *>(&store);
	return s ? s->query_plans() : std::vector<std::pair<std::string, std::string>>();
}

Result<std::unique_ptr<Store>> open_sqlite_store(const SqliteOptions &opts)
{
	auto s = std::make_unique<SqliteStore>();
	if (auto st = s->open(opts); !st)
		return st.error();
	return std::unique_ptr<Store>(std::move(s));
}

} // namespace qc
