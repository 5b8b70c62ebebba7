// Two users in two browser contexts: creating conversations, exchanging
// messages, unread counts, presence, the typing indicator, keyboard use,
// and the phone-sized layout.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
	Server,
	launchBrowser,
	openPage,
	assertNoProblems,
	screenshot,
	signInByUrl,
	createConversation,
	conversationButton,
	sendMessage,
	messageTexts,
	shownMessages,
	contrastRatios,
	PHONE
} from './support.mjs';

// The texts whose contrast is checked (WCAG AA: 4.5:1).
const TEXTS = [
	'.brand',
	'#connection-text',
	'.account-name',
	'.sidebar-head h2',
	'.conversation-name',
	'.conversation-preview',
	'.conversation-time',
	'.badge',
	'#conversation-title',
	'#conversation-sub',
	'.history-state',
	'.day span',
	'.message:not(.own) .sender',
	'.message:not(.own) .body',
	'.message:not(.own) time',
	'.message.own .body',
	'.message.own time',
	'#typing',
	'#send',
	'#new-conversation',
	'#sign-out',
	'.sidebar-foot .my-id'
];

async function assertContrast(page) {
	const ratios = await contrastRatios(page, TEXTS);
	const low = Object.entries(ratios).filter(([, r]) => r !== null && r < 4.5);
	assert.deepEqual(low, [], `text below 4.5:1 contrast: ${JSON.stringify(low)}`);
}

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

// Tokens for Alice, Bob and Carol; `tag` makes other users of the same
// names, so that each test starts from nothing.
const tokens = (tag = '') => ({
	alice: server.token(`alice${tag}`, { username: `alice${tag}`, name: 'Alice' }),
	bob: server.token(`bob${tag}`, { username: `bob${tag}`, name: 'Bob' }),
	carol: server.token(`carol${tag}`, { username: `carol${tag}`, name: 'Carol' })
});

// Alice and Bob, signed in, in a direct conversation that each has open.
async function directPair(tag, viewport = {}) {
	const t = tokens(tag);
	const alice = await openPage(browser, viewport);
	const bob = await openPage(browser);
	await signInByUrl(bob, server, t.bob);
	await signInByUrl(alice, server, t.alice);
	await createConversation(alice, { type: 'direct', ids: [`bob${tag}`] });
	await conversationButton(bob, 'Alice').click();
	await bob.locator('#history-state', { hasText: 'No messages yet' }).waitFor();
	return { alice, bob };
}

test('two users create a conversation and exchange messages', async () => {
	const t = tokens();
	const alice = await openPage(browser);
	const bob = await openPage(browser);
	await signInByUrl(alice, server, t.alice);
	await signInByUrl(bob, server, t.bob);
	await alice.locator('#conversations-empty').waitFor();

	// An unknown id is refused with a useful message.
	await alice.getByRole('button', { name: 'New', exact: true }).click();
	const dialog = alice.getByRole('dialog', { name: 'New conversation' });
	await dialog.locator('#create-participants').fill('nobody-here');
	await dialog.getByRole('button', { name: 'Create' }).click();
	await dialog.locator('#create-error').filter({ hasText: 'signed in at least once' }).waitFor();
	await dialog.getByRole('button', { name: 'Cancel' }).click();
	await dialog.waitFor({ state: 'hidden' });

	await createConversation(alice, { type: 'direct', ids: ['bob'] });
	await alice.locator('#conversation-title', { hasText: 'Bob' }).waitFor();
	await alice.locator('#history-state', { hasText: 'No messages yet' }).waitFor();
	// Bob is online, and the conversation appears on Bob's side by itself.
	await alice.locator('#conversation-sub', { hasText: 'Online' }).waitFor();
	await conversationButton(bob, 'Alice').waitFor();

	await sendMessage(alice, 'Hello Bob!');
	// HTML in a message is text, never markup.
	const html = '<img src=x id=injected> <b>bold?</b> & "quotes"';
	await sendMessage(alice, html);
	assert.equal(await alice.locator('#injected').count(), 0);

	// Bob has not opened it: an unread count of 2, then none once opened.
	const bobsItem = conversationButton(bob, 'Alice');
	await bobsItem.locator('.badge', { hasText: '2' }).waitFor();
	assert.match(await bobsItem.getAttribute('aria-label'), /Alice, online, 2 unread messages/);
	assert.match(await bobsItem.locator('.conversation-preview').textContent(), /<img src=x/);
	await bobsItem.click();
	await bob.locator('#message-list .body', { hasText: 'Hello Bob!' }).waitFor();
	assert.equal(await bobsItem.locator('.badge').count(), 0);
	assert.deepEqual(await messageTexts(bob), ['Hello Bob!', html]);
	assert.equal(await bob.locator('#injected').count(), 0);

	await sendMessage(bob, 'Hi Alice, good to see you here.');
	await sendMessage(bob, 'Multi-line\nmessages keep\ntheir lines.');
	await alice.locator('#message-list .body', { hasText: 'their lines.' }).waitFor();
	// New messages are announced to screen readers.
	await alice.locator('#announcer', { hasText: 'Bob: Multi-line messages keep their lines.' }).waitFor();
	assert.equal(await alice.locator('#announcer').getAttribute('aria-live'), 'polite');
	assert.deepEqual(await messageTexts(alice), [
		'Hello Bob!',
		html,
		'Hi Alice, good to see you here.',
		'Multi-line\nmessages keep\ntheir lines.'
	]);
	const ids = (await shownMessages(alice)).map((m) => m.id);
	assert.equal(new Set(ids).size, ids.length, 'each message once');

	// A group with a name, as a third user sees it.
	const carol = await openPage(browser);
	await signInByUrl(carol, server, t.carol);
	await createConversation(alice, { type: 'group', ids: ['bob', 'carol'], name: 'Release planning' });
	await alice.locator('#conversation-title', { hasText: 'Release planning' }).waitFor();
	await alice.locator('#conversation-sub', { hasText: '3 members · 3 online' }).waitFor();
	await sendMessage(alice, 'Shall we ship on Friday?');
	await conversationButton(carol, 'Release planning').locator('.badge', { hasText: '1' }).waitFor();
	await conversationButton(carol, 'Release planning').click();
	await sendMessage(carol, 'Friday works for me.');
	await conversationButton(bob, 'Release planning').locator('.badge', { hasText: '2' }).waitFor();
	await alice.locator('#message-list .body', { hasText: 'Friday works for me.' }).waitFor();

	// Presence: Carol leaves, and her dot goes out on Alice's side.
	await carol.context().close();
	await alice.locator('#conversation-sub', { hasText: '3 members · 2 online' }).waitFor();

	// Back to the direct conversation for the screenshot of the main screen.
	await sendMessage(bob, 'See you at the meeting.');
	await conversationButton(alice, 'Bob').locator('.badge', { hasText: '1' }).waitFor();
	await conversationButton(alice, 'Bob').click();
	await alice.locator('#message-list .body', { hasText: 'See you at the meeting.' }).waitFor();
	await screenshot(alice, 'chat.png');
	await assertContrast(alice);

	// The unread counts survive a reload: what was read stays read.
	await bob.reload();
	await bob.locator('#connection[data-state="connected"]').waitFor();
	await conversationButton(bob, 'Release planning').waitFor();
	await conversationButton(bob, 'Alice').waitFor();
	assert.equal(await conversationButton(bob, 'Alice').locator('.badge').count(), 0);
	assert.equal(await conversationButton(bob, 'Release planning').locator('.badge').textContent(), '2');

	assertNoProblems(alice, bob);
	await alice.context().close();
	await bob.context().close();
});

test('the typing indicator appears and disappears', async () => {
	const { alice, bob } = await directPair('-typing');
	const typing = alice.locator('#typing');
	assert.equal(await typing.getAttribute('aria-live'), 'polite');
	assert.equal(await typing.textContent(), '');

	const box = bob.getByLabel('Message', { exact: true });
	await box.pressSequentially('I am wri');
	await alice.locator('#typing', { hasText: 'Bob is typing…' }).waitFor();
	// Clearing the box stops it.
	await box.fill('');
	await box.dispatchEvent('input');
	await alice.locator('#typing:empty').waitFor();

	// Typing again, then sending: the indicator goes away with the message.
	await box.pressSequentially('Typing, then sending');
	await alice.locator('#typing', { hasText: 'Bob is typing…' }).waitFor();
	await box.press('Enter');
	await alice.locator('#message-list .body', { hasText: 'Typing, then sending' }).waitFor();
	await alice.locator('#typing:empty').waitFor();

	// Typing and stopping without sending: it ends after the idle time by
	// itself (3 s in the client), long before the server would expire it.
	await box.pressSequentially('hmm');
	await alice.locator('#typing', { hasText: 'Bob is typing…' }).waitFor();
	await alice.locator('#typing:empty').waitFor({ timeout: 8000 });
	assertNoProblems(alice, bob);
	await alice.context().close();
	await bob.context().close();
});

test('keyboard only: create a conversation and send with Enter, Shift+Enter for a new line', async () => {
	// Bob must have signed in once to be known to the server.
	const t = tokens('-kbd');
	const bob = await openPage(browser);
	await signInByUrl(bob, server, t.bob);
	await bob.context().close();
	const alice = await openPage(browser);
	await signInByUrl(alice, server, t.alice);
	// Tab order: skip link, sign out, then the New button.
	await alice.keyboard.press('Tab');
	assert.equal(await alice.evaluate(() => document.activeElement.className), 'skip-link');
	await alice.keyboard.press('Tab');
	assert.equal(await alice.evaluate(() => document.activeElement.id), 'sign-out');
	await alice.keyboard.press('Tab');
	assert.equal(await alice.evaluate(() => document.activeElement.id), 'new-conversation');
	await alice.keyboard.press('Enter');
	await alice.getByRole('dialog', { name: 'New conversation' }).waitFor();
	assert.equal(await alice.evaluate(() => document.activeElement.id), 'create-participants');
	await alice.keyboard.type('bob-kbd');
	await alice.keyboard.press('Enter');
	await alice.locator('#conversation-title', { hasText: 'Bob' }).waitFor();
	// The composer has the focus after opening a conversation.
	await alice.locator('#composer-input:focus').waitFor();
	await alice.keyboard.type('first line');
	await alice.keyboard.press('Shift+Enter');
	await alice.keyboard.type('second line');
	await alice.keyboard.press('Enter');
	await alice.locator('#message-list .body', { hasText: 'second line' }).waitFor();
	assert.deepEqual(await messageTexts(alice), ['first line\nsecond line']);
	assert.equal(await alice.getByLabel('Message', { exact: true }).inputValue(), '');
	// Escape closes the dialog.
	await alice.locator('#new-conversation').focus();
	await alice.keyboard.press('Enter');
	await alice.getByRole('dialog', { name: 'New conversation' }).waitFor();
	await alice.keyboard.press('Escape');
	await alice.getByRole('dialog', { name: 'New conversation' }).waitFor({ state: 'hidden' });
	assertNoProblems(alice);
	await alice.context().close();
});

test('a phone-sized screen shows one pane at a time', async () => {
	const { alice, bob } = await directPair('-phone', PHONE);
	await alice.getByRole('button', { name: 'Conversations' }).click();
	await createConversation(alice, { type: 'group', ids: ['bob-phone'], name: 'Weekend trip' });
	await conversationButton(bob, 'Weekend trip').click();
	await sendMessage(bob, 'Who brings the tent?');
	await alice.locator('#message-list .body', { hasText: 'Who brings the tent?' }).waitFor();
	const list = alice.locator('#sidebar');
	const conversation = alice.locator('#conversation');
	await alice.getByRole('button', { name: 'Conversations' }).click();
	await list.waitFor();
	assert.ok(await conversation.isHidden());
	// With the list in front, a message in the conversation behind it is unread.
	await conversationButton(bob, 'Alice').click();
	await sendMessage(bob, 'Are you on the train yet?');
	await conversationButton(alice, 'Bob').locator('.badge', { hasText: '1' }).waitFor();
	await screenshot(alice, 'phone-conversations.png');

	await conversationButton(alice, 'Bob').click();
	await alice.locator('#message-list .body', { hasText: 'Are you on the train yet?' }).waitFor();
	assert.equal(await alice.evaluate(() => document.activeElement.id), 'conversation-title');
	assert.ok(await list.isHidden());
	assert.ok(await alice.getByRole('button', { name: 'Conversations' }).isVisible());
	// Nothing wider than the screen.
	const overflow = await alice.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
	assert.ok(overflow <= 0, `the page is ${overflow}px wider than the screen`);
	await alice.getByLabel('Message', { exact: true }).fill('Sent from my phone');
	await alice.getByRole('button', { name: 'Send' }).click();
	await alice.locator('#message-list .body', { hasText: 'Sent from my phone' }).waitFor();
	await screenshot(alice, 'phone-conversation.png');

	await alice.getByRole('button', { name: 'Conversations' }).click();
	await list.waitFor();
	assert.ok(await conversation.isHidden());
	assert.equal(
		await alice.evaluate(() => document.activeElement.closest('[data-conversation]') !== null),
		true,
		'focus returns to the conversation in the list'
	);
	assertNoProblems(alice, bob);
	await alice.context().close();
	await bob.context().close();
});

test('the dark colour scheme', async () => {
	const { alice, bob } = await directPair('-dark', { colorScheme: 'dark' });
	await sendMessage(bob, 'Does the dark theme look right?');
	await sendMessage(alice, 'It does, and the contrast is fine.');
	const bg = await alice.evaluate(() => getComputedStyle(document.body).backgroundColor);
	assert.equal(bg, 'rgb(16, 20, 28)');
	await screenshot(alice, 'chat-dark.png');
	await assertContrast(alice);
	assertNoProblems(alice, bob);
	await alice.context().close();
	await bob.context().close();
});
