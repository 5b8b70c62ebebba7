// store: the durable state of the chat (users, conversations,
// participants, messages) behind an interface, so that handlers never see
// SQL and another backend (PostgreSQL) can be added without touching them.
//
// Contract of every write: it happens in one transaction; on failure the
// call returns DATABASE_ERROR and nothing of it is visible.  Reads return
// DATABASE_ERROR when the database cannot be read.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "qryptchat/auth.hpp"
#include "qryptchat/util.hpp"

namespace qc {

struct User {
	std::string id;                          // JWT sub
	std::string username;
	std::string display_name;
	std::optional<std::string> email;
	std::optional<std::string> avatar_url;
	bool disabled = false;
};

struct Participant {
	std::string user_id;
	std::string username;
	std::string display_name;
	std::optional<std::string> avatar_url;
	std::string role;                        // "admin" or "member"
};

// The newest message of a conversation, as one viewer sees it.
struct LatestMessage {
	std::string id;
	std::optional<std::string> content;      // the viewer's copy for per-recipient messages
	std::string sender_id;
	std::string sender_username;
	int64_t created_at = 0;                  // ms
};

// A conversation as one viewer sees it (load_conversations, pushes).
struct ConversationView {
	std::string id;
	std::string type;                        // "direct" or "group"
	std::optional<std::string> name;         // stored name (groups)
	std::optional<std::string> avatar_url;
	std::string created_by;
	int64_t created_at = 0;
	int64_t updated_at = 0;
	std::vector<Participant> participants;   // current ones, joined order
	std::optional<LatestMessage> latest;
	int64_t unread_count = 0;                // others' messages after the viewer's read mark
};

struct ReplyRef {
	std::string id;
	std::string sender_id;
	std::optional<std::string> content;      // the viewer's copy, or null
};

// A stored message as one viewer sees it.
struct MessageRow {
	std::string id;
	std::string conversation_id;
	int64_t seq = 0;
	std::string sender_id;
	std::string message_type;
	std::optional<std::string> content;      // plain content, or the viewer's copy, or null
	std::optional<std::string> reply_to_id;
	std::optional<std::string> metadata;     // compact JSON object text
	std::optional<std::string> client_message_id;
	int64_t created_at = 0;
	std::optional<int64_t> edited_at;
	std::optional<int64_t> deleted_at;
	User sender;                             // id, username, display_name, avatar_url
	std::optional<ReplyRef> reply_to;        // filled by loads only
};

struct NewConversation {
	std::string id;                          // fresh UUID v7 (unused when a direct one exists)
	std::string type;                        // "direct" or "group"
	std::optional<std::string> name;
	std::string creator;                     // becomes admin
	std::vector<std::string> members;        // the others, distinct, without the creator
	int64_t now = 0;
};

struct CreatedConversation {
	std::string id;
	bool created = false;                    // false: an existing direct conversation
	ConversationView view;                   // as the creator sees it
};

struct NewMessage {
	std::string id;                          // fresh UUID v7
	std::string conversation_id;
	std::string sender_id;
	std::string message_type;
	std::optional<std::string> content;      // exactly one of content and copies
	std::vector<std::pair<std::string, std::string>> copies; // recipient → content
	std::optional<std::string> reply_to_id;  // already checked to exist in the conversation
	std::optional<std::string> metadata;
	std::optional<std::string> client_message_id;
	int64_t now = 0;
};

struct InsertedMessage {
	MessageRow message;                      // as the sender sees it
	bool created = false;                    // false: idempotent replay of client_message_id
};

struct PageQuery {
	std::string conversation_id;
	std::string viewer;
	int64_t limit = 50;
	std::optional<int64_t> before_seq;       // messages with seq < before_seq, newest first
	std::optional<int64_t> after_seq;        // messages with seq > after_seq, oldest first
};

struct Page {
	std::vector<MessageRow> messages;        // ascending seq
	bool has_more = false;
};

// The key that makes a direct conversation unique, in every backend: the
// two user ids in order, joined by a newline.  User ids are token subs and
// may hold a newline themselves, so each id's backslashes and newlines are
// escaped first: otherwise the pairs ("a", "b\nc") and ("a\nb", "c") would
// share a key, and asking for the second would reopen the first.  An id
// with neither character keys as it always did.
std::string direct_conversation_key(const std::string &x, const std::string &y);

class Store
{
public:
	virtual ~Store() = default;

	// Creates the user or refreshes the hints given (absent hints keep the
	// stored values).  New users get username "user_" + sub[0..8) and
	// display_name = username unless hinted.
	virtual Result<User> upsert_user(const std::string &id, const ProfileHints &hints) = 0;
	virtual Result<std::optional<User>> get_user(const std::string &id) = 0;
	// The first id of `ids` that is no known user, or nullopt when all are.
	virtual Result<std::optional<std::string>> first_unknown_user(const std::vector<std::string> &ids) = 0;

	// Is `user` a current (not left) participant of `conversation`?
	virtual Result<bool> is_participant(const std::string &conversation, const std::string &user) = 0;
	// Current participants' ids.
	virtual Result<std::vector<std::string>> participant_ids(const std::string &conversation) = 0;
	// Ids of the user's current conversations.
	virtual Result<std::vector<std::string>> conversation_ids_of(const std::string &user) = 0;

	// Creates a conversation, or for a direct one returns the existing
	// conversation of the same pair; with the creator's view, read in the
	// same transaction (so a caller is never told of a failure for a
	// conversation that exists).
	virtual Result<CreatedConversation> create_conversation(const NewConversation &c) = 0;
	virtual Result<ConversationView> conversation(const std::string &id, const std::string &viewer) = 0;
	// The viewer's current conversations, most recent activity first.
	virtual Result<std::vector<ConversationView>> conversations(const std::string &viewer) = 0;

	// Stores a message and its copies with the next seq, or returns the
	// message already stored under (sender, client_message_id).
	virtual Result<InsertedMessage> insert_message(const NewMessage &m) = 0;
	// The seq of a message of this conversation, nullopt if there is none.
	virtual Result<std::optional<int64_t>> message_seq(const std::string &conversation,
							   const std::string &message_id) = 0;
	// One history page.
	virtual Result<Page> load_messages(const PageQuery &q) = 0;
	// Moves the viewer's read mark forward to `seq` (never backwards).
	virtual Status mark_read(const std::string &conversation, const std::string &user, int64_t seq) = 0;

	// Can the database be read right now? (for /health)
	virtual bool healthy() = 0;

	// Has another process (the admin subcommands) committed a change
	// since the last call?  Cheap enough to ask every second.
	virtual bool changed_by_others() { return false; }

	// Group commit.  After begin_batch(), the writes of successive calls
	// may share one transaction, each still all-or-nothing on its own;
	// none is durable, or visible to other database connections, until
	// end_batch() returns ok.  A failed end_batch() undoes every write of
	// the batch.  The server opens a batch for each loop turn and ends it
	// before any reply or push of that turn leaves the process, so that
	// nothing is acknowledged before it is committed.  Without a batch
	// every call commits by itself.
	virtual void begin_batch() {}
	virtual bool batch_has_writes() const { return false; }
	virtual Status end_batch() { return ok_status(); }
};

} // namespace qc
