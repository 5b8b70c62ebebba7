// Shared by the tests of web/qryptchat.js: a real qryptchatd in a temporary
// directory, tokens for it, clients that use the `ws` package, and waiting
// for a condition with a deadline.
import { spawn } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import {
	closeSync,
	existsSync,
	mkdtempSync,
	openSync,
	readFileSync,
	rmSync,
	writeFileSync
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';

import { createChatClient } from '../../web/qryptchat.js';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const BINARY = process.env.QRYPTCHATD
	? resolve(process.env.QRYPTCHATD)
	: join(ROOT, 'build/qryptchatd');

// A server must not outlive the test process, even one killed by a signal:
// setpriv (util-linux) sets the parent-death signal, as the C++ tests do
// with PR_SET_PDEATHSIG.  Without it, a normal exit still kills them.
const SETPRIV = ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => existsSync(p));
const live = new Set();
process.on('exit', () => {
	for (const child of live) child.kill('SIGKILL');
});

/** Polls `check` every 10 ms until it returns a truthy value, for at most `ms`. */
export async function waitFor(check, what, ms = 5000) {
	const deadline = Date.now() + ms;
	for (;;) {
		const value = await check();
		if (value) return value;
		if (Date.now() >= deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
		await new Promise((r) => setTimeout(r, 10));
	}
}

/** Resolves with the first value of `store` that satisfies `pred`. */
export function until(store, pred, what, ms = 5000) {
	return new Promise((resolveValue, reject) => {
		let unsubscribe = null;
		let done = false;
		const timer = setTimeout(() => {
			done = true;
			unsubscribe?.();
			reject(new Error(`timed out after ${ms} ms waiting for ${what}`));
		}, ms);
		unsubscribe = store.subscribe((value) => {
			if (done || !pred(value)) return;
			done = true;
			clearTimeout(timer);
			queueMicrotask(() => unsubscribe());
			resolveValue(value);
		});
	});
}

/**
 * Starts qryptchatd on 127.0.0.1 (port 0 unless given) with its database in
 * `dir` (a new temporary directory by default).  `config`: more directives.
 */
export async function startServer({ dir, port = 0, config = {} } = {}) {
	const own = !dir;
	dir ??= mkdtempSync(join(process.env.TMPDIR || tmpdir(), 'qcweb.'));
	const secret = join(dir, 'secret');
	if (own) writeFileSync(secret, randomBytes(32).toString('hex'), { mode: 0o600 });
	const lines = [
		`listen 127.0.0.1:${port}`,
		`database ${join(dir, 'chat.db')}`,
		`jwt_secret_file ${secret}`,
		'log_level debug',
		...Object.entries(config).map(([k, v]) => `${k} ${v}`)
	];
	const conf = join(dir, 'qryptchatd.conf');
	writeFileSync(conf, lines.join('\n') + '\n');
	const ready = join(dir, 'ready');
	rmSync(ready, { force: true });
	const log = openSync(join(dir, 'stderr.log'), 'a');
	const argv = [BINARY, '-c', conf, '--ready-file', ready];
	if (SETPRIV) argv.unshift(SETPRIV, '--pdeathsig', 'KILL');
	const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'ignore', log] });
	closeSync(log);
	live.add(child);
	let status = null;
	const exited = new Promise((r) =>
		child.on('exit', (code, signal) => {
			live.delete(child);
			r((status = signal ? `signal ${signal}` : code));
		})
	);
	const logTail = () => readFileSync(join(dir, 'stderr.log'), 'utf8').slice(-4000);
	let text;
	try {
		text = await waitFor(
			() => {
				if (status !== null) throw new Error(`exited (${status}) before it was ready`);
				try {
					const t = readFileSync(ready, 'utf8');
					return t.endsWith('\n') && t;
				} catch {
					return null;
				}
			},
			'the ready file',
			10000
		);
	} catch (e) {
		// The error quotes the log; nothing of this server is left behind.
		const log = logTail();
		child.kill('SIGKILL');
		await exited;
		if (own) rmSync(dir, { recursive: true, force: true });
		throw new Error(`qryptchatd ${e.message}; stderr:\n${log}`);
	}
	const boundPort = Number(text.trim());
	return {
		dir,
		port: boundPort,
		url: `ws://127.0.0.1:${boundPort}/ws`,
		secret: readFileSync(secret, 'utf8'),
		pid: child.pid,
		log: logTail,
		signal: (sig) => child.kill(sig),
		/** Sends SIGTERM; resolves with the exit status (0 for a clean stop). */
		async stop() {
			if (status === null) child.kill('SIGTERM');
			const timer = setTimeout(() => child.kill('SIGKILL'), 10000);
			const result = await exited;
			clearTimeout(timer);
			return result;
		},
		/** Removes the directory (after stop()). */
		remove() {
			if (own) rmSync(dir, { recursive: true, force: true });
		}
	};
}

/** An HS256 token for user `sub`, signed with the server's secret. */
export function mintToken(server, sub, { username = sub, name, ttl = 3600 } = {}) {
	const now = Math.floor(Date.now() / 1000);
	const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
	const input = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({
		sub,
		iat: now,
		exp: now + ttl,
		user_metadata: { username, display_name: name ?? username }
	})}`;
	const mac = createHmac('sha256', server.secret).update(input).digest('base64url');
	return `${input}.${mac}`;
}

/** A WebSocket class that records its instances, for counting connections. */
export function countingWebSocket() {
	const sockets = [];
	class Counted extends WebSocket {
		constructor(...args) {
			super(...args);
			sockets.push(this);
		}
	}
	return { WebSocket: Counted, sockets };
}

/** A client of `server` with quick timings, connected and authenticated as `sub`. */
export async function connectedClient(server, sub, options = {}) {
	const client = createChatClient({
		WebSocket,
		url: server.url,
		reconnectBase: 50,
		reconnectMax: 200,
		...options
	});
	await client.connect(mintToken(server, sub));
	return client;
}

export { WebSocket };
