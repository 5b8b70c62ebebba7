// web/qryptchat.js: conversations, messages between clients, paging,
// typing and presence, against a real qryptchatd.
import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';

import { connectedClient, startServer, until } from './helpers.js';

let server;
const clients = [];

before(async () => {
	// Typing never expires on the server here, so that only the client's
	// own expiry can end it.
	server = await startServer({
		config: { typing_timeout: '10m', connection_rate_per_ip: 0 }
	});
});

afterEach(() => {
	while (clients.length) clients.pop().disconnect();
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

// The messages of conversation `id` in `c` once there are `n` of them.
function messagesOf(c, id, n) {
	return until(c.messages, (m) => (m[id]?.length ?? 0) >= n, `${n} messages`).then((m) => m[id]);
}

function assertInOrder(list, contents) {
	assert.deepEqual(
		list.map((m) => m.encrypted_content),
		contents
	);
	assert.equal(new Set(list.map((m) => m.id)).size, list.length, 'each id once');
	for (let i = 1; i < list.length; i++) assert.equal(list[i].seq, list[i - 1].seq + 1, 'seq order');
}

test('direct and group conversations are created, pushed and loaded', async () => {
	const alice = await client('alice');
	const bob = await client('bob');
	await client('carol');

	const direct = await alice.createConversation({ type: 'direct', participant_ids: ['bob'] });
	assert.equal(direct.type, 'direct');
	assert.equal(direct.name, 'bob', 'named after the other side');
	assert.equal(alice.getState().conversations[0], direct);
	const pushed = await until(bob.conversations, (l) => l.length === 1, 'the push to bob');
	assert.equal(pushed[0].id, direct.id);
	assert.equal(pushed[0].name, 'alice');

	const again = await alice.createConversation({ type: 'direct', participant_ids: ['bob'] });
	assert.equal(again.id, direct.id, 'one direct conversation per pair');
	assert.equal(alice.getState().conversations.length, 1);

	const group = await alice.createConversation({
		type: 'group',
		name: 'Project',
		participant_ids: ['bob', 'carol']
	});
	assert.equal(group.type, 'group');
	assert.equal(group.name, 'Project');
	assert.equal(group.participant_count, 3);
	assert.deepEqual(
		alice.getState().conversations.map((c) => c.id),
		[group.id, direct.id]
	);

	const loaded = await bob.loadConversations();
	assert.deepEqual(new Set(loaded.map((c) => c.id)), new Set([group.id, direct.id]));
	assert.equal(bob.getState().conversations, loaded);
});

test('messages between two clients: each once, in seq order, the conversation moved to the front', async () => {
	const alice = await client('alice');
	const bob = await client('bob');
	const group = await alice.createConversation({
		type: 'group',
		name: 'Chat',
		participant_ids: ['bob']
	});
	const other = await alice.createConversation({
		type: 'group',
		name: 'Other',
		participant_ids: ['bob']
	});
	await bob.loadConversations();
	const joined = await bob.joinConversation(group.id);
	assert.deepEqual(new Set(joined.onlineUsers), new Set(['alice', 'bob']));
	assert.equal(bob.getState().activeConversation, group.id);
	await alice.joinConversation(group.id);
	assert.equal(bob.getState().conversations[0].id, other.id);

	const sent = await Promise.all(
		['one', 'two', 'three', 'four', 'five'].map((t) => alice.sendMessage(group.id, t))
	);
	for (const r of sent) assert.equal(r.success, true);
	assert.equal(sent[0].data.encrypted_content, 'one');
	assert.equal(sent[0].data.sender_id, 'alice');
	const contents = ['one', 'two', 'three', 'four', 'five'];
	assertInOrder(await messagesOf(bob, group.id, 5), contents);
	// Alice got each message twice (message_sent, message_received).
	assertInOrder(await messagesOf(alice, group.id, 5), contents);
	assert.equal(alice.getState().messages[group.id].length, 5);

	const reply = await bob.sendMessage(group.id, 'ack', 'text', sent[0].data.id);
	assert.equal(reply.success, true);
	assert.equal(reply.data.reply_to_id, sent[0].data.id);
	const list = await messagesOf(alice, group.id, 6);
	assert.equal(list[5].id, reply.data.id);
	const front = bob.getState().conversations[0];
	assert.equal(front.id, group.id, 'a new message moves its conversation to the front');
	assert.equal(front.latest_message_id, reply.data.id);
	assert.equal(front.latest_message_content, 'ack');

	// Per-recipient copies: each side stores its own.
	const copies = await alice.sendMessage(group.id, { alice: 'for-alice', bob: 'for-bob' });
	assert.equal(copies.success, true);
	assert.equal(copies.data.encrypted_content, 'for-alice');
	const bobs = await messagesOf(bob, group.id, 7);
	assert.equal(bobs[6].encrypted_content, 'for-bob');

	// Leaving the room stops the pushes.
	await bob.leaveConversation(group.id);
	assert.equal(bob.getState().activeConversation, null);
	await alice.sendMessage(group.id, 'unseen');
	await bob.joinConversation(other.id); // a push would have come before this reply
	assert.equal(bob.getState().messages[group.id].length, 7);
});

test('a conversation joined again is brought up to date', async () => {
	const alice = await client('alice');
	const bob = await client('bob');
	const group = await alice.createConversation({
		type: 'group',
		name: 'Rejoin',
		participant_ids: ['bob']
	});
	await alice.sendMessage(group.id, 'first');
	await bob.joinConversation(group.id);
	await bob.loadMessages(group.id);
	await bob.leaveConversation(group.id);
	for (const t of ['a', 'b', 'c']) await alice.sendMessage(group.id, t);
	await bob.joinConversation(group.id);
	assertInOrder(bob.getState().messages[group.id], ['first', 'a', 'b', 'c']);
	// Sending without being in the room: the stored message shows a gap,
	// and what lies between is fetched.
	await bob.leaveConversation(group.id);
	await alice.sendMessage(group.id, 'd');
	assert.equal((await bob.sendMessage(group.id, 'e')).success, true);
	assertInOrder(await messagesOf(bob, group.id, 6), ['first', 'a', 'b', 'c', 'd', 'e']);
});

test('loadMessages and loadMoreMessages page through the history', async () => {
	const alice = await client('alice');
	const group = await alice.createConversation({
		type: 'group',
		name: 'History',
		participant_ids: ['bob']
	});
	const texts = Array.from({ length: 25 }, (_, i) => `m${i + 1}`);
	for (const t of texts) assert.equal((await alice.sendMessage(group.id, t)).success, true);

	const bob = await client('bob');
	const first = await bob.loadMessages(group.id, { limit: 10 });
	assert.equal(first.hasMore, true);
	assert.deepEqual(
		first.messages.map((m) => m.seq),
		[16, 17, 18, 19, 20, 21, 22, 23, 24, 25]
	);
	assertInOrder(bob.getState().messages[group.id], texts.slice(15));

	const more = await bob.loadMoreMessages(group.id, { limit: 10 });
	assert.equal(more.hasMore, true);
	assertInOrder(bob.getState().messages[group.id], texts.slice(5));
	const rest = await bob.loadMoreMessages(group.id, { limit: 10 });
	assert.equal(rest.hasMore, false);
	assert.equal(rest.messages.length, 5);
	assertInOrder(bob.getState().messages[group.id], texts);
	const none = await bob.loadMoreMessages(group.id);
	assert.deepEqual(none.messages, []);
	assert.equal(none.hasMore, false);

	// An explicit cursor, and the newest page again: nothing doubles.
	const list = bob.getState().messages[group.id];
	const before = await bob.loadMessages(group.id, { limit: 3, beforeMessageId: list[10].id });
	assert.deepEqual(
		before.messages.map((m) => m.seq),
		[8, 9, 10]
	);
	await bob.loadMessages(group.id);
	assertInOrder(bob.getState().messages[group.id], texts);

	// The newest page replaces an older run that it does not join.
	const carol = await client('carol');
	const gap = await alice.createConversation({
		type: 'group',
		name: 'Gap',
		participant_ids: ['carol']
	});
	for (const t of ['g1', 'g2', 'g3']) await alice.sendMessage(gap.id, t);
	await carol.loadMessages(gap.id);
	for (const t of ['g4', 'g5', 'g6', 'g7', 'g8']) await alice.sendMessage(gap.id, t);
	await carol.loadMessages(gap.id, { limit: 2 });
	assertInOrder(carol.getState().messages[gap.id], ['g7', 'g8']);
	await carol.loadMoreMessages(gap.id);
	assertInOrder(carol.getState().messages[gap.id], [
		'g1',
		'g2',
		'g3',
		'g4',
		'g5',
		'g6',
		'g7',
		'g8'
	]);

	const empty = await carol.createConversation({
		type: 'group',
		name: 'Empty',
		participant_ids: ['bob']
	});
	const page = await carol.loadMessages(empty.id);
	assert.deepEqual(page.messages, []);
	assert.deepEqual(carol.getState().messages[empty.id], [], 'loaded, empty');
});

test('typing: start and stop, setTyping with its automatic stop, local expiry', async () => {
	const alice = await client('alice', { typingIdle: 200 });
	const bob = await client('bob', { typingExpiry: 300 });
	const carol = await client('carol');
	const group = await alice.createConversation({
		type: 'group',
		name: 'Typing',
		participant_ids: ['bob', 'carol']
	});
	await bob.joinConversation(group.id);
	const typing = (c, who) =>
		until(
			c.typingUsers,
			(t) => JSON.stringify((t[group.id] ?? []).map((u) => u.userId)) === JSON.stringify(who),
			`${who} typing`
		);

	assert.deepEqual(await alice.startTyping(group.id), {
		conversationId: group.id,
		isTyping: true
	});
	await typing(bob, ['alice']);
	assert.deepEqual(bob.getState().typingUsers[group.id], [{ userId: 'alice', username: 'alice' }]);
	assert.deepEqual(alice.getState().typingUsers, {}, 'no echo of oneself');
	await alice.stopTyping(group.id);
	await typing(bob, []);
	assert.deepEqual(bob.getState().typingUsers, {}, 'an empty conversation entry is removed');

	// setTyping: typing until the calls cease for typingIdle.
	const seen = [];
	const stop = bob.typingUsers.subscribe((t) => seen.push((t[group.id] ?? []).length));
	alice.setTyping(group.id);
	alice.setTyping(group.id);
	await typing(bob, ['alice']);
	await typing(bob, []);
	stop();
	assert.deepEqual(seen, [0, 1, 0]);

	// Two typing, in the order they started.
	await alice.startTyping(group.id);
	await typing(bob, ['alice']);
	await carol.startTyping(group.id);
	await typing(bob, ['alice', 'carol']);
	await alice.stopTyping(group.id);
	await carol.stopTyping(group.id);
	await typing(bob, []);

	// No stop arrives (the server keeps typing 10 min here): bob drops it.
	await alice.startTyping(group.id);
	await typing(bob, ['alice']);
	const t0 = Date.now();
	await typing(bob, []);
	assert.ok(Date.now() - t0 >= 250, 'dropped by the local expiry');
	await alice.stopTyping(group.id);

	// Sending a message ends setTyping at once (alice now watches with the
	// default expiry of 6 s, and carol's typingIdle is 3 s).
	await alice.joinConversation(group.id);
	carol.setTyping(group.id);
	await typing(alice, ['carol']);
	const t1 = Date.now();
	assert.equal((await carol.sendMessage(group.id, 'done')).success, true);
	await typing(alice, []);
	assert.ok(Date.now() - t1 < 2000, 'stopped by the message');

	await assert.rejects(alice.startTyping('no-such-conversation'), { code: 'ACCESS_DENIED' });
});

test('presence: user_online and user_offline update onlineUsers', async () => {
	const alice = await client('alice');
	const bob = await client('bob');
	const g = await alice.createConversation({
		type: 'group',
		name: 'Presence',
		participant_ids: ['bob']
	});
	const joined = await alice.joinConversation(g.id);
	assert.deepEqual(new Set(joined.onlineUsers), new Set(['alice', 'bob']));
	assert.deepEqual(new Set(alice.getState().onlineUsers[g.id]), new Set(['alice', 'bob']));

	bob.disconnect();
	await until(alice.onlineUsers, (o) => !o[g.id]?.includes('bob'), 'bob offline');
	await client('bob');
	await until(alice.onlineUsers, (o) => o[g.id]?.includes('bob'), 'bob online');
	await alice.leaveConversation(g.id);
	assert.equal(alice.getState().onlineUsers[g.id], undefined);
});
