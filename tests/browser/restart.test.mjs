// The server restarts while the pages stay open: they show that the
// connection is lost, reconnect by themselves, and show the messages sent
// meanwhile exactly once, without a reload.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
	Server,
	launchBrowser,
	openPage,
	assertNoProblems,
	signInByUrl,
	waitConnected,
	createConversation,
	conversationButton,
	sendMessage,
	shownMessages,
	screenshot
} from './support.mjs';

// A page reconnects after 0.5-1 s, 1-2 s, 2-4 s, 4-8 s ... (at random):
// a few seconds of downtime can mean waiting some 15 s.
const RECONNECT_TIMEOUT = 45000;

let server;
let browser;

before(async () => {
	server = await new Server().start();
	browser = await launchBrowser();
});

after(async () => {
	await browser?.close();
	await server?.dispose();
});

async function expectOnce(page, texts) {
	const shown = await shownMessages(page);
	for (const text of texts) {
		const n = shown.filter((m) => m.text === text).length;
		assert.equal(n, 1, `"${text}" is shown ${n} times`);
	}
	assert.equal(new Set(shown.map((m) => m.id)).size, shown.length, 'no message twice');
	const seqs = shown.map((m) => m.seq);
	assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), 'in order');
	assert.equal(seqs.at(-1) - seqs[0] + 1, seqs.length, 'no gap');
}

test('messages sent while a page is disconnected appear exactly once after it reconnects', async () => {
	const aliceToken = server.token('alice', { username: 'alice', name: 'Alice' });
	const bobToken = server.token('bob', { username: 'bob', name: 'Bob' });
	const alice = await openPage(browser);
	const bob = await openPage(browser);
	await signInByUrl(bob, server, bobToken);
	await signInByUrl(alice, server, aliceToken);
	await createConversation(alice, { type: 'direct', ids: ['bob'] });
	await createConversation(alice, { type: 'group', ids: ['bob'], name: 'Side room' });
	await conversationButton(alice, 'Bob').click();
	await conversationButton(bob, 'Alice').click();
	await sendMessage(alice, 'before the restart');
	await bob.locator('#message-list .body', { hasText: 'before the restart' }).waitFor();
	await alice.evaluate(() => (window.pageLife = 'the same page'));
	const port = server.port;

	// Down: both pages say so.
	await server.stop();
	for (const page of [alice, bob]) {
		await page.locator('#connection[data-state="reconnecting"]').waitFor();
		assert.equal(await page.locator('#connection-text').textContent(), 'Connection lost, reconnecting…');
	}
	await screenshot(alice, 'reconnecting.png');

	// Meanwhile, on the same database but another port that the open pages
	// do not know, Bob sends from a second tab.
	await server.start(0);
	const missed = ['sent while you were away 1', 'sent while you were away 2', 'sent while you were away 3'];
	const tab = await bob.context().newPage();
	tab.problems = [];
	tab.on('pageerror', (e) => tab.problems.push(`exception: ${e.message}`));
	await signInByUrl(tab, server, bobToken);
	await conversationButton(tab, 'Alice').click();
	for (const text of missed) await sendMessage(tab, text);
	await conversationButton(tab, 'Side room').click();
	await sendMessage(tab, 'also missed, in the side room');
	await tab.close();
	await server.stop();

	// Up again on the port the pages know.
	await server.start(port);
	await waitConnected(alice, RECONNECT_TIMEOUT);
	await alice.locator('#message-list .body', { hasText: missed[2] }).waitFor();
	await expectOnce(alice, ['before the restart', ...missed]);
	assert.equal(await alice.evaluate(() => window.pageLife), 'the same page', 'no reload');
	// The other conversation counts what came in meanwhile.
	await conversationButton(alice, 'Side room').locator('.badge', { hasText: '1' }).waitFor();

	await waitConnected(bob, RECONNECT_TIMEOUT);
	await bob.locator('#message-list .body', { hasText: missed[2] }).waitFor();
	await expectOnce(bob, ['before the restart', ...missed]);

	// A plain restart on the same port, Bob sending as soon as he is back:
	// Alice gets it once, whether she reconnects before or after.
	await server.restart();
	await waitConnected(bob, RECONNECT_TIMEOUT);
	await sendMessage(bob, 'right after the restart');
	await waitConnected(alice, RECONNECT_TIMEOUT);
	await alice.locator('#message-list .body', { hasText: 'right after the restart' }).waitFor();
	await sendMessage(alice, 'and live again');
	await bob.locator('#message-list .body', { hasText: 'and live again' }).waitFor();
	const all = ['before the restart', ...missed, 'right after the restart', 'and live again'];
	await expectOnce(alice, all);
	await expectOnce(bob, all);
	assert.equal(await alice.evaluate(() => window.pageLife), 'the same page', 'no reload');
	assertNoProblems(alice, bob, tab);
	await alice.context().close();
	await bob.context().close();
});
