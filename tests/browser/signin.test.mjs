// Signing in: a token in the URL, a pasted one, bad and expired tokens,
// signing out, and the page's security headers.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
	Server,
	launchBrowser,
	openPage,
	assertNoProblems,
	screenshot,
	signInByUrl,
	waitConnected,
	mintToken,
	PHONE
} from './support.mjs';

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

test('the page is served with its strict Content-Security-Policy', async () => {
	const res = await fetch(`${server.origin}/`);
	assert.equal(res.status, 200);
	const csp = res.headers.get('content-security-policy');
	assert.match(csp, /default-src 'none'/);
	assert.match(csp, /script-src 'self'/);
	assert.doesNotMatch(csp, /unsafe-inline/);
	for (const file of ['app.js', 'qryptchat.js', 'style.css', 'icon.svg']) {
		const r = await fetch(`${server.origin}/${file}`);
		assert.equal(r.status, 200, file);
	}
});

test('the sign-in screen, and a token in the URL signs in and leaves the address bar', async () => {
	const page = await openPage(browser);
	await page.goto(server.origin);
	const form = page.getByRole('form').or(page.locator('#sign-in-form'));
	await form.waitFor();
	await page.locator('#connection[data-state="idle"]').waitFor();
	assert.equal(await page.evaluate(() => document.activeElement.id), 'token-input');
	await screenshot(page, 'sign-in.png');

	await signInByUrl(page, server, server.token('alice', { username: 'alice', name: 'Alice' }));
	assert.equal(new URL(page.url()).search, '', 'the token is removed from the URL');
	assert.equal(await page.locator('#account-name').textContent(), 'Alice');
	assert.equal(await page.locator('#account-id').textContent(), 'alice');
	assert.ok(await page.locator('#sign-in').isHidden());

	// A reload stays signed in (the token is kept for the tab's session).
	await page.reload();
	await waitConnected(page);
	assert.equal(await page.locator('#account-name').textContent(), 'Alice');

	await page.getByRole('button', { name: 'Sign out' }).click();
	await page.locator('#sign-in-form').waitFor();
	await page.locator('#connection[data-state="idle"]').waitFor();
	await page.reload();
	await page.locator('#sign-in-form').waitFor();
	assert.equal(await page.locator('#connection').getAttribute('data-state'), 'idle');
	assertNoProblems(page);
	await page.context().close();
});

test('a pasted token signs in', async () => {
	const page = await openPage(browser);
	await page.goto(server.origin);
	await page.getByLabel('Access token').fill(server.token('bob', { username: 'bob', name: 'Bob' }));
	await page.getByRole('button', { name: 'Sign in' }).click();
	await waitConnected(page);
	assert.equal(await page.locator('#account-name').textContent(), 'Bob');
	assertNoProblems(page);
	await page.context().close();
});

test('a token signed with another secret shows a clear error', async () => {
	const page = await openPage(browser);
	const forged = mintToken('not-the-servers-secret-0123456789abcdef', 'mallory', { username: 'mallory' });
	await page.goto(`${server.origin}/?token=${forged}`);
	const error = page.locator('#sign-in-error');
	await error.filter({ hasText: 'refused this token' }).waitFor();
	assert.match(await error.textContent(), /The server refused this token \(Invalid token: .+\)/);
	assert.equal(await error.getAttribute('role'), 'alert');
	await page.locator('#connection[data-state="error"]').waitFor();
	assert.equal(await page.locator('#connection-text').textContent(), 'Sign-in failed');
	assert.equal(new URL(page.url()).search, '', 'the bad token is removed from the URL too');
	assert.equal(await page.evaluate(() => document.activeElement.id), 'token-input');
	assert.ok(await page.locator('#chat').isHidden());
	await screenshot(page, 'sign-in-error.png');
	// A reload does not try the refused token again.
	await page.reload();
	await page.locator('#sign-in-form').waitFor();
	assert.equal(await error.textContent(), '');
	assertNoProblems(page);
	await page.context().close();
});

test('an expired token, garbage, and an empty field each say what is wrong', async () => {
	const page = await openPage(browser, PHONE);
	await page.goto(server.origin);
	const input = page.getByLabel('Access token');
	const error = page.locator('#sign-in-error');

	await input.fill(server.token('alice', { exp: Math.floor(Date.now() / 1000) - 3600 }));
	await input.press('Enter');
	await error.filter({ hasText: 'This token has expired' }).waitFor();

	await input.fill('hello');
	await input.press('Enter');
	await error.filter({ hasText: 'three parts separated by dots' }).waitFor();

	await input.fill('a.b.c');
	await input.press('Enter');
	await error.filter({ hasText: 'refused this token' }).waitFor();

	await input.fill('');
	await page.getByRole('button', { name: 'Sign in' }).click();
	await error.filter({ hasText: 'Paste a token first' }).waitFor();
	assertNoProblems(page);
	await page.context().close();
});

test('while the server cannot be reached, the page says so and signs in once it can', async () => {
	const page = await openPage(browser);
	await page.goto(server.origin);
	await page.locator('#sign-in-form').waitFor();
	const port = server.port;
	await server.stop();
	await page.getByLabel('Access token').fill(server.token('alice', { username: 'alice', name: 'Alice' }));
	await page.getByRole('button', { name: 'Sign in' }).click();
	await page.locator('#sign-in-error', { hasText: 'Cannot reach the server' }).waitFor();
	await page.locator('#connection[data-state="connecting"]', { hasText: 'Cannot reach the server' }).waitFor();
	await server.start(port);
	await waitConnected(page, 45000);
	assert.equal(await page.locator('#account-name').textContent(), 'Alice');
	assertNoProblems(page);
	await page.context().close();
});

test('when the token expires, the page asks for a fresh one', async () => {
	const strict = await new Server({ config: { jwt_leeway: '0s' } }).start();
	try {
		const page = await openPage(browser);
		const exp = Math.floor(Date.now() / 1000) + 4;
		await signInByUrl(page, strict, strict.token('alice', { username: 'alice', name: 'Alice', exp }));
		// The server closes the connection with 4001 at expiry.
		const error = page.locator('#sign-in-error', { hasText: 'Your session has expired' });
		await error.waitFor({ timeout: 20000 });
		await page.locator('#connection[data-state="error"]').waitFor();
		assert.ok(await page.locator('#chat').isHidden());
		// A fresh token carries on.
		await page.getByLabel('Access token').fill(strict.token('alice', { username: 'alice', name: 'Alice' }));
		await page.getByRole('button', { name: 'Sign in' }).click();
		await waitConnected(page);
		assertNoProblems(page);
		await page.context().close();
	} finally {
		await strict.dispose();
	}
});
