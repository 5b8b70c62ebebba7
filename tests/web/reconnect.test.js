// web/qryptchat.js: reconnection after the server restarts, with the rooms
// joined again and the missed messages fetched; no reconnection after
// disconnect() or an expired token; joins repeated when rate-limited.
import { test, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';

import {
	connectedClient,
	countingWebSocket,
	mintToken,
	startServer,
	until,
	waitFor
} from './helpers.js';
import { createChatClient } from '../../web/qryptchat.js';

const clients = [];
const servers = [];

afterEach(() => {
	while (clients.length) clients.pop().disconnect();
});

after(async () => {
	for (const s of servers) {
		assert.equal(await s.stop(), 0, 'qryptchatd stops cleanly');
		s.remove();
	}
});

async function client(server, sub, options) {
	const c = await connectedClient(server, sub, options);
	clients.push(c);
	return c;
}

test('after a restart the reader sees every message once, in order, and the new conversation', async () => {
	const first = await startServer({ config: { connection_rate_per_ip: 0 } });
	servers.push(first);
	const writerUrl = first.url;

	// The reader's url is asked at each attempt: while `away`, a path the
	// server refuses (404), so the reader stays offline on a live server.
	let away = false;
	const { WebSocket: Counted, sockets } = countingWebSocket();
	const reader = await client(first, 'reader', {
		WebSocket: Counted,
		url: () => (away ? writerUrl.replace('/ws', '/away') : writerUrl),
		catchUpLimit: 5 // several pages for the catch-up
	});
	const writer = await client(first, 'writer');
	const group = await writer.createConversation({
		type: 'group',
		name: 'Log',
		participant_ids: ['reader']
	});
	await reader.loadConversations();
	await reader.joinConversation(group.id);
	await reader.loadMessages(group.id);
	const sent = [];
	for (let i = 1; i <= 3; i++) {
		sent.push(`before-${i}`);
		assert.equal((await writer.sendMessage(group.id, `before-${i}`)).success, true);
	}
	await until(reader.messages, (m) => m[group.id]?.length === 3, 'the first messages');

	// Stop the server: both clients lose the connection (1001).
	away = true;
	assert.equal(await first.stop(), 0, 'qryptchatd stops cleanly on SIGTERM');
	await until(reader, (s) => !s.connected, 'the reader offline');
	await until(writer, (s) => !s.connected, 'the writer offline');
	assert.match(reader.getState().error, /shutting down|closed/);

	// The same database, the same port (chosen by the kernel for this test).
	const second = await startServer({
		dir: first.dir,
		port: first.port,
		config: { connection_rate_per_ip: 0 }
	});
	servers.push(second);
	await until(writer, (s) => s.authenticated, 'the writer back', 10000);
	const attemptsBefore = sockets.length;
	for (let i = 1; i <= 12; i++) {
		sent.push(`while-away-${i}`);
		assert.equal((await writer.sendMessage(group.id, `while-away-${i}`)).success, true);
	}
	const direct = await writer.createConversation({
		type: 'direct',
		participant_ids: ['reader']
	});
	await waitFor(() => sockets.length > attemptsBefore + 1, 'refused attempts of the reader');
	assert.equal(reader.getState().authenticated, false, 'the reader was away');
	assert.equal(reader.getState().messages[group.id].length, 3);

	// Back: authenticated again, the room joined again, the gap filled.
	away = false;
	await until(reader, (s) => s.authenticated, 'the reader back', 10000);
	const caught = await until(
		reader.messages,
		(m) => m[group.id]?.length >= 15,
		'the missed messages'
	);
	assert.equal(reader.getState().error, null);
	await until(
		reader.conversations,
		(l) => l.some((c) => c.id === direct.id),
		'the conversation reloaded'
	);

	// A live message arrives by push: the room was joined again.
	sent.push('after');
	assert.equal((await writer.sendMessage(group.id, 'after')).success, true);
	const list = (await until(reader.messages, (m) => m[group.id]?.length >= 16, 'the live message'))[
		group.id
	];
	assert.ok(caught[group.id].length === 15);
	assert.deepEqual(
		list.map((m) => m.encrypted_content),
		sent
	);
	assert.deepEqual(
		list.map((m) => m.seq),
		sent.map((_, i) => i + 1)
	);
	assert.equal(new Set(list.map((m) => m.id)).size, list.length, 'each message once');
	assert.equal(reader.getState().activeConversation, group.id);
});

test('disconnect() closes for good: no reconnection, state reset', async () => {
	const server = await startServer({ config: { connection_rate_per_ip: 0 } });
	servers.push(server);
	const { WebSocket: Counted, sockets } = countingWebSocket();
	const c = await client(server, 'alice', {
		WebSocket: Counted,
		reconnectBase: 20,
		reconnectMax: 40
	});
	const pending = c.loadConversations();
	c.disconnect();
	await assert.rejects(pending, { code: 'DISCONNECTED' });
	const s = c.getState();
	assert.equal(s.connected, false);
	assert.equal(s.authenticated, false);
	assert.equal(s.user, null);
	assert.deepEqual(s.conversations, []);
	assert.equal(s.error, null);
	// Absence of a reconnection can only be observed over time: ten delays.
	await new Promise((r) => setTimeout(r, 400));
	assert.equal(sockets.length, 1);
	assert.equal(sockets[0].readyState, Counted.CLOSED);

	// An unexpected close is retried; disconnect() during the retries stops them.
	const d = await client(server, 'bob', {
		WebSocket: Counted,
		reconnectBase: 20,
		reconnectMax: 40
	});
	assert.equal(await server.stop(), 0, 'qryptchatd stops cleanly on SIGTERM');
	await waitFor(() => sockets.length >= 4, 'attempts to reconnect');
	d.disconnect();
	const n = sockets.length;
	await new Promise((r) => setTimeout(r, 400));
	assert.equal(sockets.length, n);
	assert.equal(d.getState().error, null);
});

test('a connection closed for an expired token (4001) is not reopened', async () => {
	const server = await startServer({
		config: { jwt_leeway: '0s', connection_rate_per_ip: 0 }
	});
	servers.push(server);
	const { WebSocket: Counted, sockets } = countingWebSocket();
	const c = createChatClient({
		WebSocket: Counted,
		url: server.url,
		reconnectBase: 20,
		reconnectMax: 40
	});
	clients.push(c);
	await c.connect(mintToken(server, 'alice', { ttl: 2 }));
	await until(c, (s) => !s.connected, 'the close at expiry', 5000);
	assert.equal(c.getState().error, 'token expired');
	await new Promise((r) => setTimeout(r, 400));
	assert.equal(sockets.length, 1);
	// A fresh token starts again.
	assert.equal((await c.connect(mintToken(server, 'alice'))).id, 'alice');
	assert.equal(sockets.length, 2);
});

test('a join refused with RATE_LIMITED is repeated after retryDelay', async () => {
	const server = await startServer({ config: { rate_burst: 3, connection_rate_per_ip: 0 } });
	servers.push(server);
	const alice = await client(server, 'alice', { retryDelay: 200 }); // auth: 2 requests left
	const ids = [];
	for (let i = 1; i <= 4; i++) {
		const maker = await client(server, `maker${i}`);
		const c = await maker.createConversation({ type: 'group', participant_ids: ['alice'] });
		ids.push(c.id);
	}
	const replies = await Promise.all(ids.map((id) => alice.joinConversation(id)));
	assert.deepEqual(
		replies.map((r) => r.conversationId),
		ids
	);
	assert.equal(alice.getState().error, null);
	assert.equal(alice.getState().connected, true);
});
