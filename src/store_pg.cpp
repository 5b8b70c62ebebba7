// store_pg: the Store on PostgreSQL through libpq's asynchronous API.
//
// Every call is one statement on one pooled connection: a prepared
// statement, or for a write the call of one of the functions of
// schema-postgres.sql, so that the call is one round trip and one
// transaction (autocommit), and is committed when the call returns.  The
// seq of a message, the idempotency key and the direct pair are guarded by
// the database itself (row lock, unique indexes), so any number of nodes
// may write at once.
//
// Nothing here blocks after open_postgres_store() except through the
// IoWait: connections are made with PQconnectStart/PQconnectPoll, queries
// sent with PQsendQueryPrepared on non-blocking connections, and results
// read with PQconsumeInput/PQisBusy/PQgetResult, waiting on the socket
// in between.  (Resolving a host name in PQconnectStart is the one
// exception libpq leaves: use a numeric hostaddr or a Unix socket where
// that matters.)
//
// Timeouts: each connection runs with statement_timeout = query_timeout_ms,
// so the server itself cancels (and rolls back) a statement that runs too
// long, and the call fails DATABASE_ERROR with the connection still
// usable.  Should the server not answer at all for a further grace period,
// the connection is dropped (never PQcancel, which blocks) and rebuilt by
// the next call that takes it; a write cut off that way may still have
// committed, as with any lost reply.
#include "qryptchat/store_pg.hpp"

#include <fcntl.h>
#include <libpq-fe.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "qryptchat/log.hpp"

extern "C" const char kSchemaPostgresSql[]; // schema-postgres.sql, compiled in by the Makefile

namespace qc {

namespace {

// The schema version this build writes (the row of qryptchat_schema).
constexpr int kPgSchemaVersion = 1;
// pg_advisory_xact_lock key held while the schema is checked and created,
// so that nodes starting at once on an empty database create it once.
// Any fixed number; this one spells "qrypchat" in ASCII.
constexpr const char *kSchemaLockKey = "8174729797241954676";
// How long past query_timeout_ms (which the server enforces itself) a
// silent server is waited for before its connection is dropped.
constexpr int64_t kGraceMs = 2000;

struct ConnCloser {
	void operator()(PGconn *c) const noexcept { PQfinish(c); }
};
struct ResultClearer {
	void operator()(PGresult *r) const noexcept { PQclear(r); }
};
using ConnPtr = std::unique_ptr<PGconn, ConnCloser>;
using ResPtr = std::unique_ptr<PGresult, ResultClearer>;

int64_t mono_ms()
{
	return mono_us() / 1000;
}

// The deadline `ms` from now, or -1 (none) when ms <= 0 (no limit).
int64_t deadline_in(int64_t ms)
{
	return ms > 0 ? mono_ms() + ms : -1;
}

// What is left of a deadline for IoWait::wait(): -1 for none, else >= 0.
int64_t left_of(int64_t deadline)
{
	return deadline < 0 ? -1 : std::max<int64_t>(0, deadline - mono_ms());
}

// libpq's messages end with a newline (sometimes several lines).
std::string one_line(const char *msg)
{
	std::string s = msg ? msg : "";
	while (!s.empty() && (s.back() == '\n' || s.back() == ' '))
		s.pop_back();
	for (char &ch : s)
		if (ch == '\n')
			ch = ' ';
	return s.empty() ? "unknown error" : s;
}

// The password written in a connection string, as text (key=value or
// URI form), found without parsing it: libpq's complaint about a string
// it cannot parse may quote any part of it.
std::string password_in(const std::string &dsn)
{
	size_t at = dsn.find("password=");
	if (at != std::string::npos) {
		size_t from = at + strlen("password=");
		if (from < dsn.size() && dsn[from] == '\'')
			return dsn.substr(from + 1, dsn.find('\'', from + 1) - from - 1);
		return dsn.substr(from, dsn.find_first_of(" \t&", from) - from);
	}
	size_t scheme = dsn.find("://");
	if (scheme == std::string::npos)
		return "";
	size_t user = scheme + 3, end = dsn.find('@', user), colon = dsn.find(':', user);
	if (end == std::string::npos || colon == std::string::npos || colon > end)
		return "";
	return dsn.substr(colon + 1, end - colon - 1);
}

// A message about the connection string with its password masked.
std::string mask_password(std::string msg, const std::string &dsn)
{
	std::string secret = password_in(dsn);
	if (secret.empty())
		return msg;
	for (size_t at; (at = msg.find(secret)) != std::string::npos;)
		msg.replace(at, secret.size(), "***");
	return msg;
}

// The target of a connection string for the operator: user@host:port/db,
// never the password.
std::string describe_dsn(const std::string &dsn)
{
	char *err = nullptr;
	PQconninfoOption *opts = PQconninfoParse(dsn.c_str(), &err);
	if (!opts) {
		std::string m = one_line(err);
		PQfreemem(err);
		return "(invalid connection string: " + mask_password(m, dsn) + ")";
	}
	std::string user, host, port, db;
	for (PQconninfoOption *o = opts; o->keyword; o++) {
		if (!o->val || !*o->val)
			continue;
		if (!strcmp(o->keyword, "user"))
			user = o->val;
		else if (!strcmp(o->keyword, "host") || (!strcmp(o->keyword, "hostaddr") && host.empty()))
			host = o->val;
		else if (!strcmp(o->keyword, "port"))
			port = o->val;
		else if (!strcmp(o->keyword, "dbname"))
			db = o->val;
	}
	PQconninfoFree(opts);
	std::string out;
	if (!user.empty())
		out += user + "@";
	out += host.empty() ? "localhost" : host;
	if (!port.empty())
		out += ":" + port;
	if (!db.empty())
		out += "/" + db;
	return out;
}

// A text[] literal: {"a","b"}, each element quoted, with its backslashes
// and double quotes escaped.
std::string text_array(const std::vector<std::string> &items)
{
	std::string out = "{";
	for (size_t i = 0; i < items.size(); i++) {
		if (i)
			out.push_back(',');
		out.push_back('"');
		for (char ch : items[i]) {
			if (ch == '"' || ch == '\\')
				out.push_back('\\');
			out.push_back(ch);
		}
		out.push_back('"');
	}
	out.push_back('}');
	return out;
}

// The parameters of one statement, in text format; NULL is nullptr.
class Params
{
public:
	Params &add(const std::string &v)
	{
		has_nul_ |= v.find('\0') != std::string::npos;
		vals_.emplace_back(v);
		return *this;
	}
	Params &add(const std::optional<std::string> &v)
	{
		if (v)
			return add(*v);
		vals_.emplace_back();
		return *this;
	}
	Params &add(int64_t v) { return add(std::to_string(v)); }
	int size() const { return static_cast<int>(vals_.size()); }
	// PostgreSQL text cannot hold a NUL (a JSON string may, as "\u0000"),
	// and libpq would pass the value cut at it: such a call is refused.
	bool has_nul() const { return has_nul_; }
	// Valid until the next add().
	const char *const *values() const
	{
		ptrs_.clear();
		for (const auto &v : vals_)
			ptrs_.push_back(v ? v->c_str() : nullptr);
		return ptrs_.data();
	}

private:
	std::vector<std::optional<std::string>> vals_;
	bool has_nul_ = false;
	mutable std::vector<const char *> ptrs_;
};

// Reading a result in text format.
class Rows
{
public:
	explicit Rows(const PGresult *r) : r_(r) {}
	int count() const { return PQntuples(r_); }
	bool null(int row, int col) const { return PQgetisnull(r_, row, col) != 0; }
	std::string text(int row, int col) const
	{
		return std::string(PQgetvalue(r_, row, col),
				   static_cast<size_t>(PQgetlength(r_, row, col)));
	}
	std::optional<std::string> opt_text(int row, int col) const
	{
		if (null(row, col))
			return std::nullopt;
		return text(row, col);
	}
	int64_t i64(int row, int col) const { return std::strtoll(PQgetvalue(r_, row, col), nullptr, 10); }
	std::optional<int64_t> opt_i64(int row, int col) const
	{
		if (null(row, col))
			return std::nullopt;
		return i64(row, col);
	}
	bool boolean(int row, int col) const { return PQgetvalue(r_, row, col)[0] == 't'; }

private:
	const PGresult *r_;
};

// The columns of a message as a viewer sees it ($1 is always the viewer),
// in the order of the qc_message_row type, then the message replied to.
#define MESSAGE_COLUMNS                                                                            \
	"m.id, m.conversation_id, m.seq, m.sender_id, m.message_type, "                            \
	"coalesce(mc.content, m.content), m.reply_to_id, m.metadata, m.client_message_id, "        \
	"m.created_at, m.edited_at, m.deleted_at, u.username, u.display_name, u.avatar_url, "      \
	"r.id, r.sender_id, coalesce(rc.content, r.content) "
#define MESSAGE_JOINS                                                                              \
	"FROM messages m JOIN users u ON u.id = m.sender_id "                                      \
	"LEFT JOIN message_copies mc ON mc.message_id = m.id AND mc.recipient_id = $1 "            \
	"LEFT JOIN messages r ON r.id = m.reply_to_id "                                            \
	"LEFT JOIN message_copies rc ON rc.message_id = r.id AND rc.recipient_id = $1 "

// Prepared on every connection once it is made (SQL PREPARE, all in one
// round trip).
const char kPrepareSql[] =
	"PREPARE user_upsert (text, text, text, text, text, text, bigint) AS "
	"SELECT id, username, display_name, email, avatar_url, disabled "
	"FROM qc_upsert_user($1, $2, $3, $4, $5, $6, $7);"
	"PREPARE user_get (text) AS "
	"SELECT id, username, display_name, email, avatar_url, disabled FROM users WHERE id = $1;"
	"PREPARE user_unknown (text[]) AS "
	"SELECT t.id FROM unnest($1) WITH ORDINALITY AS t (id, n) "
	"WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = t.id) ORDER BY t.n LIMIT 1;"
	"PREPARE part_check (text, text) AS "
	"SELECT 1 FROM participants WHERE conversation_id = $1 AND user_id = $2 AND left_at IS NULL;"
	"PREPARE part_ids (text) AS "
	"SELECT user_id FROM participants WHERE conversation_id = $1 AND left_at IS NULL "
	"ORDER BY joined_at, user_id;"
	"PREPARE conv_ids_of (text) AS "
	"SELECT conversation_id FROM participants WHERE user_id = $1 AND left_at IS NULL;"
	"PREPARE conv_create (text, text, text, text, text[], bigint, text) AS "
	"SELECT r.created, (r.v).* FROM qc_create_conversation($1, $2, $3, $4, $5, $6, $7) r;"
	"PREPARE conv_get (text, text) AS SELECT * FROM qc_conversation($1, $2);"
	"PREPARE conv_list (text) AS SELECT * FROM qc_conversations($1);"
	"PREPARE msg_insert (text, text, text, text, text, text, text, text, bigint, text[], text[]) AS "
	"SELECT r.created, (r.m).* "
	"FROM qc_insert_message($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) r;"
	"PREPARE msg_seq (text, text) AS "
	"SELECT seq FROM messages WHERE id = $1 AND conversation_id = $2;"
	"PREPARE page_newest (text, text, bigint) AS SELECT " MESSAGE_COLUMNS MESSAGE_JOINS
	"WHERE m.conversation_id = $2 ORDER BY m.seq DESC LIMIT $3;"
	"PREPARE page_before (text, text, bigint, bigint) AS SELECT " MESSAGE_COLUMNS MESSAGE_JOINS
	"WHERE m.conversation_id = $2 AND m.seq < $4 ORDER BY m.seq DESC LIMIT $3;"
	"PREPARE page_after (text, text, bigint, bigint) AS SELECT " MESSAGE_COLUMNS MESSAGE_JOINS
	"WHERE m.conversation_id = $2 AND m.seq > $4 ORDER BY m.seq ASC LIMIT $3;"
	"PREPARE mark_read (text, text, bigint) AS "
	"UPDATE participants SET last_read_seq = $3 "
	"WHERE conversation_id = $1 AND user_id = $2 AND last_read_seq < $3;"
	"PREPARE health AS SELECT 1;";

User read_user(const Rows &r, int row)
{
	User u;
	u.id = r.text(row, 0);
	u.username = r.text(row, 1);
	u.display_name = r.text(row, 2);
	u.email = r.opt_text(row, 3);
	u.avatar_url = r.opt_text(row, 4);
	u.disabled = r.boolean(row, 5);
	return u;
}

// A message from the columns of qc_message_row starting at `base`, and
// the message replied to when the row has its three columns.
MessageRow read_message(const Rows &r, int row, int base, bool with_reply)
{
	MessageRow m;
	m.id = r.text(row, base + 0);
	m.conversation_id = r.text(row, base + 1);
	m.seq = r.i64(row, base + 2);
	m.sender_id = r.text(row, base + 3);
	m.message_type = r.text(row, base + 4);
	m.content = r.opt_text(row, base + 5);
	m.reply_to_id = r.opt_text(row, base + 6);
	m.metadata = r.opt_text(row, base + 7);
	m.client_message_id = r.opt_text(row, base + 8);
	m.created_at = r.i64(row, base + 9);
	m.edited_at = r.opt_i64(row, base + 10);
	m.deleted_at = r.opt_i64(row, base + 11);
	m.sender.id = m.sender_id;
	m.sender.username = r.text(row, base + 12);
	m.sender.display_name = r.text(row, base + 13);
	m.sender.avatar_url = r.opt_text(row, base + 14);
	if (with_reply && !r.null(row, base + 15))
		m.reply_to = ReplyRef{r.text(row, base + 15), r.text(row, base + 16),
				      r.opt_text(row, base + 17)};
	return m;
}

// Conversations from the rows of qc_conversation (one per participant,
// those of one conversation consecutive) starting at column `base`.
std::vector<ConversationView> read_views(const Rows &r, int base)
{
	std::vector<ConversationView> out;
	for (int row = 0; row < r.count(); row++) {
		std::string id = r.text(row, base + 0);
		if (out.empty() || out.back().id != id) {
			ConversationView v;
			v.id = std::move(id);
			v.type = r.text(row, base + 1);
			v.name = r.opt_text(row, base + 2);
			v.avatar_url = r.opt_text(row, base + 3);
			v.created_by = r.text(row, base + 4);
			v.created_at = r.i64(row, base + 5);
			v.updated_at = r.i64(row, base + 6);
			if (!r.null(row, base + 7))
				v.latest = LatestMessage{r.text(row, base + 7), r.opt_text(row, base + 8),
							 r.text(row, base + 9), r.text(row, base + 10),
							 r.i64(row, base + 11)};
			v.unread_count = r.i64(row, base + 12);
			out.push_back(std::move(v));
		}
		if (!r.null(row, base + 13))
			out.back().participants.push_back(
				Participant{r.text(row, base + 13), r.text(row, base + 14),
					    r.text(row, base + 15), r.opt_text(row, base + 16),
					    r.text(row, base + 17)});
	}
	return out;
}

// The server's notices and warnings, and its FATAL message to an idle
// connection (at shutdown), go to our log rather than to stderr.
void log_notice(void *, const char *message) noexcept
{
	QC_INFO("store_notice message=%s", log_str(one_line(message)).c_str());
}

Error db_error()
{
	return make_error(Err::DatabaseError, "Database error");
}

class PgStore final : public Store
{
public:
	explicit PgStore(const PgOptions &opts);
	~PgStore() override;
	Status open();

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

private:
	// One connection of the pool.
	struct Slot {
		ConnPtr conn;      // nullptr: to be (re)connected by the next call taking it
		bool busy = false; // a call holds it (possibly suspended in the IoWait)
	};

	// Returns the slot to the pool when a call ends.
	class Lease
	{
	public:
		Lease(PgStore &s, size_t i) : s_(s), i_(i) {}
		~Lease() { s_.release(i_); }
		Lease(const Lease &) = delete;
		Lease &operator=(const Lease &) = delete;
		Slot &slot() { return s_.slots_[i_]; }

	private:
		PgStore &s_;
		size_t i_;
	};

	enum class Io { Ok, Timeout, Broken };

	// A new connection, ready for statements (non-blocking, statement
	// timeout set); without `prepare`, without the prepared statements.
	// Errors carry libpq's message for the operator.
	Result<ConnPtr> connect(bool prepare);
	// Sends what libpq has buffered, then reads every result of the
	// statement(s) sent into `out`, waiting through the IoWait.
	Io finish(PGconn *c, int64_t deadline_ms, std::vector<ResPtr> &out);
	// When a statement sent now is given up: the server's own timeout
	// plus kGraceMs, or -1 (never) without a timeout.
	int64_t query_deadline() const
	{
		return opts_.query_timeout_ms > 0 ? deadline_in(opts_.query_timeout_ms + kGraceMs) : -1;
	}
	// Runs SQL text (several statements allowed) by the simple protocol;
	// used at open only.  Errors carry PostgreSQL's message.
	Result<std::vector<ResPtr>> simple(PGconn *c, const char *sql, const char *what);
	Status apply_schema(PGconn *c);

	// The index of an idle slot, waiting (through the IoWait, on the
	// pool's pipe) while all are busy; nullopt when none frees in time.
	std::optional<size_t> acquire(int64_t deadline_ms);
	void release(size_t i);
	// Is this idle connection still alive?  Reads what the server sent
	// while idle (never blocking), such as its termination at shutdown.
	static bool usable(PGconn *c);

	// One prepared statement on a pooled connection: its result (tuples or
	// command), or DATABASE_ERROR, logged with the reason; INVALID_DATA,
	// without a round trip, when a parameter holds a NUL.
	Result<ResPtr> call(const char *op, const char *stmt, const Params &p);
	// A query of one text argument whose rows are single ids.
	Result<std::vector<std::string>> ids(const char *op, const char *stmt, const std::string &arg);
	// The database could (not) be reached; logged on a change only.
	void set_reachable(bool up, const char *op, const std::string &why);

	PgOptions opts_;
	IoWait *io_;
	std::string target_;      // describe_dsn(opts_.dsn), for messages
	std::vector<Slot> slots_; // never resized after open (calls hold references)
	int wake_[2] = {-1, -1};  // readable while a slot was freed for waiting calls
	int waiters_ = 0;         // calls waiting in acquire()
	bool reachable_ = true;   // the last round trip was answered (healthy() when all are busy)
};

PgStore::PgStore(const PgOptions &opts) : opts_(opts), io_(opts.io ? opts.io : &blocking_io_wait())
{
	if (opts_.connections < 1)
		opts_.connections = 1;
	target_ = describe_dsn(opts_.dsn);
}

PgStore::~PgStore()
{
	for (int fd : wake_)
		if (fd >= 0)
			::close(fd);
}

PgStore::Io PgStore::finish(PGconn *c, int64_t deadline_ms, std::vector<ResPtr> &out)
{
	auto left = [&]() { return left_of(deadline_ms); };
	if (PQsocket(c) < 0)
		return Io::Broken;
	for (;;) {
		int r = PQflush(c);
		if (r < 0)
			return Io::Broken;
		if (r == 0)
			break;
		if (!io_->wait(PQsocket(c), true, left()))
			return Io::Timeout;
		// The server may be waiting for us to read before it reads more.
		if (!PQconsumeInput(c))
			return Io::Broken;
	}
	for (;;) {
		if (!PQconsumeInput(c))
			return Io::Broken;
		while (!PQisBusy(c)) {
			PGresult *res = PQgetResult(c);
			if (!res)
				return PQstatus(c) == CONNECTION_BAD ? Io::Broken : Io::Ok;
			out.emplace_back(res);
		}
		if (!io_->wait(PQsocket(c), false, left()))
			return Io::Timeout;
	}
}

Result<ConnPtr> PgStore::connect(bool prepare)
{
	int64_t deadline = deadline_in(opts_.connect_timeout_ms);
	auto failed = [&](PGconn *c, const char *why) {
		return make_error(Err::DatabaseError,
				  "PostgreSQL " + target_ + ": cannot connect: " +
					  (why ? std::string(why)
					       : mask_password(one_line(c ? PQerrorMessage(c) : nullptr),
							       opts_.dsn)));
	};
	ConnPtr conn(PQconnectStart(opts_.dsn.c_str()));
	PGconn *c = conn.get();
	if (!c)
		return failed(c, "out of memory");
	if (PQstatus(c) == CONNECTION_BAD)
		return failed(c, nullptr);
	// As the libpq manual says: start as if PQconnectPoll had asked to write.
	PostgresPollingStatusType st = PGRES_POLLING_WRITING;
	while (st != PGRES_POLLING_OK) {
		if (st == PGRES_POLLING_FAILED)
			return failed(c, nullptr);
		int fd = PQsocket(c);
		if (fd < 0)
			return failed(c, nullptr);
		if (!io_->wait(fd, st == PGRES_POLLING_WRITING, left_of(deadline)))
			return failed(c, "timed out");
		st = PQconnectPoll(c);
	}
	if (PQsetnonblocking(c, 1) != 0)
		return failed(c, nullptr);
	PQsetNoticeProcessor(c, log_notice, nullptr);
	// The server cancels a statement that outlives the call's timeout, so
	// that a timed-out write is rolled back and the connection kept.
	std::string setup = "SET statement_timeout = " +
			    std::to_string(std::max<int64_t>(0, opts_.query_timeout_ms)) +
			    "; SET client_encoding = 'UTF8';";
	if (prepare)
		setup += kPrepareSql;
	auto r = simple(c, setup.c_str(), "cannot prepare the connection");
	if (!r)
		return r.error();
	return conn;
}

Result<std::vector<ResPtr>> PgStore::simple(PGconn *c, const char *sql, const char *what)
{
	std::vector<ResPtr> out;
	auto failed = [&](const std::string &why) {
		return make_error(Err::DatabaseError, "PostgreSQL " + target_ + ": " + what + ": " + why);
	};
	if (!PQsendQuery(c, sql))
		return failed(one_line(PQerrorMessage(c)));
	Io io = finish(c, query_deadline(), out);
	if (io == Io::Timeout)
		return failed("timed out");
	if (io == Io::Broken)
		return failed(one_line(PQerrorMessage(c)));
	for (const auto &r : out) {
		ExecStatusType s = PQresultStatus(r.get());
		if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK)
			return failed(one_line(PQresultErrorMessage(r.get())));
	}
	return out;
}

// Checks and creates the schema under an advisory lock held until COMMIT:
// a node that starts while another creates the schema waits, then finds it.
Status PgStore::apply_schema(PGconn *c)
{
	std::string lock = std::string("BEGIN; SELECT pg_advisory_xact_lock(") + kSchemaLockKey +
			   "); SELECT to_regclass('qryptchat_schema') IS NOT NULL";
	auto r = simple(c, lock.c_str(), "cannot read the schema version");
	if (!r)
		return r.error();
	int version = 0;
	if (Rows(r->back().get()).boolean(0, 0)) {
		auto v = simple(c, "SELECT max(version) FROM qryptchat_schema",
				"cannot read the schema version");
		if (!v)
			return v.error();
		Rows rows(v->back().get());
		version = rows.null(0, 0) ? 0 : static_cast<int>(rows.i64(0, 0));
	}
	if (version > kPgSchemaVersion)
		return make_error(Err::DatabaseError,
				  "PostgreSQL " + target_ + ": database schema version " +
					  std::to_string(version) +
					  " is newer than this qryptchatd supports (" +
					  std::to_string(kPgSchemaVersion) +
					  "); run a newer qryptchatd or restore a backup");
	// Version 0 → 1 creates everything from schema-postgres.sql; later
	// versions add their steps here, each in this same transaction.
	if (version == 0) {
		auto s = simple(c, kSchemaPostgresSql, "cannot create the schema");
		if (!s)
			return s.error();
	}
	auto done = simple(c, "COMMIT", "cannot create the schema");
	if (!done)
		return done.error();
	if (version == 0)
		QC_INFO("store_migrated database=%s from=0 to=%d", log_str(target_).c_str(),
			kPgSchemaVersion);
	return ok_status();
}

Status PgStore::open()
{
	if (::pipe2(wake_, O_NONBLOCK | O_CLOEXEC) != 0)
		return make_error(Err::DatabaseError, std::string("cannot create a pipe: ") + strerror(errno));
	slots_.resize(opts_.connections);
	// The first connection creates the schema before any statement is
	// prepared on it (they name its tables and functions).
	auto first = connect(false);
	if (!first)
		return first.error();
	if (auto st = apply_schema(first->get()); !st)
		return st;
	if (auto r = simple(first->get(), kPrepareSql, "cannot prepare statements"); !r)
		return r.error();
	slots_[0].conn = std::move(*first);
	for (size_t i = 1; i < slots_.size(); i++) {
		auto c = connect(true);
		if (!c)
			return c.error();
		slots_[i].conn = std::move(*c);
	}
	return ok_status();
}

std::optional<size_t> PgStore::acquire(int64_t deadline_ms)
{
	for (;;) {
		// A live connection first, so that idle ones are reused before a
		// broken one is reconnected.
		size_t pick = slots_.size();
		for (size_t i = 0; i < slots_.size(); i++) {
			if (slots_[i].busy)
				continue;
			if (slots_[i].conn) {
				pick = i;
				break;
			}
			if (pick == slots_.size())
				pick = i;
		}
		if (pick < slots_.size()) {
			slots_[pick].busy = true;
			return pick;
		}
		// Every connection is held by a suspended call: wait until one is
		// released (release() makes the pipe readable while anyone waits).
		int64_t left = left_of(deadline_ms);
		if (left == 0)
			return std::nullopt;
		waiters_++;
		bool woke = io_->wait(wake_[0], false, left);
		waiters_--;
		char buf[64];
		while (::read(wake_[0], buf, sizeof buf) > 0) {
		}
		if (!woke)
			return std::nullopt;
	}
}

void PgStore::release(size_t i)
{
	slots_[i].busy = false;
	if (waiters_ > 0) {
		char one = 1;
		if (::write(wake_[1], &one, 1) < 0) {
			// Full: the waiters are woken already.
		}
	}
}

bool PgStore::usable(PGconn *c)
{
	if (PQstatus(c) != CONNECTION_OK || PQtransactionStatus(c) != PQTRANS_IDLE)
		return false;
	// Non-blocking: takes what arrived, such as the FATAL message and the
	// end of the stream of a server that shut down; 0 when it is broken.
	// One read may return the message without seeing the end of the
	// stream, so it reads while the socket has more to give.
	for (int i = 0; i < 8; i++) {
		struct pollfd p = {PQsocket(c), POLLIN, 0};
		if (i > 0 && ::poll(&p, 1, 0) <= 0)
			break;
		if (!PQconsumeInput(c))
			return false;
	}
	return PQstatus(c) == CONNECTION_OK && !PQisBusy(c);
}

void PgStore::set_reachable(bool up, const char *op, const std::string &why)
{
	if (up == reachable_)
		return;
	reachable_ = up;
	if (up)
		QC_INFO("store_recovered database=%s", log_str(target_).c_str());
	else
		QC_WARN("store_unavailable op=%s reason=%s", op, log_str(why).c_str());
}

Result<ResPtr> PgStore::call(const char *op, const char *stmt, const Params &p)
{
	if (p.has_nul())
		return make_error(Err::InvalidData, "Text holds a NUL character");
	auto index = acquire(deadline_in(opts_.query_timeout_ms));
	if (!index) {
		QC_WARN("store_error op=%s reason=\"no free connection in time\"", op);
		return db_error();
	}
	Lease lease(*this, *index);
	Slot &slot = lease.slot();
	if (slot.conn && !usable(slot.conn.get()))
		slot.conn.reset();
	if (!slot.conn) {
		auto c = connect(true);
		if (!c) {
			set_reachable(false, op, c.error().message);
			return db_error();
		}
		slot.conn = std::move(*c);
	}
	PGconn *c = slot.conn.get();
	if (!PQsendQueryPrepared(c, stmt, p.size(), p.values(), nullptr, nullptr, 0)) {
		set_reachable(false, op, one_line(PQerrorMessage(c)));
		slot.conn.reset();
		return db_error();
	}
	std::vector<ResPtr> out;
	Io io = finish(c, query_deadline(), out);
	if (io != Io::Ok) {
		set_reachable(false, op,
			      io == Io::Timeout ? "no answer in time" : one_line(PQerrorMessage(c)));
		slot.conn.reset(); // its state is unknown: the next call reconnects
		return db_error();
	}
	set_reachable(true, op, "");
	if (out.size() != 1) {
		QC_WARN("store_error op=%s reason=\"%zu results\"", op, out.size());
		return db_error();
	}
	ExecStatusType s = PQresultStatus(out[0].get());
	if (s != PGRES_TUPLES_OK && s != PGRES_COMMAND_OK) {
		const char *state = PQresultErrorField(out[0].get(), PG_DIAG_SQLSTATE);
		QC_WARN("store_error op=%s sqlstate=%s reason=%s", op, state ? state : "-",
			log_str(one_line(PQresultErrorMessage(out[0].get()))).c_str());
		return db_error();
	}
	return std::move(out[0]);
}

Result<User> PgStore::upsert_user(const std::string &id, const ProfileHints &h)
{
	Params p;
	p.add(id).add(h.username).add(h.display_name).add(h.email).add(h.avatar_url);
	p.add("user_" + utf8_prefix(id, 8)).add(now_ms()); // characters, not bytes
	auto r = call("upsert_user", "user_upsert", p);
	if (!r)
		return r.error();
	Rows rows(r->get());
	if (rows.count() != 1)
		return db_error();
	return read_user(rows, 0);
}

Result<std::optional<User>> PgStore::get_user(const std::string &id)
{
	auto r = call("get_user", "user_get", Params().add(id));
	if (!r)
		return r.error();
	Rows rows(r->get());
	if (rows.count() == 0)
		return std::optional<User>();
	return std::optional<User>(read_user(rows, 0));
}

Result<std::optional<std::string>> PgStore::first_unknown_user(const std::vector<std::string> &ids)
{
	if (ids.empty())
		return std::optional<std::string>();
	auto r = call("first_unknown_user", "user_unknown", Params().add(text_array(ids)));
	if (!r)
		return r.error();
	Rows rows(r->get());
	if (rows.count() == 0)
		return std::optional<std::string>();
	return std::optional<std::string>(rows.text(0, 0));
}

Result<bool> PgStore::is_participant(const std::string &conversation, const std::string &user)
{
	auto r = call("is_participant", "part_check", Params().add(conversation).add(user));
	if (!r)
		return r.error();
	return Rows(r->get()).count() > 0;
}

Result<std::vector<std::string>> PgStore::ids(const char *op, const char *stmt, const std::string &arg)
{
	auto r = call(op, stmt, Params().add(arg));
	if (!r)
		return r.error();
	Rows rows(r->get());
	std::vector<std::string> out;
	for (int i = 0; i < rows.count(); i++)
		out.push_back(rows.text(i, 0));
	return out;
}

Result<std::vector<std::string>> PgStore::participant_ids(const std::string &conversation)
{
	return ids("participant_ids", "part_ids", conversation);
}

Result<std::vector<std::string>> PgStore::conversation_ids_of(const std::string &user)
{
	return ids("conversation_ids_of", "conv_ids_of", user);
}

Result<CreatedConversation> PgStore::create_conversation(const NewConversation &c)
{
	std::optional<std::string> direct_key;
	if (c.type == "direct" && c.members.size() == 1)
		direct_key = direct_conversation_key(c.creator, c.members[0]);
	Params p;
	p.add(c.id).add(c.type).add(c.name).add(c.creator).add(text_array(c.members)).add(c.now);
	p.add(direct_key);
	auto r = call("create_conversation", "conv_create", p);
	if (!r)
		return r.error();
	Rows rows(r->get());
	auto views = read_views(rows, 1);
	if (views.size() != 1)
		return db_error();
	CreatedConversation out;
	out.id = views[0].id;
	out.created = rows.boolean(0, 0);
	out.view = std::move(views[0]);
	return out;
}

Result<ConversationView> PgStore::conversation(const std::string &id, const std::string &viewer)
{
	auto r = call("conversation", "conv_get", Params().add(id).add(viewer));
	if (!r)
		return r.error();
	auto views = read_views(Rows(r->get()), 0);
	if (views.empty())
		return make_error(Err::AccessDenied, "Access denied to conversation");
	return std::move(views[0]);
}

Result<std::vector<ConversationView>> PgStore::conversations(const std::string &viewer)
{
	auto r = call("conversations", "conv_list", Params().add(viewer));
	if (!r)
		return r.error();
	return read_views(Rows(r->get()), 0);
}

Result<InsertedMessage> PgStore::insert_message(const NewMessage &m)
{
	std::vector<std::string> to, content;
	for (const auto &c : m.copies) {
		to.push_back(c.first);
		content.push_back(c.second);
	}
	Params p;
	p.add(m.id).add(m.conversation_id).add(m.sender_id).add(m.message_type).add(m.content);
	p.add(m.reply_to_id).add(m.metadata).add(m.client_message_id).add(m.now);
	p.add(text_array(to)).add(text_array(content));
	auto r = call("insert_message", "msg_insert", p);
	if (!r)
		return r.error();
	Rows rows(r->get());
	if (rows.count() == 0)
		return make_error(Err::UserNotFound, "Unknown sender");
	InsertedMessage out;
	out.created = rows.boolean(0, 0);
	out.message = read_message(rows, 0, 1, false); // reply_to: loads only
	return out;
}

Result<std::optional<int64_t>> PgStore::message_seq(const std::string &conversation,
						     const std::string &message_id)
{
	auto r = call("message_seq", "msg_seq", Params().add(message_id).add(conversation));
	if (!r)
		return r.error();
	Rows rows(r->get());
	if (rows.count() == 0)
		return std::optional<int64_t>();
	return std::optional<int64_t>(rows.i64(0, 0));
}

Result<Page> PgStore::load_messages(const PageQuery &q)
{
	const char *stmt = q.after_seq ? "page_after" : q.before_seq ? "page_before" : "page_newest";
	Params p;
	p.add(q.viewer).add(q.conversation_id).add(q.limit + 1);
	if (q.after_seq)
		p.add(*q.after_seq);
	else if (q.before_seq)
		p.add(*q.before_seq);
	auto r = call("load_messages", stmt, p);
	if (!r)
		return r.error();
	Rows rows(r->get());
	Page page;
	for (int i = 0; i < rows.count(); i++)
		page.messages.push_back(read_message(rows, i, 0, true));
	if (static_cast<int64_t>(page.messages.size()) > q.limit) {
		page.has_more = true;
		page.messages.pop_back();
	}
	if (!q.after_seq) // fetched newest first
		std::reverse(page.messages.begin(), page.messages.end());
	return page;
}

Status PgStore::mark_read(const std::string &conversation, const std::string &user, int64_t seq)
{
	auto r = call("mark_read", "mark_read", Params().add(conversation).add(user).add(seq));
	if (!r)
		return r.error();
	return ok_status();
}

bool PgStore::healthy()
{
	// With every connection held by a call, whether the last round trip
	// was answered is the freshest news there is (and waiting for a
	// connection would hold up /health behind the database).
	bool idle = std::any_of(slots_.begin(), slots_.end(), [](const Slot &s) { return !s.busy; });
	if (!idle)
		return reachable_;
	return call("healthy", "health", Params()).ok();
}

} // namespace

Result<std::unique_ptr<Store>> open_postgres_store(const PgOptions &opts)
{
	auto s = std::make_unique<PgStore>(opts);
	if (auto st = s->open(); !st)
		return st.error();
	return std::unique_ptr<Store>(std::move(s));
}

} // namespace qc
