-- qryptchatd database schema, version 1 (PRAGMA user_version = 1).
--
-- Applied by the server at start-up on an empty database; later versions
-- add numbered migrations in src/store_sqlite.cpp.  Times are integer
-- milliseconds since the Unix epoch (UTC).  Ids are text: users take the
-- JWT `sub`; conversations and messages get UUID v7 (time-ordered).

-- One row per user who ever authenticated (created from the token's sub
-- and profile hints, refreshed by later tokens).
CREATE TABLE users (
	id           TEXT PRIMARY KEY,          -- JWT sub, at most 128 bytes
	username     TEXT NOT NULL,
	display_name TEXT NOT NULL,
	email        TEXT,
	avatar_url   TEXT,
	disabled     INTEGER NOT NULL DEFAULT 0, -- 1: tokens refused at auth
	created_at   INTEGER NOT NULL,
	updated_at   INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE conversations (
	id          TEXT PRIMARY KEY,
	type        TEXT NOT NULL CHECK (type IN ('direct', 'group')),
	name        TEXT,                       -- groups only; NULL = no name
	avatar_url  TEXT,
	created_by  TEXT NOT NULL REFERENCES users (id),
	created_at  INTEGER NOT NULL,
	updated_at  INTEGER NOT NULL,           -- last activity: creation or newest message
	last_seq    INTEGER NOT NULL DEFAULT 0, -- seq of the newest message (0: none)
	-- direct conversations: "<smaller id>\n<larger id>", so that the pair
	-- has one conversation; NULL for groups
	direct_key  TEXT UNIQUE
);

-- Membership.  A participant who has left keeps the row with left_at set.
CREATE TABLE participants (
	conversation_id TEXT NOT NULL REFERENCES conversations (id),
	user_id         TEXT NOT NULL REFERENCES users (id),
	role            TEXT NOT NULL CHECK (role IN ('admin', 'member')),
	joined_at       INTEGER NOT NULL,
	left_at         INTEGER,
	last_read_seq   INTEGER NOT NULL DEFAULT 0, -- read mark: seq of the newest loaded message
	PRIMARY KEY (conversation_id, user_id)
) WITHOUT ROWID;
-- "conversations of a user" (load_conversations, presence)
CREATE INDEX participants_by_user ON participants (user_id, conversation_id);

CREATE TABLE messages (
	id                TEXT PRIMARY KEY,
	conversation_id   TEXT NOT NULL REFERENCES conversations (id),
	seq               INTEGER NOT NULL,     -- 1, 2, 3... per conversation, no gaps
	sender_id         TEXT NOT NULL REFERENCES users (id),
	message_type      TEXT NOT NULL CHECK (message_type IN ('text', 'image', 'file')),
	content           TEXT,                 -- NULL when sent as per-recipient copies
	reply_to_id       TEXT REFERENCES messages (id),
	metadata          TEXT,                 -- compact JSON object, or NULL
	client_message_id TEXT,                 -- sender's idempotency key, or NULL
	created_at        INTEGER NOT NULL,
	edited_at         INTEGER,
	deleted_at        INTEGER
);
-- history pages and the latest message, by position
CREATE UNIQUE INDEX messages_by_seq ON messages (conversation_id, seq);
-- idempotency: one message per (sender, key)
CREATE UNIQUE INDEX messages_by_client_id ON messages (sender_id, client_message_id)
	WHERE client_message_id IS NOT NULL;

-- Per-recipient copies (end-to-end encrypted content, one per reader).
CREATE TABLE message_copies (
	message_id   TEXT NOT NULL REFERENCES messages (id),
	recipient_id TEXT NOT NULL REFERENCES users (id),
	content      TEXT NOT NULL,
	PRIMARY KEY (message_id, recipient_id)
) WITHOUT ROWID;
