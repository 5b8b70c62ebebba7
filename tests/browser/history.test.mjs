// History paging: a conversation of 120 messages opens on the newest page,
// and scrolling to the top brings the older pages, each message once, without
// moving what the reader was looking at.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
	Server,
	launchBrowser,
	openPage,
	assertNoProblems,
	signInByUrl,
	createConversation,
	conversationButton,
	shownMessages,
	seedMessages,
	screenshot
} from './support.mjs';

const TOTAL = 120;
let server;
let browser;

before(async () => {
	// The seeding sends 120 requests at once: above the default rate limit.
	server = await new Server({ config: { rate_limit: 1000, rate_burst: 1000 } }).start();
	browser = await launchBrowser();
});

after(async () => {
	await browser?.close();
	await server?.dispose();
});

test('history pages in when scrolled to the top', async () => {
	const aliceToken = server.token('alice', { username: 'alice', name: 'Alice' });
	const bobToken = server.token('bob', { username: 'bob', name: 'Bob' });
	const bob = await openPage(browser);
	await signInByUrl(bob, server, bobToken);
	await bob.context().close();

	const alice = await openPage(browser);
	await signInByUrl(alice, server, aliceToken);
	await createConversation(alice, { type: 'direct', ids: ['bob'] });
	const id = await conversationButton(alice, 'Bob').getAttribute('data-conversation');
	await seedMessages(alice, aliceToken, id, TOTAL, 'History message');
	await alice.locator('#message-list .message[data-seq="120"]').waitFor();
	await alice.context().close();

	const reader = await openPage(browser);
	await signInByUrl(reader, server, bobToken);
	const item = conversationButton(reader, 'Alice');
	await item.locator('.badge', { hasText: '99+' }).waitFor();
	assert.match(await item.getAttribute('aria-label'), /120 unread messages/);
	await item.click();

	// The newest page, scrolled to the bottom.
	await reader.locator('#message-list .message[data-seq="120"]').waitFor();
	let shown = await shownMessages(reader);
	assert.equal(shown.length, 50);
	assert.equal(shown[0].seq, 71);
	const scroller = reader.locator('#message-scroller');
	const atBottom = await scroller.evaluate((s) => s.scrollHeight - s.scrollTop - s.clientHeight < 2);
	assert.ok(atBottom, 'opens at the newest message');

	// Scrolled to the top: the page before appears above, and the message
	// that was at the top stays where it was on the screen.
	await scroller.hover();
	const before71 = await reader.locator('.message[data-seq="71"]').evaluate((e) => e.getBoundingClientRect().top);
	await scroller.evaluate((s) => s.scrollTo(0, 0));
	await reader.locator('#message-list .message[data-seq="21"]').waitFor();
	const after71 = await reader.locator('.message[data-seq="71"]').evaluate((e) => e.getBoundingClientRect().top);
	assert.ok(after71 > before71, 'the view did not jump to the top of the new page');
	const viewTop = await scroller.evaluate((s) => s.getBoundingClientRect().top);
	assert.ok(Math.abs(after71 - viewTop) < 200, `message 71 stays near the top of the view (${after71 - viewTop}px)`);

	// Up to the top with the mouse wheel: the rest, and the beginning is marked.
	await reader.mouse.wheel(0, -100000);
	await reader.locator('#message-list .message[data-seq="1"]').waitFor();
	await reader.locator('#history-state', { hasText: 'This is the beginning of the conversation.' }).waitFor();

	shown = await shownMessages(reader);
	assert.equal(shown.length, TOTAL);
	assert.deepEqual(
		shown.map((m) => m.seq),
		Array.from({ length: TOTAL }, (_, i) => i + 1),
		'every message once, in order'
	);
	assert.equal(new Set(shown.map((m) => m.id)).size, TOTAL, 'no duplicate ids');
	assert.deepEqual(
		shown.map((m) => m.text),
		Array.from({ length: TOTAL }, (_, i) => `History message ${i + 1}`)
	);
	// Scrolling to the top again asks for nothing more and changes nothing.
	await scroller.evaluate((s) => s.scrollTo(0, 0));
	await reader.locator('#history-state', { hasText: 'This is the beginning' }).waitFor();
	assert.equal((await shownMessages(reader)).length, TOTAL);
	await screenshot(reader, 'history.png');

	// A message that comes in while scrolled up does not move the view; a
	// button says it is there and goes to it.
	const jump = reader.getByRole('button', { name: 'New messages' });
	assert.ok(await jump.isHidden());
	await seedMessages(reader, aliceToken, id, 1, 'Newest message');
	await jump.waitFor();
	assert.ok(await scroller.evaluate((s) => s.scrollTop < 200), 'still at the top');
	await jump.click();
	await jump.waitFor({ state: 'hidden' });
	await reader.locator('#composer-input:focus').waitFor();
	assert.ok(await reader.locator('.message[data-seq="121"]').isVisible());
	assert.ok(await scroller.evaluate((s) => s.scrollHeight - s.scrollTop - s.clientHeight < 2), 'at the bottom');
	assertNoProblems(reader);
	await reader.context().close();
});
