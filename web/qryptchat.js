/**
 * qryptchat.js: the browser client of qryptchatd, the QryptChat WebSocket
 * Chat API (docs/PROTOCOL.md).  One ES module, no dependencies, no build step.
 *
 *   import { wsChat, messages } from './qryptchat.js';
 *   await wsChat.connect(token);            // ws(s)://<page host>/ws
 *   const [c] = await wsChat.loadConversations();
 *   await wsChat.joinConversation(c.id);     // receive the room's pushes
 *   await wsChat.loadMessages(c.id);         // the newest page
 *   const r = await wsChat.sendMessage(c.id, 'hello');  // {success, data | error}
 *   // Svelte: {#each $messages[c.id] ?? [] as m (m.id)} ... {/each}
 *
 * wsChat is the default client; createChatClient(options) makes more, with
 * options url, WebSocket and the times of DEFAULTS.  A client is a Svelte
 * store: subscribe(fn) calls fn at once and on every change with the state,
 * and returns the unsubscribe function; getState() returns it.  The state:
 *
 *   connected           the socket is open
 *   authenticated       the server accepted the token; requests may be sent
 *   user                {id, username, display_name, email, avatar_url} or null
 *   conversations       Conversation objects (PROTOCOL.md §5), as loaded, plus
 *                       those created since; a new message moves its
 *                       conversation to the front
 *   activeConversation  the id last given to joinConversation, or null
 *   messages            {[conversationId]: Message[]}: each array in ascending
 *                       seq, each id once.  A key exists once the conversation
 *                       was loaded (then possibly []) or got a message.
 *   typingUsers         {[conversationId]: [{userId, username}]}: the others
 *                       typing, in the order they started
 *   onlineUsers         {[conversationId]: [userId]}, for joined conversations
 *   loading             a load request is in flight
 *   error               the message of the last error, or null
 *
 * The readables conversations, messages, typingUsers, onlineUsers,
 * isConnected, isAuthenticated, currentUser and chatError (exported for
 * wsChat, and properties of every client) hold one field each and call
 * their subscribers only when it changes.  State objects are never mutated:
 * a changed field is a new object.
 *
 * Methods that send a request resolve as their JSDoc says, or reject with
 * a ChatError whose .code is the server's error code or one of NOT_CONNECTED, TIMEOUT
 * (no reply within 30 s) and DISCONNECTED (the connection ended first).
 * sendMessage never rejects: it resolves {success: true, data: Message} or
 * {success: false, error, code}.
 *
 * A lost connection is reopened after 1 s, 2 s, 4 s ... up to 30 s (each
 * delay between half and all of that, at random), without limit, until
 * disconnect().  After reconnecting the client authenticates again, reloads
 * the conversations if they had been loaded, joins the conversations it had
 * joined, and fetches the messages it missed (load_messages with afterSeq).
 * It stops retrying when the server refuses the token or closes with 4001
 * (token expired): connect() again with a fresh one.  To renew a token
 * before it expires, call authenticate() with the new one.
 *
 * Debug logging (never of tokens): localStorage['websocket-debug'] = 'true'.
 */

const OPEN = 1; // WebSocket.OPEN
const TOKEN_ERRORS = ['MISSING_TOKEN', 'INVALID_TOKEN', 'TOKEN_EXPIRED'];
const NO_OBJECT = Object.freeze({});
const NO_LIST = Object.freeze([]);
const INITIAL = Object.freeze({
	connected: false,
	authenticated: false,
	user: null,
	conversations: NO_LIST,
	activeConversation: null,
	messages: NO_OBJECT,
	typingUsers: NO_OBJECT,
	onlineUsers: NO_OBJECT,
	loading: false,
	error: null
});

/** Times in milliseconds, and a page size; each can be set per client. */
export const DEFAULTS = Object.freeze({
	requestTimeout: 30000, // a request without a reply fails with TIMEOUT
	typingIdle: 3000, // setTyping: typing_stop after this long without a call
	typingRefresh: 2000, // setTyping: typing_start again this often (server forgets after 5 s)
	typingExpiry: 6000, // someone typing is dropped after this long without news
	reconnectBase: 1000, // first reconnection delay, doubled at each failure...
	reconnectMax: 30000, // ...up to this
	retryDelay: 1000, // wait before repeating a request refused with RATE_LIMITED
	catchUpLimit: undefined // page size of the catch-up after a reconnect (server's default)
});

/** The error of a failed request: .code is the server's code or a client one. */
export class ChatError extends Error {
	constructor(message, code) {
		super(message);
		this.name = 'ChatError';
		this.code = code;
	}
}

function debugEnabled() {
	try {
		return globalThis.localStorage?.['websocket-debug'] === 'true';
	} catch {
		return false; // storage can be forbidden (sandboxed frames)
	}
}

function debug(...args) {
	if (debugEnabled()) console.debug('[qryptchat]', ...args);
}

function defaultUrl() {
	const loc = globalThis.location;
	if (!loc?.host) return null;
	return `${loc.protocol === 'https:' ? 'wss' : 'ws'}://${loc.host}/ws`;
}

const bySeq = (a, b) => a.seq - b.seq || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);

// `list` plus the messages of `incoming` whose id it lacks, in seq order;
// `list` itself when nothing is new.
function mergeMessages(list, incoming) {
	const ids = new Set(list.map((m) => m.id));
	const fresh = incoming.filter((m) => m?.id != null && !ids.has(m.id) && ids.add(m.id));
	return fresh.length ? [...list, ...fresh].sort(bySeq) : list;
}

// The seq up to which `list` is gapless from its first message; 0 if empty.
function contiguousEnd(list) {
	let i = 0;
	while (i + 1 < list.length && list[i + 1].seq === list[i].seq + 1) i++;
	return list.length ? list[i].seq : 0;
}

// The newest gapless run of `list`.
function newestRun(list) {
	let i = list.length - 1;
	while (i > 0 && list[i - 1].seq === list[i].seq - 1) i--;
	return i > 0 ? list.slice(i) : list;
}

const conversationId = (c) => c.id ?? c.conversation_id;

function without(obj, key) {
	if (!(key in obj)) return obj;
	const { [key]: _, ...rest } = obj;
	return rest;
}

/**
 * Makes an independent client.
 * @param {object} [options] url (string, or a function called at each
 *   connection attempt), WebSocket (the implementation; default the global
 *   one), and any of DEFAULTS.
 * @returns {object} a client with the methods and readables of wsChat.
 */
export function createChatClient(options = {}) {
	const opt = { ...DEFAULTS, ...options };
	let state = INITIAL;
	const subscribers = new Set();
	let emitting = false;
	let again = false;

	let ws = null; // the current socket
	let WS = null; // the WebSocket implementation
	let urlSource = null;
	let token = null;
	let wanted = false; // a connection is wanted: reconnect when it is lost
	let attempts = 0; // failed attempts since the last success
	let retryTimer = null;
	let waiter = null; // {resolve, reject} of connect()
	let session = 0; // bumped by connect() and disconnect()
	let conversationsLoaded = false;
	let loads = 0;
	let lastId = 0;
	const idPrefix = Math.random().toString(36).slice(2, 10);
	const pending = new Map(); // requestId -> {resolve, reject, timer}
	const joined = new Set(); // conversations joined, to join again on reconnect
	const catching = new Map(); // conversationId -> running catch-up
	const ownTyping = new Map(); // conversationId -> {sentAt, timer} of setTyping
	const othersTyping = new Map(); // conversationId + '\n' + userId -> expiry timer

	// ---- the store ------------------------------------------------------

	/**
	 * The Svelte store contract: calls fn(state) now and after every change.
	 * @param {(state: object) => void} fn
	 * @returns {() => void} unsubscribe
	 */
	function subscribe(fn) {
		const sub = { fn };
		subscribers.add(sub);
		fn(state);
		return () => {
			subscribers.delete(sub);
		};
	}

	// Calls the subscribers; a change made by one of them restarts the
	// round, so that every subscriber ends with the latest state.
	function emit() {
		if (emitting) {
			again = true;
			return;
		}
		emitting = true;
		try {
			do {
				again = false;
				for (const sub of [...subscribers]) {
					if (!subscribers.has(sub)) continue;
					try {
						sub.fn(state);
					} catch (e) {
						queueMicrotask(() => {
							throw e;
						});
					}
					if (again) break;
				}
			} while (again);
		} finally {
			emitting = false;
		}
	}

	function setState(patch) {
		if (Object.keys(patch).every((k) => state[k] === patch[k])) return;
		state = { ...state, ...patch };
		emit();
	}

	// A readable of one state field, calling fn only when the field changes.
	function readable(field) {
		return {
			subscribe(fn) {
				let last = readable; // no value yet
				return subscribe((s) => {
					if (s[field] !== last) fn((last = s[field]));
				});
			}
		};
	}

	// ---- the connection -------------------------------------------------

	function open() {
		retryTimer = null;
		let sock;
		try {
			const url = typeof urlSource === 'function' ? urlSource() : urlSource;
			debug('connecting to', String(url).split('?')[0]);
			sock = new WS(url);
		} catch (e) {
			lost(null, e);
			return;
		}
		ws = sock;
		sock.onopen = () => ws === sock && opened(sock);
		sock.onmessage = (ev) => ws === sock && receive(ev.data);
		sock.onclose = (ev) => ws === sock && lost(ev);
		sock.onerror = () => debug('socket error'); // a close event follows
	}

	async function opened(sock) {
		debug('open');
		setState({ connected: true });
		try {
			await authenticate(token);
		} catch (e) {
			if (ws !== sock) return;
			if (TOKEN_ERRORS.includes(e.code)) wanted = false; // retrying cannot help
			ws = null;
			sock.close(1000);
			lost(null, e);
			return;
		}
		if (ws !== sock) return;
		attempts = 0;
		waiter?.resolve(state.user);
		waiter = null;
		resume(sock);
	}

	function lost(ev, err) {
		ws = null;
		const code = ev?.code;
		const why = err?.message || ev?.reason || `Connection closed (${code ?? 'failed'})`;
		debug('closed:', code, why);
		failPending(new ChatError('Connection lost', 'DISCONNECTED'));
		resetTyping();
		setState({
			connected: false,
			authenticated: false,
			typingUsers: NO_OBJECT,
			onlineUsers: NO_OBJECT,
			error: why
		});
		waiter?.reject(err instanceof ChatError ? err : new ChatError(why, 'DISCONNECTED'));
		waiter = null;
		if (code === 4001) wanted = false; // token expired: a fresh one is needed
		if (!wanted) return;
		const step = Math.min(opt.reconnectMax, opt.reconnectBase * 2 ** Math.min(attempts, 30));
		const delay = step / 2 + (Math.random() * step) / 2;
		attempts++;
		debug(`reconnecting in ${Math.round(delay)} ms (attempt ${attempts})`);
		retryTimer = setTimeout(open, delay);
	}

	// After a reconnection: the conversations and rooms as they were, and
	// the messages missed meanwhile.  A failure here waits for the next
	// reconnection, or for the next push that shows a gap.
	async function resume(sock) {
		try {
			if (conversationsLoaded) await loadConversations();
			for (const id of [...joined]) {
				if (ws !== sock) return;
				try {
					await join(id, true);
				} catch (e) {
					if (e.code !== 'ACCESS_DENIED') throw e;
					joined.delete(id); // no longer a participant
				}
			}
		} catch (e) {
			debug('resume failed:', e.code, e.message);
		}
	}

	function failPending(err) {
		for (const req of pending.values()) {
			clearTimeout(req.timer);
			req.reject(err);
		}
		pending.clear();
	}

	function request(type, payload = {}, needAuth = true) {
		return new Promise((resolve, reject) => {
			const sock = ws;
			const ready = sock?.readyState === OPEN && (state.authenticated || !needAuth);
			if (!ready) {
				reject(new ChatError('Not connected', 'NOT_CONNECTED'));
				return;
			}
			const requestId = `${idPrefix}-${++lastId}`;
			const timer = setTimeout(() => {
				pending.delete(requestId);
				reject(new ChatError(`No reply to ${type} in time`, 'TIMEOUT'));
			}, opt.requestTimeout);
			pending.set(requestId, { resolve, reject, timer });
			debug('->', type, requestId);
			const timestamp = new Date().toISOString();
			sock.send(JSON.stringify({ type, payload, requestId, timestamp }));
		});
	}

	// request(), repeated after retryDelay while refused with RATE_LIMITED.
	async function patientRequest(type, payload) {
		for (let tries = 1; ; tries++) {
			try {
				return await request(type, payload);
			} catch (e) {
				if (e.code !== 'RATE_LIMITED' || tries >= 10) throw e;
				await new Promise((r) => setTimeout(r, opt.retryDelay));
			}
		}
	}

	function receive(data) {
		let msg;
		try {
			msg = JSON.parse(typeof data === 'string' ? data : String(data));
		} catch {
			debug('ignored a frame that is not JSON');
			return;
		}
		if (typeof msg?.type !== 'string') return;
		const payload = msg.payload && typeof msg.payload === 'object' ? msg.payload : {};
		const id = msg.type === 'error' ? (payload.requestId ?? msg.requestId) : msg.requestId;
		const req = pending.get(id);
		debug('<-', msg.type, msg.requestId);
		if (req) {
			pending.delete(id);
			clearTimeout(req.timer);
			if (msg.type !== 'error') req.resolve(payload);
			else req.reject(new ChatError(payload.error || 'Failed', payload.code || 'SERVER_ERROR'));
		} else if (pushes[msg.type]) {
			pushes[msg.type](payload);
		}
	}

	const pushes = {
		message_received: (p) =>
			p.message && addMessages(p.message.conversation_id, [p.message], { live: true }),
		typing_update: (p) => othersTypingUpdate(p.conversationId, p.userId, p.username, p.isTyping),
		user_online: (p) => setOnline(p.conversationId, p.userId, true),
		user_offline: (p) => setOnline(p.conversationId, p.userId, false),
		conversation_created: (p) => p.conversation && addConversation(p.conversation)
	};

	// ---- state updates --------------------------------------------------

	// Merges messages of conversation `id`.  `latest`: a newest page, which
	// replaces a stale run it does not join.  `live`: a new message, which
	// moves its conversation to the front and, after a gap, fetches what
	// lies between.
	function addMessages(id, incoming, { latest = false, live = false } = {}) {
		const before = state.messages[id];
		let next = mergeMessages(before ?? [], incoming);
		if (latest) next = newestRun(next);
		if (next !== before) setState({ messages: { ...state.messages, [id]: next } });
		if (!live) return;
		for (const m of incoming) touchConversation(m);
		const known = before?.length ? before[before.length - 1].seq : 0;
		if (before && incoming.some((m) => m.seq > known + 1) && !catching.has(id))
			catchUp(id, known).catch((e) => debug('catch-up failed:', e.code, e.message));
	}

	// Fetches the messages after seq `after` (by default the end of the
	// loaded run) until the server has no more.
	function catchUp(id, after = contiguousEnd(state.messages[id] ?? [])) {
		if (catching.has(id)) return catching.get(id);
		const run = (async () => {
			for (;;) {
				const page = await patientRequest('load_messages', {
					conversationId: id,
					afterSeq: after,
					limit: opt.catchUpLimit
				});
				const got = page.messages ?? [];
				addMessages(id, got);
				if (!page.hasMore || !got.length) return;
				after = got[got.length - 1].seq;
			}
		})().finally(() => catching.get(id) === run && catching.delete(id));
		catching.set(id, run);
		return run;
	}

	function touchConversation(m) {
		const list = state.conversations;
		const i = list.findIndex((c) => conversationId(c) === m.conversation_id);
		const c = list[i];
		const newest = c?.latest_message_created_at;
		if (!c || (newest && m.created_at < newest)) return;
		const updated = {
			...c,
			latest_message_id: m.id,
			latest_message_content: m.encrypted_content,
			latest_message_sender_id: m.sender_id,
			latest_message_sender_username: m.sender?.username ?? null,
			latest_message_created_at: m.created_at,
			last_message_at: m.created_at,
			updated_at: m.created_at
		};
		setState({ conversations: [updated, ...list.slice(0, i), ...list.slice(i + 1)] });
	}

	function addConversation(c) {
		const id = conversationId(c);
		const rest = state.conversations.filter((x) => conversationId(x) !== id);
		setState({ conversations: [c, ...rest] });
	}

	function setOnline(id, userId, online) {
		const list = state.onlineUsers[id] ?? [];
		if (!id || list.includes(userId) === online) return;
		const next = online ? [...list, userId] : list.filter((u) => u !== userId);
		setState({ onlineUsers: { ...state.onlineUsers, [id]: next } });
	}

	function othersTypingUpdate(id, userId, username, isTyping) {
		if (!id || !userId || userId === state.user?.id) return;
		const key = `${id}\n${userId}`;
		clearTimeout(othersTyping.get(key));
		othersTyping.delete(key);
		const list = state.typingUsers[id] ?? [];
		const present = list.some((u) => u.userId === userId);
		let next = list;
		if (isTyping) {
			othersTyping.set(
				key,
				setTimeout(() => othersTypingUpdate(id, userId, null, false), opt.typingExpiry)
			);
			if (!present) next = [...list, { userId, username: username ?? null }];
		} else if (present) {
			next = list.filter((u) => u.userId !== userId);
		}
		if (next === list) return;
		const all = next.length ? { ...state.typingUsers, [id]: next } : without(state.typingUsers, id);
		setState({ typingUsers: all });
	}

	function resetTyping() {
		for (const t of ownTyping.values()) clearTimeout(t.timer);
		ownTyping.clear();
		for (const timer of othersTyping.values()) clearTimeout(timer);
		othersTyping.clear();
	}

	// Runs a public operation: `loading` while a load is in flight, `error`
	// set when it fails (unless the session ended meanwhile).
	async function guarded(work, load = false) {
		const mine = session;
		if (load) setState({ loading: ++loads > 0 });
		try {
			return await work();
		} catch (e) {
			if (mine === session) setState({ error: e.message });
			throw e;
		} finally {
			if (load && mine === session) setState({ loading: --loads > 0 });
		}
	}

	async function join(id, resync) {
		const reply = await patientRequest('join_conversation', { conversationId: id });
		joined.add(id);
		setState({ onlineUsers: { ...state.onlineUsers, [id]: reply.onlineUsers ?? [] } });
		if (resync && state.messages[id]) await catchUp(id);
		return reply;
	}

	async function load(type, id, payload, latest) {
		const page = await request(type, { conversationId: id, ...payload });
		addMessages(id, page.messages ?? [], { latest });
		return page;
	}

	// ---- the public API -------------------------------------------------

	/**
	 * Opens the connection and authenticates; closes any previous one
	 * first (as disconnect() does).
	 * @param {string} newToken an HS256 JWT (PROTOCOL.md §4)
	 * @param {{url?: string | (() => string), WebSocket?: Function}} [how]
	 *   url: default from the client's options, else ws(s)://<location.host>/ws
	 *   in a browser; WebSocket: the implementation (needed in Node 20).
	 * @returns {Promise<object>} the user, once authenticated.  Rejects if
	 *   the first attempt fails; unless the token was refused, the client
	 *   keeps trying in the background until disconnect().
	 */
	function connect(newToken, how = {}) {
		disconnect();
		WS = how.WebSocket ?? opt.WebSocket ?? globalThis.WebSocket;
		urlSource = how.url ?? opt.url ?? defaultUrl();
		const missing = !WS ? 'a WebSocket implementation' : !urlSource ? 'a url' : null;
		if (missing) return Promise.reject(new ChatError(`No ${missing}`, 'NOT_CONNECTED'));
		token = newToken;
		wanted = true;
		session++;
		const done = new Promise((resolve, reject) => {
			waiter = { resolve, reject };
		});
		open();
		return done;
	}

	/**
	 * Closes the connection for good (no reconnection), fails the requests
	 * in flight with DISCONNECTED and resets the state.
	 */
	function disconnect() {
		wanted = false;
		session++;
		clearTimeout(retryTimer);
		retryTimer = null;
		const sock = ws;
		ws = null;
		if (sock) {
			debug('disconnecting');
			try {
				sock.close(1000);
			} catch {
				// already closing
			}
		}
		failPending(new ChatError('Disconnected', 'DISCONNECTED'));
		waiter?.reject(new ChatError('Disconnected', 'DISCONNECTED'));
		waiter = null;
		resetTyping();
		joined.clear();
		catching.clear();
		conversationsLoaded = false;
		attempts = 0;
		loads = 0;
		token = null;
		setState(INITIAL);
	}

	/**
	 * Authenticates the open connection, or renews its token before it
	 * expires; the token is also the one used when reconnecting.
	 * @param {string} newToken
	 * @returns {Promise<object>} the user
	 */
	async function authenticate(newToken) {
		const reply = await request('auth', { token: newToken }, false);
		token = newToken;
		setState({ authenticated: true, user: reply.user ?? null, error: null });
		return reply.user;
	}

	/**
	 * Loads the user's conversations into `conversations`.
	 * @returns {Promise<object[]>} the conversations, most recent activity first
	 */
	function loadConversations() {
		return guarded(async () => {
			const reply = await request('load_conversations');
			conversationsLoaded = true;
			setState({
				conversations: Array.isArray(reply.conversations) ? reply.conversations : []
			});
			return state.conversations;
		}, true);
	}

	/**
	 * Joins the conversation's room (its messages, typing and presence are
	 * then pushed) and makes it the active one.  Messages already loaded
	 * for it are brought up to date first.
	 * @param {string} id
	 * @returns {Promise<{conversationId: string, onlineUsers: string[]}>}
	 */
	function joinConversation(id) {
		return guarded(async () => {
			const reply = await join(id, !joined.has(id));
			setState({ activeConversation: id });
			return reply;
		});
	}

	/**
	 * Leaves the conversation's room (membership is unchanged).
	 * @param {string} id
	 * @returns {Promise<{conversationId: string}>}
	 */
	function leaveConversation(id) {
		return guarded(async () => {
			const reply = await request('leave_conversation', { conversationId: id });
			joined.delete(id);
			for (const key of othersTyping.keys()) {
				if (key.startsWith(`${id}\n`)) {
					clearTimeout(othersTyping.get(key));
					othersTyping.delete(key);
				}
			}
			setState({
				activeConversation: state.activeConversation === id ? null : state.activeConversation,
				onlineUsers: without(state.onlineUsers, id),
				typingUsers: without(state.typingUsers, id)
			});
			return reply;
		});
	}

	/**
	 * Loads a page of messages into messages[id]: the newest ones, or those
	 * just before beforeMessageId.
	 * @param {string} id
	 * @param {{limit?: number, beforeMessageId?: string}} [page]
	 * @returns {Promise<{conversationId: string, messages: object[], hasMore: boolean}>}
	 */
	function loadMessages(id, page) {
		const { limit, beforeMessageId } = page ?? {};
		return guarded(
			() => load('load_messages', id, { limit, beforeMessageId }, !beforeMessageId),
			true
		);
	}

	/**
	 * Loads the page of messages before the oldest one loaded (the newest
	 * page if none is).
	 * @param {string} id
	 * @param {{limit?: number}} [page]
	 * @returns {Promise<{conversationId: string, messages: object[], hasMore: boolean}>}
	 *   hasMore: whether still older messages exist
	 */
	function loadMoreMessages(id, page) {
		const limit = page?.limit;
		const oldest = state.messages[id]?.[0];
		if (!oldest) return loadMessages(id, { limit });
		if (oldest.seq === 1)
			return Promise.resolve({
				conversationId: id,
				messages: [],
				hasMore: false
			});
		return guarded(
			() => load('load_more_messages', id, { limit, beforeMessageId: oldest.id }, false),
			true
		);
	}

	/**
	 * Sends a message; it is added to messages[conversationId] once stored.
	 * @param {string} conversationId
	 * @param {string | Object<string, string>} content the text, or
	 *   {userId: ciphertext} for per-recipient copies (encryptedContents)
	 * @param {'text'|'image'|'file'} [messageType]
	 * @param {string|null} [replyToId]
	 * @returns {Promise<{success: true, data: object} | {success: false, error: string, code: string}>}
	 */
	async function sendMessage(conversationId, content, messageType = 'text', replyToId = null) {
		const payload = { conversationId, messageType, replyToId };
		if (content && typeof content === 'object') payload.encryptedContents = content;
		else payload.content = content;
		try {
			const reply = await guarded(() => request('send_message', payload));
			if (reply.message) addMessages(conversationId, [reply.message], { live: true });
			if (ownTyping.has(conversationId)) stopTyping(conversationId).catch(() => {});
			return { success: true, data: reply.message };
		} catch (e) {
			return { success: false, error: e.message, code: e.code };
		}
	}

	/**
	 * Tells the room that the user is typing (the server ends it after 5 s
	 * unless repeated).
	 * @param {string} id
	 * @returns {Promise<object>}
	 */
	function startTyping(id) {
		return request('typing_start', { conversationId: id });
	}

	/**
	 * Tells the room that the user stopped typing.
	 * @param {string} id
	 * @returns {Promise<object>}
	 */
	function stopTyping(id) {
		clearTimeout(ownTyping.get(id)?.timer);
		ownTyping.delete(id);
		return request('typing_stop', { conversationId: id });
	}

	/**
	 * Call on every keystroke: starts typing (and keeps it alive), and
	 * stops it after typingIdle (3 s) without a call or when a message is
	 * sent.  Errors are ignored.
	 * @param {string} id
	 */
	function setTyping(id) {
		let t = ownTyping.get(id);
		if (!t) ownTyping.set(id, (t = { sentAt: -Infinity, timer: null }));
		const now = Date.now();
		if (now - t.sentAt >= opt.typingRefresh) {
			t.sentAt = now;
			startTyping(id).catch((e) => debug('typing_start failed:', e.code));
		}
		clearTimeout(t.timer);
		t.timer = setTimeout(() => {
			stopTyping(id).catch((e) => debug('typing_stop failed:', e.code));
		}, opt.typingIdle);
	}

	/**
	 * Creates a conversation (PROTOCOL.md §5 create_conversation); this
	 * connection is joined to its room.
	 * @param {{type?: 'direct'|'group', name?: string, participant_ids: string[]}} spec
	 * @returns {Promise<object>} the conversation
	 */
	function createConversation(spec) {
		return guarded(async () => {
			const reply = await request('create_conversation', { ...spec });
			const c = reply.conversation;
			if (c) {
				joined.add(conversationId(c));
				addConversation(c);
			}
			return c;
		});
	}

	return {
		subscribe,
		/** @returns {object} the current state */
		getState: () => state,
		connect,
		disconnect,
		authenticate,
		loadConversations,
		joinConversation,
		leaveConversation,
		loadMessages,
		loadMoreMessages,
		sendMessage,
		startTyping,
		stopTyping,
		setTyping,
		createConversation,
		conversations: readable('conversations'),
		messages: readable('messages'),
		typingUsers: readable('typingUsers'),
		onlineUsers: readable('onlineUsers'),
		isConnected: readable('connected'),
		isAuthenticated: readable('authenticated'),
		currentUser: readable('user'),
		chatError: readable('error')
	};
}

/** The default client. */
export const wsChat = createChatClient();

export const {
	conversations,
	messages,
	typingUsers,
	onlineUsers,
	isConnected,
	isAuthenticated,
	currentUser,
	chatError
} = wsChat;
