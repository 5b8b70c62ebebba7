// admin: the operator's subcommands (user, conversation, backup, restore,
// check, prune) on the configured database, while the server runs (WAL
// lets a second connection read and write beside it) or is stopped.
//
// AdminStore is the storage side, implemented next to the SQLite store
// (store_sqlite_admin.cpp); admin_main() is the command line, which never
// sees SQL.  Errors carry a message for the operator.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "qryptchat/config.hpp"
#include "qryptchat/store.hpp"

namespace qc {

struct UserInfo {
	User user;
	int64_t created_at = 0;    // ms
	int64_t updated_at = 0;    // ms
	int64_t conversations = 0; // current participations
};

struct MemberInfo {
	std::string user_id;
	std::string username;
	std::string role;              // "admin" or "member"
	int64_t joined_at = 0;         // ms
	std::optional<int64_t> left_at;
};

struct ConversationInfo {
	std::string id;
	std::string type;              // "direct" or "group"
	std::optional<std::string> name;
	std::string created_by;
	int64_t created_at = 0;
	int64_t updated_at = 0;
	int64_t messages = 0;          // stored messages (pruned ones not counted)
	int64_t last_seq = 0;
	int64_t participants = 0;      // current ones
	std::vector<MemberInfo> members; // filled by conversation() only, former ones too
};

struct CheckReport {
	int schema_version = 0;
	std::vector<std::string> problems; // integrity and foreign-key problems; empty: ok
	int64_t users = 0, conversations = 0, messages = 0;
	int64_t bytes = 0;                 // database file size
};

class AdminStore
{
public:
	virtual ~AdminStore() = default;
	virtual Result<std::vector<UserInfo>> users() = 0;
	virtual Result<std::optional<UserInfo>> user(const std::string &id) = 0;
	// Creates the user; false when it already existed (then unchanged).
	virtual Result<bool> add_user(const std::string &id, const ProfileHints &hints) = 0;
	// false when there is no such user.
	virtual Result<bool> set_disabled(const std::string &id, bool disabled) = 0;
	// Every conversation, or those `member` currently takes part in.
	virtual Result<std::vector<ConversationInfo>> conversations(const std::optional<std::string> &member) = 0;
	virtual Result<std::optional<ConversationInfo>> conversation(const std::string &id) = 0;
	// Group conversations only; the user must exist.
	virtual Status add_member(const std::string &conversation, const std::string &user) = 0;
	virtual Status remove_member(const std::string &conversation, const std::string &user) = 0;
	// A consistent copy of the live database in a new file (VACUUM INTO).
	virtual Status backup(const std::string &path) = 0;
	virtual Result<CheckReport> check() = 0;
	// Deletes messages created before `before_ms` (and their copies);
	// replies to them keep their text and lose the link.  Returns how many.
	virtual Result<int64_t> prune(int64_t before_ms) = 0;
};

// Opens an existing database of this schema version for administration.
Result<std::unique_ptr<AdminStore>> open_sqlite_admin(const std::string &path);

// Replaces the database at `path` by a copy of `backup` (checked first).
// Refused while another process (a running server) has `path` open.
Status sqlite_restore(const std::string &path, const std::string &backup);

// The subcommands: args[0] is the subcommand.  Prints to stdout/stderr;
// returns the exit status (0 done, 1 failed, 2 bad usage, 3 not found).
int admin_main(const Config &cfg, const std::vector<std::string> &args);
bool is_admin_command(const std::string &name);

} // namespace qc
