/**
 * app.js: the chat page of qryptchatd (index.html), on top of the wsChat
 * store of qryptchat.js.  No build step, no dependencies.
 *
 * The page signs in with a token pasted into the form or given as ?token=
 * (removed from the address bar at once, and kept in sessionStorage so that
 * a reload stays signed in), joins every conversation of the user (for
 * unread counts, presence and typing), and renders the state of the store
 * whenever it changes.  Message content is only ever set with textContent.
 */
import { wsChat } from './qryptchat.js';

const TOKEN_KEY = 'qryptchat-token';
const SELECTED_KEY = 'qryptchat-conversation';
const TOKEN_CODES = new Set(['MISSING_TOKEN', 'INVALID_TOKEN', 'TOKEN_EXPIRED']);
const PAGE_SIZE = 50;
const NEAR_TOP_PX = 120; // scrolled this close to the top: load older messages
const NEAR_BOTTOM_PX = 60; // this close to the bottom: follow new messages
const AVATAR_COLOURS = 8;
const narrowScreen = window.matchMedia('(max-width: 47.99em)');

const $ = (id) => document.getElementById(id);
const el = {
	connection: $('connection'),
	connectionText: $('connection-text'),
	account: $('account'),
	accountName: $('account-name'),
	accountId: $('account-id'),
	signOut: $('sign-out'),
	copyId: $('copy-id'),
	signIn: $('sign-in'),
	signInForm: $('sign-in-form'),
	tokenInput: $('token-input'),
	signInError: $('sign-in-error'),
	signInButton: $('sign-in-button'),
	chat: $('chat'),
	newConversation: $('new-conversation'),
	conversationList: $('conversation-list'),
	conversationsEmpty: $('conversations-empty'),
	back: $('back'),
	title: $('conversation-title'),
	sub: $('conversation-sub'),
	noConversation: $('no-conversation'),
	jump: $('jump'),
	scroller: $('message-scroller'),
	historyState: $('history-state'),
	messageList: $('message-list'),
	typing: $('typing'),
	composer: $('composer'),
	input: $('composer-input'),
	send: $('send'),
	composerError: $('composer-error'),
	dialog: $('create-dialog'),
	createForm: $('create-form'),
	createNameRow: $('create-name-row'),
	createName: $('create-name'),
	createParticipants: $('create-participants'),
	createError: $('create-error'),
	createCancel: $('create-cancel'),
	createSubmit: $('create-submit'),
	announcer: $('announcer')
};

// ---- the page's own state ---------------------------------------------

// phase: 'signed-out', 'connecting' (first connection), 'online',
// 'reconnecting' (signed in, connection lost), 'failed' (the token was
// refused, or expired)
let phase = 'signed-out';
let token = null;
let tokenExp = null; // the token's exp, in ms, when it has one
let state = wsChat.getState();
let selectedId = null;
let wasAuthenticated = false;
const unread = new Map(); // conversation id -> count
const seenSeq = new Map(); // conversation id -> highest seq taken into account
let prevMessages = state.messages;
const joined = new Set(); // conversations joined (or being joined)
const loaded = new Set(); // conversations whose newest page was loaded
const firstLoad = new Set(); // conversations whose newest page is on its way
const loadingOlder = new Set();
const olderFailed = new Set();
let typingIn = null; // the conversation we told we are typing in
let signInBusy = false; // the first connection attempt is under way
let sending = false;
let readTimer = null;

// ---- helpers ------------------------------------------------------------

function conversationIdOf(c) {
	return c.id ?? c.conversation_id;
}

function findConversation(id) {
	return state.conversations.find((c) => conversationIdOf(c) === id) ?? null;
}

function otherParticipant(c) {
	const me = state.user?.id;
	return (c.participants ?? []).find((p) => p.id !== me) ?? null;
}

function displayName(person) {
	return person?.display_name || person?.username || person?.id || 'Someone';
}

function conversationName(c) {
	const type = c.type ?? c.conversation_type;
	const name = c.name ?? c.conversation_name;
	if (name) return name;
	if (type === 'direct') return displayName(otherParticipant(c));
	const others = (c.participants ?? []).filter((p) => p.id !== state.user?.id);
	return others.length ? others.map(displayName).join(', ') : 'Group';
}

function isDirect(c) {
	return (c.type ?? c.conversation_type) === 'direct';
}

function initials(text) {
	const words = String(text).trim().split(/\s+/).filter(Boolean);
	const first = (w) => [...w][0] ?? '';
	const letters = words.length > 1 ? first(words[0]) + first(words[1]) : first(words[0] ?? '?');
	return letters.toUpperCase();
}

function colourIndex(text) {
	let h = 0;
	for (const ch of String(text)) h = (h * 31 + ch.codePointAt(0)) >>> 0;
	return h % AVATAR_COLOURS;
}

function avatar(label, key, online) {
	const span = document.createElement('span');
	span.className = `avatar colour-${colourIndex(key)}`;
	span.setAttribute('aria-hidden', 'true');
	span.textContent = initials(label);
	if (online !== undefined) {
		const dot = document.createElement('span');
		dot.className = online ? 'presence online' : 'presence';
		span.append(dot);
	}
	return span;
}

function onlineIn(id) {
	return state.onlineUsers?.[id] ?? [];
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const dayFormat = new Intl.DateTimeFormat(undefined, { weekday: 'long', day: 'numeric', month: 'long', year: 'numeric' });
const shortDayFormat = new Intl.DateTimeFormat(undefined, { day: 'numeric', month: 'short' });

function dayKey(date) {
	return `${date.getFullYear()}-${date.getMonth()}-${date.getDate()}`;
}

function dayLabel(date) {
	const today = new Date();
	const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
	if (dayKey(date) === dayKey(today)) return 'Today';
	if (dayKey(date) === dayKey(yesterday)) return 'Yesterday';
	return dayFormat.format(date);
}

function shortTime(iso) {
	if (!iso) return '';
	const date = new Date(iso);
	if (Number.isNaN(date.getTime())) return '';
	return dayKey(date) === dayKey(new Date()) ? timeFormat.format(date) : shortDayFormat.format(date);
}

function tokenExpiry(jwt) {
	try {
		const part = jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
		const claims = JSON.parse(atob(part));
		return typeof claims.exp === 'number' ? claims.exp * 1000 : null;
	} catch {
		return null;
	}
}

function announce(text) {
	// A fresh node, so that the same text twice is announced twice.
	const p = document.createElement('p');
	p.textContent = text;
	el.announcer.replaceChildren(p);
}

function preview(text, max = 80) {
	const flat = String(text).replace(/\s+/g, ' ').trim();
	return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
}

function tokenError(code, message) {
	switch (code) {
		case 'TOKEN_EXPIRED':
			return 'This token has expired. Ask for a fresh one and paste it here.';
		case 'MISSING_TOKEN':
			return 'Paste a token first.';
		case 'INVALID_TOKEN':
			return `The server refused this token (${message || 'invalid token'}). Check that you copied all of it.`;
		default:
			return message || 'Sign-in failed.';
	}
}

// ---- signing in and out ---------------------------------------------------

function signIn(newToken) {
	token = newToken.trim();
	if (!token) {
		showSignInError('Paste a token first.');
		return;
	}
	if (token.split('.').length !== 3) {
		showSignInError('That does not look like a token: a token has three parts separated by dots.');
		return;
	}
	tokenExp = tokenExpiry(token);
	phase = 'connecting';
	el.signInError.textContent = '';
	signInBusy = true;
	render();
	wsChat.connect(token).then(
		() => {}, // the subscription sees `authenticated`
		(e) => {
			signInBusy = false;
			if (phase === 'signed-out') return;
			if (TOKEN_CODES.has(e.code)) {
				failSignIn(tokenError(e.code, e.message));
			} else if (phase === 'connecting' && !wasAuthenticated) {
				// The client keeps trying in the background; signing in
				// again starts afresh.
				showSignInError('Cannot reach the server. Still trying; check your connection or the address.');
				render();
			}
		}
	);
}

function failSignIn(message) {
	wsChat.disconnect();
	forgetSession();
	phase = 'failed';
	showSignInError(message);
	render();
	el.tokenInput.focus();
}

function showSignInError(message) {
	el.signInError.textContent = message;
}

function forgetSession() {
	token = null;
	tokenExp = null;
	wasAuthenticated = false;
	selectedId = null;
	unread.clear();
	seenSeq.clear();
	joined.clear();
	loaded.clear();
	loadingOlder.clear();
	olderFailed.clear();
	typingIn = null;
	el.messageList.replaceChildren();
	messageNodes.clear();
	conversationNodes.clear();
	el.conversationList.replaceChildren();
	try {
		sessionStorage.removeItem(TOKEN_KEY);
		sessionStorage.removeItem(SELECTED_KEY);
	} catch {
		// storage may be unavailable
	}
}

function signOut() {
	wsChat.disconnect();
	forgetSession();
	phase = 'signed-out';
	signInBusy = false;
	el.signInError.textContent = '';
	el.tokenInput.value = '';
	render();
	el.tokenInput.focus();
}

// First authentication, and each one after a reconnection.
async function onAuthenticated() {
	const first = phase !== 'online' && phase !== 'reconnecting';
	phase = 'online';
	try {
		sessionStorage.setItem(TOKEN_KEY, token);
	} catch {
		// a reload will ask again
	}
	signInBusy = false;
	el.signInError.textContent = '';
	el.tokenInput.value = '';
	if (first) {
		el.chat.dataset.pane = 'list';
		render();
		announce(`Signed in as ${displayName(state.user)}`);
	}
	try {
		const list = await wsChat.loadConversations();
		for (const c of list) {
			const id = conversationIdOf(c);
			// A conversation without messages in the store was not caught up
			// after a reconnection: the server's count is the one to show.
			if (!(id in state.messages) && id !== selectedId) unread.set(id, c.unread_count ?? 0);
		}
		if (first) {
			let wanted = null;
			try {
				wanted = sessionStorage.getItem(SELECTED_KEY);
			} catch {
				// none
			}
			if (wanted && findConversation(wanted)) selectConversation(wanted, { focus: false });
		}
		joinAll();
		if (selectedId) loadNewest(selectedId);
		render();
	} catch (e) {
		// Reported through chatError; the next reconnection tries again.
	}
}

// ---- conversations -------------------------------------------------------

function joinAll() {
	if (!state.authenticated) return;
	for (const c of state.conversations) join(conversationIdOf(c));
}

// Joins the room of a conversation once: its messages, typing and presence
// are then pushed (the client joins again by itself after a reconnection).
function join(id) {
	if (joined.has(id) || !state.authenticated) return;
	joined.add(id);
	wsChat.joinConversation(id).catch(() => joined.delete(id));
}

function selectConversation(id, { focus = true } = {}) {
	if (typingIn && typingIn !== id) stopTyping();
	selectedId = id;
	unread.set(id, 0);
	olderFailed.delete(id);
	try {
		sessionStorage.setItem(SELECTED_KEY, id);
	} catch {
		// not kept across reloads then
	}
	el.chat.dataset.pane = 'conversation';
	el.composerError.textContent = '';
	messageNodes.clear();
	el.messageList.replaceChildren();
	stick = true;
	newBelow = false;
	render();
	join(id);
	if (loaded.has(id)) markRead(id);
	loadNewest(id);
	if (focus) {
		if (narrowScreen.matches) el.title.focus();
		else el.input.focus();
	}
}

// The newest page of a conversation, once (later changes arrive as pushes,
// and the client catches up by itself after a reconnection).
function loadNewest(id) {
	if (loaded.has(id) || !state.authenticated) return;
	loaded.add(id);
	firstLoad.add(id);
	wsChat
		.loadMessages(id, { limit: PAGE_SIZE })
		.then(
			() => seenSeq.set(id, Math.max(seenSeq.get(id) ?? 0, lastSeq(id))),
			() => loaded.delete(id)
		)
		.finally(() => {
			firstLoad.delete(id);
			render();
			fillViewport();
		});
}

function lastSeq(id) {
	const list = state.messages[id] ?? [];
	return list.length ? list[list.length - 1].seq : 0;
}

function showList() {
	el.chat.dataset.pane = 'list';
	render();
	const node = selectedId && conversationNodes.get(selectedId);
	(node?.querySelector('button') ?? el.newConversation).focus();
}

// Keeps the server's read mark at the newest message the user has seen in
// the open conversation, so that counts are right after a reload.
function markRead(id) {
	clearTimeout(readTimer);
	readTimer = setTimeout(() => {
		const list = state.messages[id] ?? [];
		const gapless = list.every((m, i) => i === 0 || m.seq === list[i - 1].seq + 1);
		if (id === selectedId && gapless && state.authenticated && !document.hidden)
			wsChat.loadMessages(id, { limit: 1 }).catch(() => {});
	}, 1000);
}

// ---- messages arriving ---------------------------------------------------

// Whether the conversation is in view: selected, and not behind the list
// on a phone-sized screen.  (A hidden tab still counts as seen for the
// unread counts, but new messages are announced.)
function showing(id) {
	return id === selectedId && !document.hidden && !(narrowScreen.matches && el.chat.dataset.pane === 'list');
}

// Counts and announces the messages that are new since the last render.
function noteNewMessages() {
	const all = state.messages;
	if (all === prevMessages) return;
	const me = state.user?.id;
	for (const [id, list] of Object.entries(all)) {
		if (list === prevMessages[id] || !list.length) continue;
		const before = seenSeq.get(id) ?? 0;
		if (firstLoad.has(id)) continue; // history, not news
		const fresh = list.filter((m) => m.seq > before && m.sender_id !== me);
		seenSeq.set(id, Math.max(before, list[list.length - 1].seq));
		if (!fresh.length) continue;
		const c = findConversation(id);
		const where = c ? conversationName(c) : 'a conversation';
		if (id === selectedId && !stick) newBelow = true;
		if (showing(id)) {
			if (loaded.has(id)) markRead(id);
			if (fresh.length === 1) {
				const m = fresh[0];
				announce(`${displayName(m.sender)}: ${preview(m.encrypted_content ?? 'a message you cannot read', 200)}`);
			} else {
				announce(`${fresh.length} new messages`);
			}
		} else {
			if (!(id === selectedId && document.hidden)) unread.set(id, (unread.get(id) ?? 0) + fresh.length);
			announce(
				fresh.length === 1
					? `New message from ${displayName(fresh[0].sender)} in ${where}`
					: `${fresh.length} new messages in ${where}`
			);
		}
	}
	prevMessages = all;
}

// ---- rendering -----------------------------------------------------------

let renderQueued = false;
function scheduleRender() {
	if (renderQueued) return;
	renderQueued = true;
	queueMicrotask(() => {
		renderQueued = false;
		render();
	});
}

function render() {
	noteNewMessages();
	renderConnection();
	const signedIn = phase === 'online' || phase === 'reconnecting' || (phase === 'connecting' && wasAuthenticated);
	el.signIn.hidden = signedIn;
	el.chat.hidden = !signedIn;
	el.account.hidden = !signedIn || !state.user;
	if (state.user) {
		el.accountName.textContent = displayName(state.user);
		el.accountId.textContent = state.user.id;
	}
	el.signInButton.disabled = signInBusy;
	el.signInButton.textContent = signInBusy ? 'Signing in…' : 'Sign in';
	if (!signedIn) return;
	renderConversationList();
	renderConversation();
	const total = [...unread.values()].reduce((a, b) => a + b, 0);
	document.title = total ? `(${total}) QryptChat` : 'QryptChat';
}

function renderConnection() {
	let s = 'idle';
	let text = 'Not signed in';
	if (phase === 'connecting') {
		s = 'connecting';
		text = state.error && !state.connected ? 'Cannot reach the server, retrying…' : 'Connecting…';
	} else if (phase === 'online') {
		s = 'connected';
		text = 'Connected';
	} else if (phase === 'reconnecting') {
		s = 'reconnecting';
		text = 'Connection lost, reconnecting…';
	} else if (phase === 'failed') {
		s = 'error';
		text = 'Sign-in failed';
	}
	if (el.connection.dataset.state !== s) el.connection.dataset.state = s;
	if (el.connectionText.textContent !== text) el.connectionText.textContent = text;
}

const conversationNodes = new Map(); // id -> li

function renderConversationList() {
	const list = state.conversations;
	el.conversationsEmpty.hidden = list.length > 0;
	const focusedId = document.activeElement?.closest?.('[data-conversation]')?.dataset.conversation;
	const keep = new Set();
	let cursor = el.conversationList.firstElementChild;
	for (const c of list) {
		const id = conversationIdOf(c);
		keep.add(id);
		let li = conversationNodes.get(id);
		if (!li) {
			li = buildConversationItem(id);
			conversationNodes.set(id, li);
		}
		fillConversationItem(li, c, id);
		if (li === cursor) cursor = cursor.nextElementSibling;
		else el.conversationList.insertBefore(li, cursor);
	}
	for (const [id, li] of conversationNodes) {
		if (!keep.has(id)) {
			li.remove();
			conversationNodes.delete(id);
		}
	}
	if (focusedId && document.activeElement === document.body)
		conversationNodes.get(focusedId)?.querySelector('button')?.focus();
}

function buildConversationItem(id) {
	const li = document.createElement('li');
	const button = document.createElement('button');
	button.type = 'button';
	button.className = 'conversation-item';
	button.dataset.conversation = id;
	li.append(button);
	return li;
}

function fillConversationItem(li, c, id) {
	const button = li.firstElementChild;
	const name = conversationName(c);
	const count = id === selectedId && el.chat.dataset.pane !== 'list' ? 0 : (unread.get(id) ?? c.unread_count ?? 0);
	const online = onlineIn(id);
	const other = isDirect(c) ? otherParticipant(c) : null;
	const isOnline = other ? online.includes(other.id) : online.some((u) => u !== state.user?.id);
	const last = c.latest_message_content;
	const lastSender = c.latest_message_sender_id === state.user?.id ? 'You: ' : '';
	const known = state.authenticated; // presence is unknown while disconnected
	const key = JSON.stringify([name, count, known && isOnline, known, last, lastSender, c.latest_message_created_at, id === selectedId]);
	if (button.dataset.key === key) return;
	button.dataset.key = key;
	if (id === selectedId) button.setAttribute('aria-current', 'true');
	else button.removeAttribute('aria-current');

	const text = document.createElement('span');
	text.className = 'conversation-text';
	const top = document.createElement('span');
	top.className = 'conversation-top';
	const nameEl = document.createElement('span');
	nameEl.className = 'conversation-name';
	nameEl.textContent = name;
	const time = document.createElement('span');
	time.className = 'conversation-time';
	time.textContent = shortTime(c.latest_message_created_at);
	top.append(nameEl, time);
	const bottom = document.createElement('span');
	bottom.className = 'conversation-bottom';
	const last1 = document.createElement('span');
	last1.className = 'conversation-preview';
	last1.textContent =
		last != null ? lastSender + preview(last) : c.latest_message_id ? 'Encrypted message' : 'No messages yet';
	bottom.append(last1);
	if (count > 0) {
		const badge = document.createElement('span');
		badge.className = 'badge';
		badge.textContent = count > 99 ? '99+' : String(count);
		bottom.append(badge);
	}
	text.append(top, bottom);
	// One accessible name for the whole button, instead of its pieces.
	const parts = [name];
	if (known && (other || !isDirect(c)))
		parts.push(isOnline ? (other ? 'online' : 'someone online') : other ? 'offline' : '');
	if (count > 0) parts.push(`${count} unread ${count === 1 ? 'message' : 'messages'}`);
	button.setAttribute('aria-label', parts.filter(Boolean).join(', '));
	button.replaceChildren(avatar(name, id, known ? isOnline : undefined), text);
}

const messageNodes = new Map(); // message id -> li
let stick = true; // follow the newest message
let newBelow = false; // messages came in below while scrolled up

function renderConversation() {
	const c = selectedId ? findConversation(selectedId) : null;
	el.noConversation.hidden = !!c;
	el.scroller.hidden = !c;
	el.composer.hidden = !c;
	el.back.hidden = false;
	if (!c) {
		el.jump.hidden = true;
		el.title.textContent = 'No conversation selected';
		el.title.removeAttribute('tabindex');
		el.sub.textContent = '';
		el.typing.textContent = '';
		return;
	}
	el.title.textContent = conversationName(c);
	el.title.tabIndex = -1;
	el.sub.replaceChildren(...subtitle(c));
	renderTyping();
	el.send.disabled = sending || !state.authenticated;
	el.input.setAttribute('aria-disabled', String(!state.authenticated));
	renderMessages();
}

function subtitle(c) {
	// Presence is known only while connected.
	const known = state.authenticated;
	const online = onlineIn(conversationIdOf(c));
	const nodes = [];
	const muted = (text) => {
		const span = document.createElement('span');
		span.className = 'muted';
		span.textContent = text;
		return span;
	};
	if (isDirect(c)) {
		const other = otherParticipant(c);
		const handle = other ? (other.username ? `@${other.username}` : other.id) : '';
		if (known) {
			const on = other && online.includes(other.id);
			const dot = document.createElement('span');
			dot.className = on ? 'presence-inline online' : 'presence-inline';
			dot.setAttribute('aria-hidden', 'true');
			nodes.push(dot, document.createTextNode(on ? 'Online' : 'Offline'));
			if (handle) nodes.push(muted(` · ${handle}`));
		} else if (handle) {
			nodes.push(muted(handle));
		}
	} else {
		const members = c.participants ?? [];
		const count = c.participant_count ?? members.length;
		if (!known) {
			nodes.push(document.createTextNode(`${count} members`));
		} else {
			const here = members.filter((p) => online.includes(p.id));
			nodes.push(document.createTextNode(`${count} members · ${here.length} online`));
			if (here.length) {
				const names = here.map((p) => (p.id === state.user?.id ? 'you' : displayName(p)));
				nodes.push(muted(`: ${names.join(', ')}`));
			}
		}
	}
	return nodes;
}

function renderTyping() {
	const who = (state.typingUsers?.[selectedId] ?? []).map((u) => {
		const c = findConversation(selectedId);
		const p = (c?.participants ?? []).find((x) => x.id === u.userId);
		return p ? displayName(p) : u.username || u.userId;
	});
	let text = '';
	if (who.length === 1) text = `${who[0]} is typing…`;
	else if (who.length === 2) text = `${who[0]} and ${who[1]} are typing…`;
	else if (who.length > 2) text = 'Several people are typing…';
	if (el.typing.textContent !== text) el.typing.textContent = text;
}

function renderMessages() {
	const list = state.messages[selectedId] ?? [];
	const s = el.scroller;
	// Keep the view where it is while older messages are added above it:
	// note where the first visible message is, and restore that after.
	let anchor = null;
	let anchorTop = 0;
	if (!stick) {
		const top = s.getBoundingClientRect().top;
		for (const node of el.messageList.children) {
			const r = node.getBoundingClientRect();
			if (r.bottom > top) {
				anchor = node;
				anchorTop = r.top;
				break;
			}
		}
	}
	const me = state.user?.id;
	let cursor = el.messageList.firstElementChild;
	const keep = new Set();
	let prev = null;
	for (const m of list) {
		keep.add(m.id);
		let li = messageNodes.get(m.id);
		if (!li) {
			li = buildMessage(m, me);
			messageNodes.set(m.id, li);
		}
		decorate(li, m, prev);
		prev = m;
		if (li === cursor) cursor = cursor.nextElementSibling;
		else el.messageList.insertBefore(li, cursor);
	}
	for (const [id, li] of messageNodes) {
		if (!keep.has(id)) {
			li.remove();
			messageNodes.delete(id);
		}
	}
	renderHistoryState(list);
	if (stick) newBelow = false;
	el.jump.hidden = !newBelow;
	if (stick) s.scrollTop = s.scrollHeight;
	else if (anchor?.isConnected) s.scrollTop += anchor.getBoundingClientRect().top - anchorTop;
}

function renderHistoryState(list) {
	let text = '';
	if (!loaded.has(selectedId) || (state.loading && !list.length)) text = 'Loading messages…';
	else if (loadingOlder.has(selectedId)) text = 'Loading older messages…';
	else if (olderFailed.has(selectedId)) text = 'Could not load older messages. Scroll up to try again.';
	else if (!list.length) text = 'No messages yet. Say hello!';
	else if (list[0].seq <= 1) text = 'This is the beginning of the conversation.';
	if (el.historyState.textContent !== text) el.historyState.textContent = text;
}

function buildMessage(m, me) {
	const li = document.createElement('li');
	li.className = m.sender_id === me ? 'message own' : 'message';
	li.dataset.id = m.id;
	li.dataset.seq = String(m.seq);

	const day = document.createElement('p');
	day.className = 'day';
	const dayText = document.createElement('span');
	day.append(dayText);

	const bubble = document.createElement('div');
	bubble.className = 'bubble';
	const meta = document.createElement('p');
	meta.className = 'meta';
	const sender = document.createElement('span');
	sender.className = 'sender';
	sender.textContent = m.sender_id === me ? 'You' : displayName(m.sender);
	const time = document.createElement('time');
	const date = new Date(m.created_at);
	time.dateTime = m.created_at;
	time.textContent = Number.isNaN(date.getTime()) ? '' : timeFormat.format(date);
	time.title = Number.isNaN(date.getTime()) ? '' : date.toLocaleString();
	meta.append(sender, document.createTextNode(' '), time);

	const body = document.createElement('p');
	body.className = 'body';
	if (m.encrypted_content == null) {
		body.classList.add('unreadable');
		body.textContent = 'This message was not encrypted for you.';
	} else {
		body.textContent = m.encrypted_content;
	}
	bubble.append(meta, body);
	li.append(day, bubble);
	return li;
}

function decorate(li, m, prev) {
	const date = new Date(m.created_at);
	const newDay = !prev || dayKey(new Date(prev.created_at)) !== dayKey(date);
	const day = li.firstElementChild;
	day.hidden = !newDay;
	if (newDay) day.firstElementChild.textContent = dayLabel(date);
	const follows =
		!newDay && prev && prev.sender_id === m.sender_id && date - new Date(prev.created_at) < 5 * 60 * 1000;
	li.classList.toggle('follows', !!follows);
}

// ---- history paging ------------------------------------------------------

function loadOlder() {
	const id = selectedId;
	const list = state.messages[id] ?? [];
	if (!id || !loaded.has(id) || loadingOlder.has(id) || !list.length || list[0].seq <= 1) return;
	if (!state.authenticated) return;
	loadingOlder.add(id);
	olderFailed.delete(id);
	render();
	wsChat
		.loadMoreMessages(id, { limit: PAGE_SIZE })
		.catch(() => olderFailed.add(id))
		.finally(() => {
			loadingOlder.delete(id);
			render();
			fillViewport();
		});
}

// Loads older pages until the view can scroll, so that scrolling up works.
function fillViewport() {
	const s = el.scroller;
	if (selectedId && !s.hidden && s.scrollHeight <= s.clientHeight + NEAR_TOP_PX) loadOlder();
}

el.scroller.addEventListener(
	'scroll',
	() => {
		const s = el.scroller;
		stick = s.scrollHeight - s.scrollTop - s.clientHeight < NEAR_BOTTOM_PX;
		if (stick && newBelow) {
			newBelow = false;
			el.jump.hidden = true;
		}
		if (s.scrollTop < NEAR_TOP_PX) loadOlder();
	},
	{ passive: true }
);

// ---- composing -----------------------------------------------------------

function stopTyping() {
	if (!typingIn) return;
	const id = typingIn;
	typingIn = null;
	if (state.authenticated) wsChat.stopTyping(id).catch(() => {});
}

el.input.addEventListener('input', () => {
	el.composerError.textContent = '';
	if (!selectedId || !state.authenticated) return;
	if (el.input.value.trim()) {
		typingIn = selectedId;
		wsChat.setTyping(selectedId);
	} else {
		stopTyping();
	}
});

el.input.addEventListener('keydown', (ev) => {
	if (ev.key === 'Enter' && !ev.shiftKey && !ev.altKey && !ev.ctrlKey && !ev.metaKey && !ev.isComposing) {
		ev.preventDefault();
		el.composer.requestSubmit();
	}
});

el.input.addEventListener('blur', () => {
	if (!el.input.value.trim()) stopTyping();
});

el.composer.addEventListener('submit', async (ev) => {
	ev.preventDefault();
	const id = selectedId;
	const text = el.input.value;
	if (!id || sending || !text.trim()) return;
	if (!state.authenticated) {
		el.composerError.textContent = 'Not connected: the message was not sent. It will stay here until you send it.';
		return;
	}
	sending = true;
	el.input.value = '';
	stick = true;
	typingIn = null; // sendMessage ends the typing state itself
	render();
	const result = await wsChat.sendMessage(id, text);
	sending = false;
	if (!result.success) {
		if (!el.input.value) el.input.value = text;
		el.composerError.textContent = `Not sent: ${result.error || 'unknown error'}.`;
	}
	render();
	if (selectedId === id) el.input.focus();
});

// ---- creating a conversation ----------------------------------------------

function syncCreateKind() {
	const group = el.createForm.elements.type.value === 'group';
	el.createNameRow.hidden = !group;
	el.createParticipants.labels[0].textContent = group ? 'Participant user ids' : 'The other person\u2019s user id';
}

el.newConversation.addEventListener('click', () => {
	el.createForm.reset();
	el.createError.textContent = '';
	el.createSubmit.disabled = false;
	syncCreateKind();
	el.dialog.showModal();
	el.createParticipants.focus();
});

el.createForm.addEventListener('change', syncCreateKind);
el.createCancel.addEventListener('click', () => el.dialog.close());

el.createForm.addEventListener('submit', async (ev) => {
	ev.preventDefault();
	const type = el.createForm.elements.type.value;
	const ids = [...new Set(el.createParticipants.value.split(/[\s,]+/).filter(Boolean))].filter(
		(x) => x !== state.user?.id
	);
	if (!ids.length) {
		el.createError.textContent = 'Give at least one other person\u2019s user id.';
		el.createParticipants.focus();
		return;
	}
	if (type === 'direct' && ids.length !== 1) {
		el.createError.textContent = 'A direct conversation has exactly one other person; choose Group for more.';
		el.createParticipants.focus();
		return;
	}
	const spec = { type, participant_ids: ids };
	const name = el.createName.value.trim();
	if (type === 'group' && name) spec.name = name;
	el.createSubmit.disabled = true;
	el.createError.textContent = '';
	try {
		const c = await wsChat.createConversation(spec);
		const id = conversationIdOf(c);
		joined.add(id); // the creator's socket is joined to the new room
		el.dialog.close();
		selectConversation(id);
	} catch (e) {
		el.createError.textContent =
			e.code === 'USER_NOT_FOUND'
				? `${e.message}. A user exists once they have signed in at least once.`
				: e.message || 'The conversation could not be created.';
		el.createParticipants.focus();
	} finally {
		el.createSubmit.disabled = false;
	}
});

// ---- the rest of the wiring ------------------------------------------------

el.conversationList.addEventListener('click', (ev) => {
	const button = ev.target.closest('[data-conversation]');
	if (button) selectConversation(button.dataset.conversation);
});

el.back.addEventListener('click', showList);

el.jump.addEventListener('click', () => {
	stick = true;
	newBelow = false;
	el.jump.hidden = true;
	el.scroller.scrollTop = el.scroller.scrollHeight;
	el.input.focus();
});

el.copyId.addEventListener('click', async () => {
	try {
		await navigator.clipboard.writeText(state.user?.id ?? '');
		el.copyId.textContent = 'Copied';
		announce('Your user id was copied');
	} catch {
		// No clipboard (an insecure context): select it for Ctrl+C instead.
		const range = document.createRange();
		range.selectNodeContents(el.accountId);
		getSelection().removeAllRanges();
		getSelection().addRange(range);
		el.copyId.textContent = 'Selected';
	}
	setTimeout(() => (el.copyId.textContent = 'Copy'), 2000);
});
el.signOut.addEventListener('click', signOut);

el.signInForm.addEventListener('submit', (ev) => {
	ev.preventDefault();
	signIn(el.tokenInput.value);
});

el.tokenInput.addEventListener('keydown', (ev) => {
	if (ev.key === 'Enter' && !ev.shiftKey) {
		ev.preventDefault();
		el.signInForm.requestSubmit();
	}
});

document.addEventListener('visibilitychange', () => {
	if (!document.hidden && selectedId) {
		unread.set(selectedId, 0);
		if (loaded.has(selectedId)) markRead(selectedId);
		render();
	}
});

window.addEventListener('keydown', (ev) => {
	if (ev.key === 'Escape' && narrowScreen.matches && el.chat.dataset.pane === 'conversation' && !el.dialog.open)
		showList();
});

wsChat.subscribe((s) => {
	const prev = state;
	state = s;
	if (s.authenticated && !prev.authenticated) {
		wasAuthenticated = true;
		onAuthenticated();
	} else if (!s.authenticated && prev.authenticated && phase === 'online') {
		phase = 'reconnecting';
		typingIn = null;
	}
	if (!s.authenticated && wasAuthenticated && phase === 'reconnecting' && token) {
		// The client stops retrying when the token is refused or expires.
		const expired = tokenExp !== null && Date.now() >= tokenExp;
		if (expired || /^invalid token\b|token expired|token not yet valid/i.test(s.error ?? '')) {
			failSignIn('Your session has expired. Paste a fresh token to sign in again.');
			return;
		}
	}
	if (s.conversations !== prev.conversations) joinAll();
	scheduleRender();
});

// ---- start -----------------------------------------------------------------

function start() {
	const params = new URLSearchParams(location.search);
	let initial = params.get('token');
	if (initial !== null) {
		// Out of the address bar (and so out of the history and of bookmarks).
		params.delete('token');
		const rest = params.toString();
		history.replaceState(history.state, '', location.pathname + (rest ? `?${rest}` : '') + location.hash);
	} else {
		try {
			initial = sessionStorage.getItem(TOKEN_KEY);
		} catch {
			initial = null;
		}
	}
	render();
	if (initial) signIn(initial);
	else el.tokenInput.focus();
}

start();
