// A minimal QryptChat server on Node.js + ws, the stack the original
// QryptChat server ran on: the comparison peer for bench/README.md.
//
// It speaks the subset of the protocol the load generator uses: auth (HS256
// JWT), create_conversation, join_conversation, send_message (stored in
// SQLite through better-sqlite3, WAL, synchronous=NORMAL, then broadcast,
// serialised once per message) and ping.  Written the way a careful Node
// developer would, not handicapped: one JSON.stringify per broadcast, one
// prepared statement per query, one transaction per message.
//
//   node server.js --port 0 --secret-file FILE --database FILE [--ready-file FILE]
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const Database = require('better-sqlite3');
const { WebSocketServer } = require('ws');

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
const secret = fs.readFileSync(args['secret-file'], 'utf8').replace(/\n+$/, '');
const db = new Database(args.database || ':memory:');
db.pragma('journal_mode = WAL');
db.pragma('synchronous = NORMAL');
db.exec(`
CREATE TABLE IF NOT EXISTS users (id TEXT PRIMARY KEY, username TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS conversations (id TEXT PRIMARY KEY, type TEXT NOT NULL, name TEXT,
  created_by TEXT NOT NULL, created_at TEXT NOT NULL, last_seq INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS participants (conversation_id TEXT NOT NULL, user_id TEXT NOT NULL,
  role TEXT NOT NULL, PRIMARY KEY (conversation_id, user_id));
CREATE TABLE IF NOT EXISTS messages (id TEXT PRIMARY KEY, conversation_id TEXT NOT NULL, seq INTEGER NOT NULL,
  sender_id TEXT NOT NULL, message_type TEXT NOT NULL, content TEXT NOT NULL, created_at TEXT NOT NULL,
  UNIQUE (conversation_id, seq));
`);
const q = {
  upsertUser: db.prepare('INSERT INTO users (id, username) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET username = excluded.username'),
  user: db.prepare('SELECT id, username FROM users WHERE id = ?'),
  insConv: db.prepare('INSERT INTO conversations (id, type, name, created_by, created_at) VALUES (?, ?, ?, ?, ?)'),
  insPart: db.prepare('INSERT INTO participants (conversation_id, user_id, role) VALUES (?, ?, ?)'),
  isPart: db.prepare('SELECT 1 FROM participants WHERE conversation_id = ? AND user_id = ?'),
  parts: db.prepare('SELECT p.user_id AS id, u.username, p.role FROM participants p JOIN users u ON u.id = p.user_id WHERE p.conversation_id = ?'),
  nextSeq: db.prepare('UPDATE conversations SET last_seq = last_seq + 1 WHERE id = ? RETURNING last_seq'),
  insMsg: db.prepare('INSERT INTO messages (id, conversation_id, seq, sender_id, message_type, content, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)'),
};
const createConv = db.transaction((id, type, name, creator, others, now) => {
  q.insConv.run(id, type, name, creator, now);
  q.insPart.run(id, creator, 'admin');
  for (const o of others) q.insPart.run(id, o, 'member');
});
const storeMsg = db.transaction((m) => {
  m.seq = q.nextSeq.get(m.conversation_id).last_seq;
  q.insMsg.run(m.id, m.conversation_id, m.seq, m.sender_id, m.message_type, m.encrypted_content, m.created_at);
});

const rooms = new Map();     // conversation id -> Set of sockets
const userSockets = new Map(); // user id -> Set of sockets

function b64urlJson(s) { return JSON.parse(Buffer.from(s, 'base64url').toString('utf8')); }
function verify(token) {
  if (typeof token !== 'string') return null;
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  const sig = crypto.createHmac('sha256', secret).update(parts[0] + '.' + parts[1]).digest();
  const given = Buffer.from(parts[2], 'base64url');
  if (given.length !== sig.length || !crypto.timingSafeEqual(given, sig)) return null;
  try {
    const h = b64urlJson(parts[0]), c = b64urlJson(parts[1]);
    if (h.alg !== 'HS256' || typeof c.sub !== 'string') return null;
    if (typeof c.exp === 'number' && c.exp < Date.now() / 1000) return null;
    return c;
  } catch { return null; }
}

function frame(type, payload, requestId) {
  return JSON.stringify({ type, payload, requestId: requestId || crypto.randomUUID(), timestamp: new Date().toISOString() });
}
function error(ws, code, message, requestId) {
  ws.send(frame('error', { code, error: message, requestId: requestId || null }, requestId));
}
function conversationObject(id) {
  const participants = q.parts.all(id);
  return { id, conversation_id: id, participants, participant_count: participants.length };
}

const handlers = {
  ping(ws, p, rid) { ws.send(frame('pong', {}, rid)); },
  auth(ws, p, rid) {
    const claims = verify(p && p.token);
    if (!claims) return error(ws, 'INVALID_TOKEN', 'Invalid token', rid);
    const username = (claims.user_metadata && claims.user_metadata.username) || claims.sub;
    q.upsertUser.run(claims.sub, username);
    ws.user = { id: claims.sub, username };
    if (!userSockets.has(ws.user.id)) userSockets.set(ws.user.id, new Set());
    userSockets.get(ws.user.id).add(ws);
    ws.send(frame('auth_success', { user: { id: claims.sub, username, display_name: username } }, rid));
  },
  create_conversation(ws, p, rid) {
    const ids = (p && (p.participant_ids || p.participantIds)) || [];
    const others = [...new Set(ids.filter((x) => x !== ws.user.id))];
    for (const o of others) if (!q.user.get(o)) return error(ws, 'USER_NOT_FOUND', 'User not found: ' + o, rid);
    const type = p.type === 'direct' || (!p.type && !p.isGroup && others.length === 1) ? 'direct' : 'group';
    const id = crypto.randomUUID();
    createConv(id, type, p.name || null, ws.user.id, others, new Date().toISOString());
    join(ws, id);
    const conv = { ...conversationObject(id), type, name: p.name || null, created_by: ws.user.id };
    ws.send(frame('conversation_created', { conversation: conv }, rid));
    const push = frame('conversation_created', { conversation: conv });
    for (const u of others.concat([ws.user.id])) {
      for (const s of userSockets.get(u) || []) if (s !== ws) s.send(push);
    }
  },
  join_conversation(ws, p, rid) {
    const id = p && p.conversationId;
    if (typeof id !== 'string') return error(ws, 'INVALID_DATA', 'conversationId is required', rid);
    if (!q.isPart.get(id, ws.user.id)) return error(ws, 'ACCESS_DENIED', 'Access denied to conversation', rid);
    join(ws, id);
    const online = q.parts.all(id).map((r) => r.id).filter((u) => userSockets.has(u));
    ws.send(frame('conversation_joined', { conversationId: id, onlineUsers: online }, rid));
  },
  send_message(ws, p, rid) {
    const id = p && p.conversationId;
    if (typeof id !== 'string') return error(ws, 'INVALID_DATA', 'conversationId is required', rid);
    if (!q.isPart.get(id, ws.user.id)) return error(ws, 'ACCESS_DENIED', 'Access denied to conversation', rid);
    if (typeof p.content !== 'string' || p.content.length === 0) return error(ws, 'INVALID_DATA', 'content is required', rid);
    const m = {
      id: crypto.randomUUID(), conversation_id: id, seq: 0, sender_id: ws.user.id,
      message_type: p.messageType || 'text', encrypted_content: p.content, reply_to_id: null, metadata: null,
      created_at: new Date().toISOString(), sender: { id: ws.user.id, username: ws.user.username },
    };
    storeMsg(m);
    ws.send(frame('message_sent', { message: m }, rid));
    const push = frame('message_received', { message: m });
    for (const s of rooms.get(id) || []) s.send(push);
  },
};

function join(ws, id) {
  if (!rooms.has(id)) rooms.set(id, new Set());
  rooms.get(id).add(ws);
  ws.rooms.add(id);
}

const wss = new WebSocketServer({ host: '127.0.0.1', port: Number(args.port || 0), perMessageDeflate: false });
wss.on('connection', (ws) => {
  ws.rooms = new Set();
  ws.on('message', (data) => {
    let msg;
    try { msg = JSON.parse(data); } catch { return error(ws, 'INVALID_MESSAGE', 'Invalid JSON'); }
    const h = handlers[msg.type];
    if (!h) return error(ws, 'UNKNOWN_MESSAGE_TYPE', 'Unknown message type', msg.requestId);
    if (msg.type !== 'auth' && msg.type !== 'ping' && !ws.user) return error(ws, 'AUTH_REQUIRED', 'Authentication required', msg.requestId);
    try { h(ws, msg.payload || {}, msg.requestId); } catch (e) { error(ws, 'SERVER_ERROR', 'Server error', msg.requestId); }
  });
  ws.on('close', () => {
    for (const id of ws.rooms) {
      const r = rooms.get(id);
      r.delete(ws);
      if (r.size === 0) rooms.delete(id);
    }
    if (ws.user) {
      const set = userSockets.get(ws.user.id);
      set.delete(ws);
      if (set.size === 0) userSockets.delete(ws.user.id);
    }
  });
});
wss.on('listening', () => {
  const port = wss.address().port;
  if (args['ready-file']) {
    fs.writeFileSync(args['ready-file'] + '.tmp', port + '\n');
    fs.renameSync(args['ready-file'] + '.tmp', args['ready-file']);
  }
});
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
