// Shared pieces of the browser tests: a qryptchatd of their own, HS256
// tokens, headless Chromium, and helpers for the chat page.
//
// Environment:
//   QRYPTCHATD       the server binary (default: build/qryptchatd of this repository)
//   CHROMIUM         the browser (default: /usr/bin/chromium)
//   QC_SCREENSHOTS   a directory: the tests save screenshots of the main screens there
//   QC_KEEP_LOGS=1   print the server's log when a server is stopped
import { spawn } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, writeFileSync, readFileSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as delay } from 'node:timers/promises';
import { chromium } from 'playwright-core';

export const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const webRoot = join(repo, 'web');
export const serverBinary = process.env.QRYPTCHATD || join(repo, 'build/qryptchatd');
export const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
export const screenshotDir = process.env.QC_SCREENSHOTS ? resolve(process.env.QC_SCREENSHOTS) : null;

const READY_TIMEOUT_MS = 10000;
const STOP_TIMEOUT_MS = 10000;

// ---- the server -------------------------------------------------------------

/**
 * A qryptchatd in a temporary directory: its own database and secret,
 * `web_root` the repository's web/, listening on 127.0.0.1 at `port` (0:
 * any free port; the bound one is read from --ready-file).
 */
export class Server {
	constructor({ config = {} } = {}) {
		this.dir = mkdtempSync(join(tmpdir(), 'qc-browser-'));
		this.secret = randomBytes(48).toString('base64url');
		writeFileSync(join(this.dir, 'secret'), this.secret, { mode: 0o600 });
		this.extra = config;
		this.port = 0;
		this.child = null;
		this.log = '';
	}

	get origin() {
		return `http://127.0.0.1:${this.port}`;
	}

	/** Starts the server; `port` 0 the first time, then the same one again. */
	async start(port = this.port) {
		if (this.child) throw new Error('server already running');
		const directives = {
			listen: `127.0.0.1:${port}`,
			database: join(this.dir, 'chat.db'),
			jwt_secret_file: join(this.dir, 'secret'),
			web_root: webRoot,
			...this.extra
		};
		const conf = join(this.dir, 'qryptchatd.conf');
		writeFileSync(conf, Object.entries(directives).map(([k, v]) => `${k} ${v}\n`).join(''));
		const ready = join(this.dir, `ready-${Date.now()}-${Math.random().toString(36).slice(2)}`);
		const env = Object.fromEntries(
			Object.entries(process.env).filter(([k]) => !k.startsWith('QRYPTCHAT_') && !k.startsWith('WEBSOCKET_PORT'))
		);
		const child = spawn(serverBinary, ['-c', conf, '--ready-file', ready], {
			env,
			stdio: ['ignore', 'pipe', 'pipe']
		});
		this.child = child;
		child.stdout.on('data', (d) => (this.log += d));
		child.stderr.on('data', (d) => (this.log += d));
		let exited = null;
		child.once('exit', (code, signal) => {
			exited = { code, signal };
			if (this.child === child) this.child = null;
		});
		const spawnError = once(child, 'error').then(([e]) => e);
		const deadline = Date.now() + READY_TIMEOUT_MS;
		for (;;) {
			let text = '';
			try {
				text = readFileSync(ready, 'utf8');
			} catch {
				// not written yet
			}
			if (text.endsWith('\n')) {
				this.port = Number(text.trim());
				return this;
			}
			const failed = await Promise.race([spawnError, delay(20).then(() => null)]);
			if (failed) throw new Error(`cannot start ${serverBinary}: ${failed.message}`);
			if (exited) throw new Error(`qryptchatd exited (${exited.code ?? exited.signal}) before it was ready:\n${this.log}`);
			if (Date.now() > deadline) {
				child.kill('SIGKILL');
				throw new Error(`qryptchatd was not ready within ${READY_TIMEOUT_MS} ms:\n${this.log}`);
			}
		}
	}

	/** Stops the server with SIGTERM and waits for it to exit. */
	async stop() {
		const child = this.child;
		if (!child) return;
		const exit = once(child, 'exit');
		child.kill('SIGTERM');
		const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
		const [code, signal] = await exit;
		clearTimeout(timer);
		this.child = null;
		if (process.env.QC_KEEP_LOGS === '1') process.stderr.write(this.log);
		if (code !== 0) throw new Error(`qryptchatd stopped with ${code ?? signal}:\n${this.log}`);
	}

	async restart() {
		await this.stop();
		return this.start(this.port);
	}

	/** Stops the server if needed and removes its directory. */
	async dispose() {
		try {
			await this.stop();
		} finally {
			rmSync(this.dir, { recursive: true, force: true });
		}
	}

	/** An HS256 token for user `sub`, signed with this server's secret. */
	token(sub, { name, username, ttl = 3600, exp } = {}) {
		return mintToken(this.secret, sub, { name, username, ttl, exp });
	}
}

export function mintToken(secret, sub, { name, username, ttl = 3600, exp } = {}) {
	const now = Math.floor(Date.now() / 1000);
	const claims = { sub, iat: now - 5, exp: exp ?? now + ttl, user_metadata: {} };
	if (username) claims.user_metadata.username = username;
	if (name) claims.user_metadata.display_name = name;
	const enc = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
	const body = `${enc({ alg: 'HS256', typ: 'JWT' })}.${enc(claims)}`;
	return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
}

// ---- the browser --------------------------------------------------------------

export const CHROMIUM_ARGS = [
	'--headless',
	'--no-sandbox',
	'--disable-gpu',
	'--disable-quic',
	'--no-first-run',
	'--disable-background-networking',
	'--disable-component-update',
	'--disable-sync'
];

/** Headless Chromium; Playwright gives it a fresh, temporary user-data-dir. */
export function launchBrowser() {
	return chromium.launch({ executablePath: chromiumPath, headless: true, args: CHROMIUM_ARGS });
}

export const DESKTOP = { viewport: { width: 1280, height: 800 } };
export const PHONE = { viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true };

/**
 * A page in a fresh context.  Console errors, uncaught exceptions and CSP
 * violations are collected in page.problems; assertNoProblems() checks them.
 */
export async function openPage(browser, options = {}) {
	const context = await browser.newContext({ locale: 'en-US', timezoneId: 'UTC', ...DESKTOP, ...options });
	context.setDefaultTimeout(15000);
	const page = await context.newPage();
	page.problems = [];
	page.on('console', (m) => {
		if (m.type() === 'error' && !expectedConsoleError(m.text())) page.problems.push(`console: ${m.text()}`);
	});
	page.on('pageerror', (e) => page.problems.push(`exception: ${e.message}`));
	await page.addInitScript(() => {
		document.addEventListener('securitypolicyviolation', (e) =>
			console.error(`CSP violation: ${e.violatedDirective} ${e.blockedURI}`)
		);
	});
	return page;
}

// The browser logs a failed WebSocket connection while a server is down;
// that is expected in the restart scenario, and nothing else is.
function expectedConsoleError(text) {
	return /WebSocket connection to '.*' failed/.test(text);
}

export function assertNoProblems(...pages) {
	const all = pages.flatMap((p) => p.problems.map((x) => `${p.url()}: ${x}`));
	if (all.length) throw new Error(`problems in the page:\n${all.join('\n')}`);
}

export async function screenshot(page, name) {
	if (!screenshotDir) return;
	mkdirSync(screenshotDir, { recursive: true });
	await page.screenshot({ path: join(screenshotDir, name), animations: 'disabled', caret: 'hide' });
}

// ---- the chat page -------------------------------------------------------------

/** Opens the page signed in through ?token= and waits until connected. */
export async function signInByUrl(page, server, token) {
	await page.goto(`${server.origin}/?token=${encodeURIComponent(token)}`);
	await waitConnected(page);
}

export async function waitConnected(page, timeout = 10000) {
	await page.locator('#connection[data-state="connected"]').waitFor({ timeout });
}

export function conversationButton(page, name) {
	return page.locator('#conversation-list [data-conversation]', { has: page.locator('.conversation-name', { hasText: name }) });
}

/** Creates a conversation through the dialog; resolves once it is open. */
export async function createConversation(page, { type = 'direct', ids, name }) {
	await page.getByRole('button', { name: 'New', exact: true }).click();
	const dialog = page.getByRole('dialog', { name: 'New conversation' });
	await dialog.getByRole('radio', { name: type === 'group' ? 'Group' : 'Direct (one other person)' }).check();
	if (name) await dialog.getByLabel('Group name').fill(name);
	await dialog.locator('#create-participants').fill(ids.join(', '));
	await dialog.getByRole('button', { name: 'Create' }).click();
	await dialog.waitFor({ state: 'hidden' });
}

export async function sendMessage(page, text) {
	const box = page.getByLabel('Message', { exact: true });
	await box.fill(text);
	await box.press('Enter');
	await page.locator('#message-list .message.own .body', { hasText: text }).first().waitFor();
}

/** The texts of the messages shown, in order. */
export function messageTexts(page) {
	return page.locator('#message-list .message .body').allTextContents();
}

/** [{id, seq, text}] of the messages shown, in order. */
export function shownMessages(page) {
	return page.locator('#message-list .message').evaluateAll((els) =>
		els.map((e) => ({ id: e.dataset.id, seq: Number(e.dataset.seq), text: e.querySelector('.body').textContent }))
	);
}

/**
 * Sends `count` messages to conversation `id` as the holder of `token`, from
 * a second connection opened in `page` with the page's own client library.
 */
export async function seedMessages(page, token, id, count, prefix) {
	await page.evaluate(
		async ({ token, id, count, prefix }) => {
			const { createChatClient } = await import('/qryptchat.js');
			const client = createChatClient();
			await client.connect(token);
			for (let i = 1; i <= count; i++) {
				const r = await client.sendMessage(id, `${prefix} ${i}`);
				if (!r.success) throw new Error(`message ${i}: ${r.code} ${r.error}`);
			}
			client.disconnect();
		},
		{ token, id, count, prefix }
	);
}

/**
 * The WCAG contrast ratio of the text of the first element matching each
 * selector against the background behind it (the nearest ancestor with a
 * background colour; opacity taken into account).  {selector: ratio}
 */
export function contrastRatios(page, selectors) {
	return page.evaluate((selectors) => {
		const parse = (c) => {
			const m = c.match(/rgba?\(([^)]+)\)/);
			if (!m) return null;
			const [r, g, b, a = 1] = m[1].split(/[ ,/]+/).filter(Boolean).map(Number);
			return { r, g, b, a };
		};
		const lum = ({ r, g, b }) => {
			const f = (v) => ((v /= 255) <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4);
			return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
		};
		const out = {};
		for (const sel of selectors) {
			const node = document.querySelector(sel);
			if (!node) {
				out[sel] = null;
				continue;
			}
			let fg = parse(getComputedStyle(node).color);
			let opacity = 1;
			let bg = null;
			for (let n = node; n; n = n.parentElement) {
				const cs = getComputedStyle(n);
				opacity *= Number(cs.opacity);
				const c = parse(cs.backgroundColor);
				if (!bg && c && c.a > 0) bg = c;
			}
			bg ??= { r: 255, g: 255, b: 255, a: 1 };
			const a = fg.a * opacity;
			fg = { r: fg.r * a + bg.r * (1 - a), g: fg.g * a + bg.g * (1 - a), b: fg.b * a + bg.b * (1 - a) };
			const [l1, l2] = [lum(fg), lum(bg)].sort((x, y) => y - x);
			out[sel] = Math.round(((l1 + 0.05) / (l2 + 0.05)) * 100) / 100;
		}
		return out;
	}, selectors);
}

/** Waits until `fn` (run in Node) returns a truthy value. */
export async function until(fn, { timeout = 10000, interval = 50, message = 'condition' } = {}) {
	const deadline = Date.now() + timeout;
	let last;
	for (;;) {
		last = await fn();
		if (last) return last;
		if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${message}`);
		await delay(interval);
	}
}
