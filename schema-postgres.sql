-- qryptchatd database schema for PostgreSQL, version 1 (the row of
-- qryptchat_schema).
--
-- The same tables and meaning as schema.sql (the SQLite schema), for
-- several qryptchatd nodes sharing one database.  Applied by the server
-- (src/store_pg.cpp) at start-up, in one transaction holding an advisory
-- lock, to a database without qryptchat_schema; later versions add
-- numbered migrations there.  Times are bigint milliseconds since the Unix
-- epoch (UTC).  Ids are text: users take the JWT `sub`; conversations and
-- messages get UUID v7 (time-ordered).
--
-- Each write of the store is one statement, most of them a call of one of
-- the functions below: one round trip, one transaction, all or nothing.

-- The schema version, one row.  A database whose version is newer than
-- the server's is refused.
CREATE TABLE qryptchat_schema (
	one_row boolean PRIMARY KEY DEFAULT true CHECK (one_row),
	version integer NOT NULL
);

-- One row per user who ever authenticated (created from the token's sub
-- and profile hints, refreshed by later tokens).
CREATE TABLE users (
	id           text PRIMARY KEY,          -- JWT sub, at most 128 bytes
	username     text NOT NULL,
	display_name text NOT NULL,
	email        text,
	avatar_url   text,
	disabled     boolean NOT NULL DEFAULT false, -- true: tokens refused at auth
	created_at   bigint NOT NULL,
	updated_at   bigint NOT NULL
);

CREATE TABLE conversations (
	id          text PRIMARY KEY,
	type        text NOT NULL CHECK (type IN ('direct', 'group')),
	name        text,                       -- groups only; NULL = no name
	avatar_url  text,
	created_by  text NOT NULL REFERENCES users (id),
	created_at  bigint NOT NULL,
	updated_at  bigint NOT NULL,            -- last activity: creation or newest message
	-- seq of the newest message (0: none).  A writer increments it in the
	-- transaction that inserts the message: the row lock orders the
	-- writers of one conversation on every node, and a rollback gives the
	-- number back, so seqs have neither gaps nor duplicates.
	last_seq    bigint NOT NULL DEFAULT 0,
	-- direct conversations: "<smaller id>\n<larger id>" (each id with its
	-- backslashes and newlines escaped), so that the pair has one
	-- conversation; NULL for groups
	direct_key  text UNIQUE
);

-- Membership.  A participant who has left keeps the row with left_at set.
CREATE TABLE participants (
	conversation_id text NOT NULL REFERENCES conversations (id),
	user_id         text NOT NULL REFERENCES users (id),
	role            text NOT NULL CHECK (role IN ('admin', 'member')),
	joined_at       bigint NOT NULL,
	left_at         bigint,
	last_read_seq   bigint NOT NULL DEFAULT 0, -- read mark: seq of the newest loaded message
	PRIMARY KEY (conversation_id, user_id)
);
-- "conversations of a user" (load_conversations, presence)
CREATE INDEX participants_by_user ON participants (user_id, conversation_id);

CREATE TABLE messages (
	id                text PRIMARY KEY,
	conversation_id   text NOT NULL REFERENCES conversations (id),
	seq               bigint NOT NULL,      -- 1, 2, 3... per conversation, no gaps
	sender_id         text NOT NULL REFERENCES users (id),
	message_type      text NOT NULL CHECK (message_type IN ('text', 'image', 'file')),
	content           text,                 -- NULL when sent as per-recipient copies
	reply_to_id       text REFERENCES messages (id),
	metadata          text,                 -- compact JSON object, or NULL
	client_message_id text,                 -- sender's idempotency key, or NULL
	created_at        bigint NOT NULL,
	edited_at         bigint,
	deleted_at        bigint
);
-- history pages and the latest message, by position
CREATE UNIQUE INDEX messages_by_seq ON messages (conversation_id, seq);
-- idempotency: one message per (sender, key)
CREATE UNIQUE INDEX messages_by_client_id ON messages (sender_id, client_message_id)
	WHERE client_message_id IS NOT NULL;

-- Per-recipient copies (end-to-end encrypted content, one per reader).
CREATE TABLE message_copies (
	message_id   text NOT NULL REFERENCES messages (id),
	recipient_id text NOT NULL REFERENCES users (id),
	content      text NOT NULL,
	PRIMARY KEY (message_id, recipient_id)
);

-- Creates the user, or refreshes only the hints given (NULL: keep the
-- stored value); writes nothing when they are unchanged, so that
-- authentication stays read-only.  New users get p_fallback as username,
-- and the username as display name unless one is hinted.  Returns the row.
CREATE FUNCTION qc_upsert_user(p_id text, p_username text, p_display_name text, p_email text,
			       p_avatar_url text, p_fallback text, p_now bigint)
RETURNS SETOF users LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO users AS u (id, username, display_name, email, avatar_url, created_at, updated_at)
	VALUES (p_id, coalesce(p_username, p_fallback), coalesce(p_display_name, p_username, p_fallback),
		p_email, p_avatar_url, p_now, p_now)
	ON CONFLICT (id) DO UPDATE SET
		username = coalesce(p_username, u.username),
		display_name = coalesce(p_display_name, u.display_name),
		email = coalesce(p_email, u.email),
		avatar_url = coalesce(p_avatar_url, u.avatar_url),
		updated_at = p_now
	WHERE (p_username IS NOT NULL AND p_username IS DISTINCT FROM u.username)
	   OR (p_display_name IS NOT NULL AND p_display_name IS DISTINCT FROM u.display_name)
	   OR (p_email IS NOT NULL AND p_email IS DISTINCT FROM u.email)
	   OR (p_avatar_url IS NOT NULL AND p_avatar_url IS DISTINCT FROM u.avatar_url);
	-- A statement of its own, so with a snapshot of its own: it also sees
	-- the row when another node created it first.
	RETURN QUERY SELECT * FROM users WHERE id = p_id;
END
$$;

-- A conversation as p_viewer sees it: one row per current participant
-- (joined order), each repeating the conversation's columns, its latest
-- message and the viewer's unread count; one row with NULL participant
-- columns when nobody is left.  No row when p_viewer never took part.
CREATE TYPE qc_view_row AS (
	id text, type text, name text, avatar_url text, created_by text,
	created_at bigint, updated_at bigint,
	latest_id text, latest_content text, latest_sender_id text,
	latest_sender_username text, latest_created_at bigint,
	unread_count bigint,
	p_user_id text, p_username text, p_display_name text, p_avatar_url text,
	p_role text, p_joined_at bigint
);
CREATE FUNCTION qc_conversation(p_conv text, p_viewer text)
RETURNS SETOF qc_view_row LANGUAGE sql STABLE AS $$
	SELECT c.id, c.type, c.name, c.avatar_url, c.created_by, c.created_at, c.updated_at,
	       lm.id, lm.content, lm.sender_id, lm.username, lm.created_at,
	       CASE WHEN c.last_seq > me.last_read_seq THEN
			(SELECT count(*) FROM messages m
			 WHERE m.conversation_id = c.id AND m.seq > me.last_read_seq
			   AND m.sender_id <> $2)
		    ELSE 0 END,
	       pp.user_id, pp.username, pp.display_name, pp.avatar_url, pp.role, pp.joined_at
	FROM conversations c
	JOIN participants me ON me.conversation_id = c.id AND me.user_id = $2
	LEFT JOIN LATERAL (
		SELECT m.id, coalesce(mc.content, m.content) AS content, m.sender_id, u.username,
		       m.created_at
		FROM messages m JOIN users u ON u.id = m.sender_id
		LEFT JOIN message_copies mc ON mc.message_id = m.id AND mc.recipient_id = $2
		WHERE m.conversation_id = c.id AND m.seq = c.last_seq
		LIMIT 1) lm ON true -- LIMIT: kept a lookup by (conversation, seq)
	LEFT JOIN LATERAL (
		SELECT p.user_id, u.username, u.display_name, u.avatar_url, p.role, p.joined_at
		FROM participants p JOIN users u ON u.id = p.user_id
		WHERE p.conversation_id = c.id AND p.left_at IS NULL) pp ON true
	WHERE c.id = $1
	ORDER BY pp.joined_at, pp.user_id
$$;

-- p_viewer's current conversations, most recent activity first, in the
-- rows of qc_conversation.
CREATE FUNCTION qc_conversations(p_viewer text)
RETURNS SETOF qc_view_row
LANGUAGE sql STABLE AS $$
	SELECT v.*
	FROM participants me
	JOIN conversations c ON c.id = me.conversation_id
	CROSS JOIN LATERAL qc_conversation(c.id, $1) v
	WHERE me.user_id = $1 AND me.left_at IS NULL
	ORDER BY c.updated_at DESC, c.id DESC, v.p_joined_at, v.p_user_id
$$;

-- Creates a conversation, or for a direct one (p_direct_key not NULL)
-- returns the existing conversation of the pair, making both sides
-- participants again if one had left.  Two nodes creating the same pair
-- at once: the unique direct_key makes one insert wait for the other and
-- then do nothing, and both return the one conversation.  Returns the
-- creator's view (qc_conversation's rows), each row led by `created`.
CREATE FUNCTION qc_create_conversation(p_id text, p_type text, p_name text, p_creator text,
				       p_members text[], p_now bigint, p_direct_key text)
RETURNS TABLE (created boolean, v qc_view_row)
LANGUAGE plpgsql AS $$
DECLARE
	v_id text := p_id;
	v_created boolean := true;
BEGIN
	INSERT INTO conversations (id, type, name, created_by, created_at, updated_at, direct_key)
	VALUES (p_id, p_type, p_name, p_creator, p_now, p_now, p_direct_key)
	ON CONFLICT (direct_key) DO NOTHING;
	IF NOT FOUND THEN
		-- A new statement, so a new snapshot: it sees the pair's
		-- conversation even when another node committed it just now.
		SELECT c.id INTO STRICT v_id FROM conversations c WHERE c.direct_key = p_direct_key;
		v_created := false;
		-- In user id order: both sides of the pair lock the same rows in
		-- the same order, or two of these could deadlock.
		INSERT INTO participants AS p (conversation_id, user_id, role, joined_at)
		SELECT v_id, w, 'member', p_now FROM unnest(ARRAY[p_creator] || p_members) AS w
		ORDER BY w
		ON CONFLICT (conversation_id, user_id) DO UPDATE SET left_at = NULL
		WHERE p.left_at IS NOT NULL;
	ELSE
		INSERT INTO participants (conversation_id, user_id, role, joined_at)
		VALUES (p_id, p_creator, 'admin', p_now)
		ON CONFLICT (conversation_id, user_id) DO UPDATE SET left_at = NULL;
		INSERT INTO participants (conversation_id, user_id, role, joined_at)
		SELECT p_id, w, 'member', p_now FROM unnest(p_members) AS w
		ON CONFLICT (conversation_id, user_id) DO UPDATE SET left_at = NULL;
	END IF;
	RETURN QUERY SELECT v_created, r FROM qc_conversation(v_id, p_creator) r;
END
$$;

-- A message as p_viewer sees it (the viewer's copy, or the plain
-- content), with its sender's names; the columns that insert_message and
-- history pages share.
CREATE TYPE qc_message_row AS (
	id text, conversation_id text, seq bigint, sender_id text, message_type text,
	content text, reply_to_id text, metadata text, client_message_id text,
	created_at bigint, edited_at bigint, deleted_at bigint,
	sender_username text, sender_display_name text, sender_avatar_url text
);
CREATE FUNCTION qc_message_as(p_id text, p_viewer text)
RETURNS SETOF qc_message_row LANGUAGE sql STABLE AS $$
	SELECT m.id, m.conversation_id, m.seq, m.sender_id, m.message_type,
	       coalesce(mc.content, m.content), m.reply_to_id, m.metadata, m.client_message_id,
	       m.created_at, m.edited_at, m.deleted_at, u.username, u.display_name, u.avatar_url
	FROM messages m JOIN users u ON u.id = m.sender_id
	LEFT JOIN message_copies mc ON mc.message_id = m.id AND mc.recipient_id = $2
	WHERE m.id = $1
$$;

-- Stores a message and its copies (p_copy_to[i] gets p_copy_content[i])
-- with the conversation's next seq, and returns it as the sender sees it,
-- led by created = true.  A message already stored under (sender,
-- p_client_id) is returned instead with created = false, also when an
-- identical request on another connection commits first: its insert then
-- fails on messages_by_client_id, which undoes this one's seq too.
-- No row: the sender is no known user.  An unknown conversation raises.
-- The writes of a new message: the conversation's next seq (its row stays
-- locked to the end of the transaction, which serialises writers of one
-- conversation on every node), the message and its copies.
CREATE FUNCTION qc_store_message(p_id text, p_conv text, p_sender text, p_type text,
				 p_content text, p_reply_to text, p_metadata text,
				 p_client_id text, p_now bigint,
				 p_copy_to text[], p_copy_content text[])
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
	v_seq bigint;
BEGIN
	UPDATE conversations c SET last_seq = c.last_seq + 1,
		updated_at = greatest(c.updated_at, p_now)
	WHERE c.id = p_conv RETURNING c.last_seq INTO v_seq;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'no conversation %', p_conv USING ERRCODE = 'foreign_key_violation';
	END IF;
	INSERT INTO messages (id, conversation_id, seq, sender_id, message_type, content,
			      reply_to_id, metadata, client_message_id, created_at)
	VALUES (p_id, p_conv, v_seq, p_sender, p_type, p_content, p_reply_to, p_metadata,
		p_client_id, p_now);
	INSERT INTO message_copies (message_id, recipient_id, content)
	SELECT p_id, t.r, t.c FROM unnest(p_copy_to, p_copy_content) AS t(r, c);
END
$$;

CREATE FUNCTION qc_insert_message(p_id text, p_conv text, p_sender text, p_type text,
				  p_content text, p_reply_to text, p_metadata text,
				  p_client_id text, p_now bigint,
				  p_copy_to text[], p_copy_content text[])
RETURNS TABLE (created boolean, m qc_message_row)
LANGUAGE plpgsql AS $$
DECLARE
	v_old text;
BEGIN
	IF p_client_id IS NOT NULL THEN
		SELECT x.id INTO v_old FROM messages x
		WHERE x.sender_id = p_sender AND x.client_message_id = p_client_id;
		IF FOUND THEN
			RETURN QUERY SELECT false, r FROM qc_message_as(v_old, p_sender) r;
			RETURN;
		END IF;
	END IF;
	PERFORM 1 FROM users u WHERE u.id = p_sender;
	IF NOT FOUND THEN
		RETURN;
	END IF;
	-- Without a client id nothing can collide: no subtransaction (which
	-- an EXCEPTION block costs) on the common path.
	IF p_client_id IS NULL THEN
		PERFORM qc_store_message(p_id, p_conv, p_sender, p_type, p_content, p_reply_to,
					 p_metadata, p_client_id, p_now, p_copy_to, p_copy_content);
		RETURN QUERY SELECT true, r FROM qc_message_as(p_id, p_sender) r;
		RETURN;
	END IF;
	-- A racing twin on another connection: its row wins, ours (and the seq
	-- we took) is rolled back with the block, and the stored one returned.
	BEGIN
		PERFORM qc_store_message(p_id, p_conv, p_sender, p_type, p_content, p_reply_to,
					 p_metadata, p_client_id, p_now, p_copy_to, p_copy_content);
	EXCEPTION WHEN unique_violation THEN
		SELECT x.id INTO v_old FROM messages x
		WHERE x.sender_id = p_sender AND x.client_message_id = p_client_id;
		IF NOT FOUND THEN
			RAISE;
		END IF;
		RETURN QUERY SELECT false, r FROM qc_message_as(v_old, p_sender) r;
		RETURN;
	END;
	RETURN QUERY SELECT true, r FROM qc_message_as(p_id, p_sender) r;
END
$$;

INSERT INTO qryptchat_schema (version) VALUES (1);
