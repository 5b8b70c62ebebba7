// web/qryptchat.js: connection, authentication, the store contract of wsChat
// and its readables, errors and time-outs, debug logging.
import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';

import * as lib from '../../web/qryptchat.js';
import {
	WebSocket,
	connectedClient,
	countingWebSocket,
	mintToken,
	startServer,
	until,
	waitFor
} from './helpers.js';

const { wsChat, createChatClient, ChatError } = lib;
const READABLES = {
	conversations: 'conversations',
	messages: 'messages',
	typingUsers: 'typingUsers',
	onlineUsers: 'onlineUsers',
	isConnected: 'connected',
	isAuthenticated: 'authenticated',
	currentUser: 'user',
	chatError: 'error'
};

let server;
const clients = [];

before(async () => {
	server = await startServer({ config: { connection_rate_per_ip: 0 } });
});

afterEach(() => {
	wsChat.disconnect();
	while (clients.length) clients.pop().disconnect();
	delete globalThis.localStorage;
	delete globalThis.location;
});

after(async () => {
	assert.equal(await server.stop(), 0, 'qryptchatd stops cleanly on SIGTERM');
	server.remove();
});

async function client(sub, options) {
	const c = await connectedClient(server, sub, options);
	clients.push(c);
	return c;
}

test('wsChat connects, authenticates and publishes the state', async () => {
	const states = [];
	const unsubscribe = wsChat.subscribe((s) => states.push(s));
	assert.equal(states.length, 1, 'subscribe calls at once');
	assert.deepEqual(states[0], {
		connected: false,
		authenticated: false,
		user: null,
		conversations: [],
		activeConversation: null,
		messages: {},
		typingUsers: {},
		onlineUsers: {},
		loading: false,
		error: null
	});

	const user = await wsChat.connect(mintToken(server, 'alice'), {
		url: server.url,
		WebSocket
	});
	assert.equal(user.id, 'alice');
	assert.equal(user.username, 'alice');
	const s = states.at(-1);
	assert.equal(s, wsChat.getState());
	assert.equal(s.connected, true);
	assert.equal(s.authenticated, true);
	assert.equal(s.user.id, 'alice');
	assert.equal(s.error, null);
	assert.ok(
		states.some((x) => x.connected && !x.authenticated),
		'open before authenticated'
	);

	const list = await wsChat.loadConversations();
	assert.deepEqual(list, []);
	assert.ok(
		states.some((x) => x.loading),
		'loading while the load is in flight'
	);
	assert.equal(wsChat.getState().loading, false);

	unsubscribe();
	const seen = states.length;
	wsChat.disconnect();
	assert.equal(states.length, seen, 'no call after unsubscribe');
	assert.equal(wsChat.getState().connected, false);
	assert.equal(wsChat.getState().user, null);
});

test('each readable calls at once, on each change of its field only, and stops after unsubscribe', async () => {
	for (const name of Object.keys(READABLES))
		assert.equal(lib[name], wsChat[name], `${name} is exported`);
	const calls = {};
	const stops = [];
	for (const name of Object.keys(READABLES)) {
		calls[name] = [];
		stops.push(lib[name].subscribe((v) => calls[name].push(v)));
		assert.equal(calls[name].length, 1, `${name} calls at once`);
	}
	// The same function subscribed twice is two subscriptions.
	const twice = [];
	const fn = (v) => twice.push(v);
	const u1 = lib.isConnected.subscribe(fn);
	const u2 = lib.isConnected.subscribe(fn);
	u1();

	await wsChat.connect(mintToken(server, 'alice'), { url: server.url, WebSocket });
	await wsChat.loadConversations();
	assert.deepEqual(calls.isConnected, [false, true]);
	assert.deepEqual(calls.isAuthenticated, [false, true]);
	assert.deepEqual(
		calls.currentUser.map((u) => u?.id ?? null),
		[null, 'alice']
	);
	assert.deepEqual(calls.chatError, [null]);
	assert.deepEqual(calls.messages, [{}], 'messages unchanged');
	assert.deepEqual(calls.typingUsers, [{}], 'typingUsers unchanged');
	assert.equal(calls.conversations.length, 2, 'conversations loaded once');
	assert.deepEqual(twice, [false, false, true], 'the remaining subscription still runs');

	for (const stop of stops) stop();
	u2();
	const counts = JSON.stringify(Object.values(calls).map((c) => c.length));
	wsChat.disconnect();
	assert.equal(JSON.stringify(Object.values(calls).map((c) => c.length)), counts);
	assert.deepEqual(twice, [false, false, true]);
});

test('a subscriber that changes the state leaves every subscriber with the latest state', async () => {
	const c = createChatClient({ WebSocket, url: server.url });
	clients.push(c);
	const last = [];
	let stale = 0;
	c.subscribe((s) => {
		last[0] = s;
		if (s !== c.getState()) stale++;
	});
	let asked = false;
	c.subscribe((s) => {
		if (s.authenticated && !asked) {
			asked = true;
			c.loadConversations().catch(() => {});
		}
	});
	const delivered = new Set();
	c.subscribe((s) => {
		last[2] = s;
		if (s !== c.getState() || delivered.has(s)) stale++;
		delivered.add(s);
	});
	await c.connect(mintToken(server, 'alice'));
	await until(c, (s) => asked && !s.loading, 'the load');
	assert.equal(stale, 0, 'called with each state once, never with a superseded one');
	assert.equal(last[0], c.getState());
	assert.equal(last[2], c.getState());
});

test('without a url, a browser page connects to ws://<location.host>/ws', async () => {
	await assert.rejects(wsChat.connect('x', { WebSocket }), (e) => e instanceof ChatError);
	globalThis.location = { protocol: 'http:', host: `127.0.0.1:${server.port}` };
	const { WebSocket: Counted, sockets } = countingWebSocket();
	const user = await wsChat.connect(mintToken(server, 'bob'), { WebSocket: Counted });
	assert.equal(user.id, 'bob');
	assert.equal(sockets[0].url, `ws://127.0.0.1:${server.port}/ws`);
});

test('server errors reject with .code; sendMessage resolves {success: false}', async () => {
	const alice = await client('alice');
	await client('bob');
	await assert.rejects(alice.joinConversation('no-such-conversation'), (e) => {
		assert.ok(e instanceof ChatError);
		assert.equal(e.code, 'ACCESS_DENIED');
		assert.equal(e.message, 'Access denied to conversation');
		return true;
	});
	assert.equal(alice.getState().error, 'Access denied to conversation');
	await assert.rejects(
		alice.createConversation({ type: 'direct', participant_ids: ['nobody-here'] }),
		{ code: 'USER_NOT_FOUND' }
	);
	await assert.rejects(alice.authenticate(mintToken(server, 'bob')), {
		code: 'INVALID_DATA'
	});
	assert.equal(alice.getState().user.id, 'alice', 'still alice');

	const r = await alice.sendMessage('no-such-conversation', 'hi');
	assert.deepEqual(r, {
		success: false,
		error: 'Access denied to conversation',
		code: 'ACCESS_DENIED'
	});

	const c = await alice.createConversation({ type: 'direct', participant_ids: ['bob'] });
	const empty = await alice.sendMessage(c.id, '');
	assert.equal(empty.success, false);
	assert.equal(empty.code, 'INVALID_DATA');
	await assert.rejects(alice.loadMessages(c.id, { limit: 0 }), { code: 'INVALID_DATA' });
	await assert.rejects(alice.loadMessages(c.id, { beforeMessageId: 'nope' }), {
		code: 'MESSAGE_NOT_FOUND'
	});

	// A fresh token for the same user renews the connection's.
	const again = await alice.authenticate(mintToken(server, 'alice'));
	assert.equal(again.id, 'alice');
	assert.equal(alice.getState().error, null);
});

test('requests need a connection', async () => {
	const c = createChatClient({ WebSocket, url: server.url });
	await assert.rejects(c.loadConversations(), { code: 'NOT_CONNECTED' });
	assert.deepEqual(await c.sendMessage('x', 'hi'), {
		success: false,
		error: 'Not connected',
		code: 'NOT_CONNECTED'
	});
	c.setTyping('x'); // ignored
	c.disconnect();
});

test('a request without a reply times out; the late reply is ignored', async () => {
	const alice = await client('alice', { requestTimeout: 300 });
	const list = await alice.loadConversations();
	server.signal('SIGSTOP');
	try {
		const t0 = Date.now();
		await assert.rejects(alice.loadConversations(), (e) => {
			assert.equal(e.code, 'TIMEOUT');
			assert.match(e.message, /load_conversations/);
			return true;
		});
		assert.ok(Date.now() - t0 >= 290, 'waited for the time-out');
		const r = await alice.sendMessage(list[0]?.id ?? 'x', 'late');
		assert.equal(r.success, false);
		assert.equal(r.code, 'TIMEOUT');
	} finally {
		server.signal('SIGCONT');
	}
	// The server answers the two requests now; the next request still works.
	assert.ok(Array.isArray(await alice.loadConversations()));
	assert.equal(alice.getState().connected, true);
});

test('a refused token rejects connect() and is not retried', async () => {
	const { WebSocket: Counted, sockets } = countingWebSocket();
	const c = createChatClient({
		WebSocket: Counted,
		url: server.url,
		reconnectBase: 20,
		reconnectMax: 40
	});
	clients.push(c);
	const forged = mintToken({ secret: 'not-the-secret-of-this-server-at-all' }, 'mallory');
	await assert.rejects(c.connect(forged), { code: 'INVALID_TOKEN' });
	assert.equal(c.getState().authenticated, false);
	assert.ok(c.getState().error);
	// Absence of a retry can only be observed over time: ten retry delays.
	await new Promise((r) => setTimeout(r, 400));
	assert.equal(sockets.length, 1);
});

test('debug logging only with localStorage websocket-debug, never a token', async (t) => {
	const lines = [];
	t.mock.method(console, 'debug', (...args) => lines.push(args.join(' ')));
	for (const m of ['log', 'info', 'warn', 'error'])
		t.mock.method(console, m, (...a) => lines.push(a.join(' ')));

	const token = mintToken(server, 'alice');
	const quiet = createChatClient({ WebSocket, url: server.url });
	await quiet.connect(token);
	await quiet.loadConversations();
	quiet.disconnect();
	assert.deepEqual(lines, [], 'silent by default');

	globalThis.localStorage = { 'websocket-debug': 'false' };
	const still = createChatClient({ WebSocket, url: `${server.url}?token=${token}` });
	await still.connect(token);
	still.disconnect();
	assert.deepEqual(lines, [], 'silent unless exactly "true"');

	globalThis.localStorage = { 'websocket-debug': 'true' };
	const loud = createChatClient({ WebSocket, url: `${server.url}?token=${token}` });
	await loud.connect(token);
	await loud.authenticate(token);
	await loud.loadConversations();
	loud.disconnect();
	assert.ok(lines.length >= 4, 'logs when enabled');
	assert.ok(lines.some((l) => l.includes('load_conversations')));
	for (const l of lines) {
		assert.ok(!l.includes(token), `no token in: ${l}`);
		assert.ok(!l.includes(token.split('.')[2]), `no signature in: ${l}`);
	}
});

test('connect() rejects when its first attempt fails, then keeps trying', async () => {
	let ready = false;
	const { WebSocket: Counted, sockets } = countingWebSocket();
	const c = createChatClient({
		WebSocket: Counted,
		url: () => (ready ? server.url : server.url.replace('/ws', '/not-here')),
		reconnectBase: 20,
		reconnectMax: 40
	});
	clients.push(c);
	await assert.rejects(c.connect(mintToken(server, 'alice')), { code: 'DISCONNECTED' });
	await waitFor(() => sockets.length >= 3, 'more attempts');
	ready = true;
	await until(c, (s) => s.authenticated, 'authenticated');
	assert.equal(c.getState().error, null);
});
