// qryptchat-bench: a load generator for QryptChat WebSocket servers, written
// with the libwebsockets client API on a libev (epoll) loop.
//
// lws opens and services the connections as raw client sockets; the
// WebSocket handshake and framing (RFC 6455: masked frames out, unmasked in)
// are done here.  lws 4.1.6's WebSocket client parses every received byte
// through a state machine, which made the generator, not the server, the
// bottleneck of the saturation workloads; framing in bulk costs a fraction.
//
// It speaks the real protocol: it mints HS256 tokens, authenticates every
// connection with an `auth` request, creates one conversation per room
// (direct for two members, else a group), joins every member, then has the
// senders of each room send `send_message` at a fixed rate or as fast as
// acknowledgements allow.  Each message carries its send time (the machine's
// monotonic clock, shared by every process here) in its content; latency is
// measured from it to the arrival of each `message_received`.
//
// Connections are spread over --procs client processes.  The parent
// coordinates them over pipes (connect and authenticate, create and join,
// then one start time for everyone), reads the server's CPU time and RSS
// from /proc when given its PID, and prints a table and one JSON line.
//
// Given several servers (the nodes of a cluster), member i of each room
// connects to server i % n, so every room spans the nodes; a delivery
// counts whichever node it arrives on.  The CPU time and RSS of several
// server PIDs are summed; --engine reports the CPU of other processes (a
// database, a broker) and their children separately.
//
// Only messages sent inside the measured window count: deliveries expected
// are (messages sent in the window) x (members per room), since every
// member's socket, the sender's own included, gets each message_received.
#include <ev.h>
#include <libwebsockets.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "procstat.hpp"
#include "qryptchat/auth.hpp"

namespace {

using qc::bench::proc_cpu_s;
using qc::bench::proc_rss_kb;
using qc::bench::proc_tree_cpu_s;

// ------------------------------------------------------------ options

struct Engine {
	std::string name;
	std::vector<pid_t> pids;
};

struct Options {
	std::vector<std::string> urls;  // --url, in order; the default if none
	std::string secret;
	int rooms = 1;
	int members = 10;
	int senders = 1;
	double rate = 1;        // messages per second per sender; 0: saturation
	int window = 8;         // saturation: sends in flight per sender
	int payload = 100;      // bytes of content
	double duration = 10;   // measured seconds
	double warmup = 2;      // seconds of sending before the window opens
	double drain = 2;       // seconds after the window for late deliveries
	int procs = 1;
	int idle = 0;           // idle mode: N authenticated connections
	std::vector<pid_t> server_pids;
	std::vector<Engine> engines;
	std::string label;
	std::string prefix;     // user id prefix; unique per run by default
	int connect_parallel = 64;
};

void usage(FILE *f)
{
	fputs("usage: qryptchat-bench [options]\n"
	      "  --url URL[,URL...]    server WebSocket URL (ws://127.0.0.1:8080/ws); with\n"
	      "                        several (a list, or --url repeated), member i of\n"
	      "                        each room connects to URL i % n\n"
	      "  --secret S            HS256 secret the server verifies tokens with\n"
	      "  --secret-file F       ... or read it from a file\n"
	      "  --rooms N             conversations (1)\n"
	      "  --members N           connections per conversation, each a user (10)\n"
	      "  --senders N           senders per conversation (1)\n"
	      "  --rate R              messages/s per sender; 0 = saturation (1)\n"
	      "  --window N            saturation: sends in flight per sender (8)\n"
	      "  --payload BYTES       content size (100)\n"
	      "  --duration S          measured seconds (10)\n"
	      "  --warmup S            seconds of load before measuring (2)\n"
	      "  --drain S             seconds to wait for late deliveries (2)\n"
	      "  --procs N             client processes (1)\n"
	      "  --idle N              idle mode: N authenticated connections, no rooms\n"
	      "  --server-pid PID[,PID...]  report the server's CPU and RSS from /proc;\n"
	      "                        several (or repeated): their sum\n"
	      "  --engine NAME=PID[,PID...]  also report the CPU of these processes and\n"
	      "                        their descendants, as NAME (repeatable)\n"
	      "  --label TEXT          name of the run in the output\n"
	      "  --prefix TEXT         user id prefix (default: unique per run)\n",
	      f);
}

// ------------------------------------------------------------ small tools

int64_t mono_ns()
{
	timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// Latency histogram: 10 µs buckets to 10 ms, then 1 ms buckets to 60 s.
struct Histogram {
	static constexpr int kFine = 1000, kCoarse = 60000;
	std::vector<uint64_t> b = std::vector<uint64_t>(kFine + kCoarse, 0);
	uint64_t max_us = 0;

	void add(int64_t us)
	{
		if (us < 0)
			us = 0;
		max_us = std::max<uint64_t>(max_us, static_cast<uint64_t>(us));
		size_t i = us < 10000 ? static_cast<size_t>(us / 10)
				      : std::min<size_t>(kFine + static_cast<size_t>(us / 1000),
							 b.size() - 1);
		b[i]++;
	}
	static double bucket_ms(size_t i)
	{
		return i < kFine ? (static_cast<double>(i) * 10 + 5) / 1000.0
				 : static_cast<double>(i - kFine) + 0.5;
	}
	uint64_t count() const
	{
		uint64_t n = 0;
		for (auto v : b)
			n += v;
		return n;
	}
	double quantile_ms(double q) const
	{
		uint64_t n = count();
		if (!n)
			return NAN;
		uint64_t want = static_cast<uint64_t>(std::ceil(q * static_cast<double>(n)));
		uint64_t seen = 0;
		for (size_t i = 0; i < b.size(); i++) {
			seen += b[i];
			if (seen >= want && b[i])
				return bucket_ms(i);
		}
		return static_cast<double>(max_us) / 1000.0;
	}
};

// ------------------------------------------------------------ the client process

struct Client;

struct Conn {
	Client *cl = nullptr;
	lws *wsi = nullptr;
	std::string user;
	int room = -1;             // -1 in idle mode
	int member = 0;
	size_t server = 0;         // index in Client::servers
	bool sender = false;
	bool authed = false;
	bool joined = false;
	bool open = false;          // handshake done
	std::string accept;         // the Sec-WebSocket-Accept the server must send
	std::string in;             // received bytes not parsed yet
	std::string msg;            // a fragmented message being reassembled
	std::string tx;             // framed bytes waiting for WRITEABLE
	uint32_t mask_state = 0x9e3779b9;
	int in_flight = 0;          // saturation: sends not yet acknowledged
	ev_timer send_timer;
};

struct Result {
	uint64_t sent = 0;          // sent inside the window
	uint64_t received = 0;      // deliveries of window messages
	uint64_t acks = 0;
	// Inside the window, whenever the message was sent: what an overloaded
	// server, whose backlog delays the window's messages past the drain,
	// still got through.
	uint64_t acks_in_window = 0;
	uint64_t arrived_in_window = 0;
	uint64_t errors = 0;
	uint64_t closed = 0;        // connections lost during the run
	std::map<std::string, uint64_t> error_codes;
	Histogram lat;
};

// One server to connect to, from --url.
struct Endpoint {
	std::string host, path;
	int port = 0;
};

struct Client {
	Options o;
	int ctl = -1; // socket to the parent
	struct ev_loop *loop = nullptr;
	lws_context *ctx = nullptr;
	std::vector<Endpoint> servers;
	std::vector<std::unique_ptr<Conn>> conns;
	size_t next_connect = 0;
	int connecting = 0, authed = 0, joined = 0;
	std::vector<std::string> room_conv; // room -> conversation id
	std::string padding;
	int64_t t_start = 0, t_end = 0;
	bool running = false, reported_auth = false, reported_join = false;
	Result r;
	ev_io ctl_watcher;
	ev_timer end_timer;
	std::string ctl_buf;
};

Client *g_client;

void say(Client &c, const std::string &line)
{
	std::string l = line + "\n";
	if (write(c.ctl, l.data(), l.size()) < 0)
		_exit(1);
}

// Appends one masked client frame (RFC 6455 §5.2) to the connection's
// output.
void frame_out(Conn &k, int opcode, const std::string &payload)
{
	size_t n = payload.size();
	k.tx.push_back(static_cast<char>(0x80 | opcode));
	if (n < 126) {
		k.tx.push_back(static_cast<char>(0x80 | n));
	} else if (n <= 0xffff) {
		k.tx.push_back(static_cast<char>(0x80 | 126));
		k.tx.push_back(static_cast<char>(n >> 8));
		k.tx.push_back(static_cast<char>(n));
	} else {
		k.tx.push_back(static_cast<char>(0x80 | 127));
		for (int i = 7; i >= 0; i--)
			k.tx.push_back(static_cast<char>(static_cast<uint64_t>(n) >> (8 * i)));
	}
	// A new mask per frame (xorshift; masking guards proxies, not secrets).
	uint32_t x = k.mask_state;
	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	k.mask_state = x;
	unsigned char mask[4] = {static_cast<unsigned char>(x), static_cast<unsigned char>(x >> 8),
				 static_cast<unsigned char>(x >> 16), static_cast<unsigned char>(x >> 24)};
	k.tx.append(reinterpret_cast<char *>(mask), 4);
	size_t at = k.tx.size();
	k.tx.append(payload);
	for (size_t i = 0; i < n; i++)
		k.tx[at + i] = static_cast<char>(k.tx[at + i] ^ mask[i & 3]);
	if (k.wsi)
		lws_callback_on_writable(k.wsi);
}

void queue(Conn &k, const std::string &json) { frame_out(k, 1, json); }

void request(Conn &k, const char *type, const std::string &payload, const std::string &rid)
{
	queue(k, std::string("{\"type\":\"") + type + "\",\"payload\":" + payload +
			 ",\"requestId\":\"" + rid + "\"}");
}

void send_one(Conn &k)
{
	Client &c = *k.cl;
	int64_t now = mono_ns();
	if (now >= c.t_end)
		return;
	char head[48];
	int n = snprintf(head, sizeof head, "t=%lld;", static_cast<long long>(now));
	std::string content(head, static_cast<size_t>(n));
	if (static_cast<int>(content.size()) < c.o.payload)
		content.append(c.padding, 0, static_cast<size_t>(c.o.payload) - content.size());
	request(k, "send_message",
		"{\"conversationId\":\"" + c.room_conv[static_cast<size_t>(k.room)] +
			"\",\"content\":\"" + content + "\"}",
		"s");
	k.in_flight++;
	if (now >= c.t_start)
		c.r.sent++;
}

void on_send_timer(struct ev_loop *, ev_timer *w, int)
{
	Conn *k = static_cast<Conn *>(w->data);
	if (mono_ns() >= k->cl->t_end) {
		ev_timer_stop(k->cl->loop, w);
		return;
	}
	send_one(*k);
}

void start_sending(Client &c)
{
	for (auto &kp : c.conns) {
		Conn &k = *kp;
		if (!k.sender || !k.wsi)
			continue;
		if (c.o.rate > 0) {
			double iv = 1.0 / c.o.rate;
			// Spread the senders' phases over one interval.
			double phase = iv * (static_cast<double>(rand()) / RAND_MAX);
			ev_timer_init(&k.send_timer, on_send_timer, phase, iv);
			k.send_timer.data = &k;
			ev_timer_start(c.loop, &k.send_timer);
		} else {
			for (int i = 0; i < c.o.window; i++)
				send_one(k);
		}
	}
}

void connect_more(Client &c);

void check_progress(Client &c)
{
	if (!c.reported_auth && c.authed == static_cast<int>(c.conns.size())) {
		c.reported_auth = true;
		say(c, "authed");
	}
	if (c.o.idle == 0 && !c.reported_join && c.joined == static_cast<int>(c.conns.size())) {
		c.reported_join = true;
		say(c, "joined");
	}
}

// The value of "key":"..." in a frame (no unescaping: ids and codes).
std::string field(const std::string &s, const char *key)
{
	std::string k = std::string("\"") + key + "\":\"";
	size_t i = s.find(k);
	if (i == std::string::npos)
		return "";
	i += k.size();
	size_t j = s.find('"', i);
	return j == std::string::npos ? "" : s.substr(i, j - i);
}

void on_frame(Conn &k, const std::string &f)
{
	Client &c = *k.cl;
	// Every server frame starts {"type":"...
	const char *p = f.c_str();
	if (strncmp(p, "{\"type\":\"", 9) != 0)
		return;
	p += 9;
	if (strncmp(p, "message_received\"", 17) == 0) {
		static const char kMark[] = "\"encrypted_content\":\"t=";
		const char *t = strstr(p, kMark);
		if (!t)
			return;
		int64_t ts = strtoll(t + sizeof kMark - 1, nullptr, 10);
		int64_t now = mono_ns();
		if (ts >= c.t_start && ts < c.t_end) {
			c.r.received++;
			c.r.lat.add((now - ts) / 1000);
		}
		if (now >= c.t_start && now < c.t_end)
			c.r.arrived_in_window++;
	} else if (strncmp(p, "message_sent\"", 13) == 0) {
		c.r.acks++;
		int64_t now = mono_ns();
		if (now >= c.t_start && now < c.t_end)
			c.r.acks_in_window++;
		k.in_flight--;
		if (c.o.rate == 0 && c.running)
			send_one(k);
	} else if (strncmp(p, "auth_success\"", 13) == 0) {
		k.authed = true;
		c.authed++;
		check_progress(c);
	} else if (strncmp(p, "conversation_created\"", 21) == 0) {
		std::string id = field(f, "id");
		if (k.room >= 0 && !id.empty() && !k.joined) {
			c.room_conv[static_cast<size_t>(k.room)] = id;
			if (k.member == 0) { // the creator's socket is joined already
				k.joined = true;
				c.joined++;
				check_progress(c);
			} else {
				request(k, "join_conversation", "{\"conversationId\":\"" + id + "\"}", "j");
			}
		}
	} else if (strncmp(p, "conversation_joined\"", 20) == 0) {
		if (!k.joined) {
			k.joined = true;
			c.joined++;
			check_progress(c);
		}
	} else if (strncmp(p, "error\"", 6) == 0) {
		c.r.errors++;
		c.r.error_codes[field(f, "code")]++;
		if (k.in_flight > 0 && c.o.rate == 0 && c.running) {
			k.in_flight--;
			send_one(k);
		}
	}
}

void on_open(Conn &k)
{
	Client &c = *k.cl;
	c.connecting--;
	std::string claims = "{\"sub\":\"" + k.user + "\",\"exp\":" + std::to_string(time(nullptr) + 86400) +
			     ",\"user_metadata\":{\"username\":\"" + k.user + "\"}}";
	request(k, "auth", "{\"token\":\"" + qc::sign_jwt_hs256(claims, c.o.secret) + "\"}", "a");
	connect_more(c);
}

std::string base64(const unsigned char *p, size_t n)
{
	std::string out(4 * ((n + 2) / 3) + 1, '\0');
	int len = EVP_EncodeBlock(reinterpret_cast<unsigned char *>(&out[0]), p, static_cast<int>(n));
	out.resize(static_cast<size_t>(len));
	return out;
}

// Parses what arrived: the handshake answer first, then frames.  Returns
// false when the connection must be dropped.
bool on_bytes(Conn &k)
{
	size_t pos = 0;
	if (!k.open) {
		size_t end = k.in.find("\r\n\r\n");
		if (end == std::string::npos)
			return k.in.size() < 16384;
		// "HTTP/1.1 101 ..." and our Sec-WebSocket-Accept value (the
		// value is case-sensitive; header names and the status are not).
		std::string status = k.in.substr(0, std::min<size_t>(end, 12));
		for (auto &ch : status)
			ch = static_cast<char>(tolower(static_cast<unsigned char>(ch)));
		size_t i = k.in.find(k.accept);
		if (status != "http/1.1 101" || i == std::string::npos || i > end) {
			fprintf(stderr, "qryptchat-bench: upgrade refused: %.*s\n",
				static_cast<int>(std::min<size_t>(end, 200)), k.in.c_str());
			return false;
		}
		k.open = true;
		pos = end + 4;
		on_open(k);
	}
	while (k.in.size() - pos >= 2) {
		const unsigned char *p = reinterpret_cast<const unsigned char *>(k.in.data()) + pos;
		size_t avail = k.in.size() - pos;
		bool fin = p[0] & 0x80;
		int opcode = p[0] & 0x0f;
		if (p[1] & 0x80)
			return false; // servers never mask
		uint64_t n = p[1] & 0x7f;
		size_t h = 2;
		if (n == 126) {
			if (avail < 4)
				break;
			n = (static_cast<uint64_t>(p[2]) << 8) | p[3];
			h = 4;
		} else if (n == 127) {
			if (avail < 10)
				break;
			n = 0;
			for (int i = 2; i < 10; i++)
				n = (n << 8) | p[i];
			h = 10;
		}
		if (avail < h + n)
			break;
		const char *payload = k.in.data() + pos + h;
		pos += h + static_cast<size_t>(n);
		switch (opcode) {
		case 0: // continuation
		case 1: // text
		case 2: // binary
			if (fin && k.msg.empty() && opcode != 0) {
				on_frame(k, std::string(payload, static_cast<size_t>(n)));
			} else {
				k.msg.append(payload, static_cast<size_t>(n));
				if (fin) {
					std::string m;
					m.swap(k.msg);
					on_frame(k, m);
				}
			}
			break;
		case 8: // close
			return false;
		case 9: // ping: answer with a pong carrying the same bytes
			frame_out(k, 10, std::string(payload, static_cast<size_t>(n)));
			break;
		default: // pong
			break;
		}
	}
	k.in.erase(0, pos);
	return true;
}

int callback(lws *wsi, lws_callback_reasons reason, void *, void *in, size_t len)
{
	Conn *k = static_cast<Conn *>(lws_wsi_user(wsi));
	switch (reason) {
	case LWS_CALLBACK_RAW_CONNECTED: {
		const Endpoint &e = k->cl->servers[k->server];
		unsigned char nonce[16];
		RAND_bytes(nonce, sizeof nonce);
		std::string key = base64(nonce, sizeof nonce);
		std::string cat = key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
		unsigned char sha[EVP_MAX_MD_SIZE];
		unsigned int shalen = 0;
		EVP_Digest(cat.data(), cat.size(), sha, &shalen, EVP_sha1(), nullptr);
		k->accept = base64(sha, shalen);
		k->mask_state ^= static_cast<uint32_t>(nonce[0] | nonce[1] << 8 | nonce[2] << 16) | 1u;
		k->tx = "GET " + e.path + " HTTP/1.1\r\nHost: " + e.host + ":" + std::to_string(e.port) +
			"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key +
			"\r\nSec-WebSocket-Version: 13\r\n\r\n" + k->tx;
		lws_callback_on_writable(wsi);
		break;
	}
	case LWS_CALLBACK_RAW_RX:
		k->in.append(static_cast<const char *>(in), len);
		if (!on_bytes(*k))
			return -1;
		break;
	case LWS_CALLBACK_RAW_WRITEABLE:
		if (!k->tx.empty()) {
			// Everything queued, in one write; lws keeps what the kernel
			// does not take.
			std::string out;
			out.swap(k->tx);
			if (lws_write(wsi, reinterpret_cast<unsigned char *>(&out[0]), out.size(),
				      LWS_WRITE_RAW) < static_cast<int>(out.size()))
				return -1;
		}
		break;
	case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
		fprintf(stderr, "qryptchat-bench: connection failed: %s\n",
			in ? static_cast<const char *>(in) : "?");
		say(*k->cl, "fail connection refused or failed");
		_exit(1);
	case LWS_CALLBACK_RAW_CLOSE:
		if (k) {
			k->wsi = nullptr;
			k->cl->r.closed++;
			if (k->sender)
				ev_timer_stop(k->cl->loop, &k->send_timer);
		}
		break;
	default:
		break;
	}
	return 0;
}

lws_protocols client_protocols[] = {
	{"qryptchat-bench", callback, 0, 65536, 0, nullptr, 0},
	{nullptr, nullptr, 0, 0, 0, nullptr, 0},
};

void connect_more(Client &c)
{
	while (c.connecting < c.o.connect_parallel && c.next_connect < c.conns.size()) {
		Conn &k = *c.conns[c.next_connect++];
		const Endpoint &e = c.servers[k.server];
		lws_client_connect_info i;
		memset(&i, 0, sizeof i);
		i.context = c.ctx;
		i.address = e.host.c_str();
		i.port = e.port;
		i.method = "RAW";
		i.local_protocol_name = "qryptchat-bench";
		i.userdata = &k;
		i.pwsi = &k.wsi;
		c.connecting++;
		if (!lws_client_connect_via_info(&i)) {
			say(c, "fail cannot start a connection");
			_exit(1);
		}
	}
}

void send_result(Client &c)
{
	std::ostringstream o;
	o << "result " << c.r.sent << ' ' << c.r.received << ' ' << c.r.acks << ' ' << c.r.errors << ' '
	  << c.r.closed << ' ' << c.r.lat.max_us << ' ' << c.r.acks_in_window << ' ' << c.r.arrived_in_window
	  << ' ' << c.r.error_codes.size();
	for (const auto &e : c.r.error_codes)
		o << ' ' << (e.first.empty() ? "?" : e.first) << ' ' << e.second;
	for (size_t i = 0; i < c.r.lat.b.size(); i++)
		if (c.r.lat.b[i])
			o << ' ' << i << ':' << c.r.lat.b[i];
	say(c, o.str());
}

void on_end(struct ev_loop *l, ev_timer *, int)
{
	send_result(*g_client);
	ev_break(l, EVBREAK_ALL);
}

void on_ctl(struct ev_loop *, ev_io *w, int)
{
	Client &c = *g_client;
	char buf[512];
	ssize_t n = read(w->fd, buf, sizeof buf);
	if (n <= 0)
		_exit(1); // the parent is gone
	c.ctl_buf.append(buf, static_cast<size_t>(n));
	size_t nl;
	while ((nl = c.ctl_buf.find('\n')) != std::string::npos) {
		std::string line = c.ctl_buf.substr(0, nl);
		c.ctl_buf.erase(0, nl + 1);
		std::istringstream in(line);
		std::string cmd;
		in >> cmd;
		if (cmd == "create") {
			for (auto &kp : c.conns) {
				Conn &k = *kp;
				if (k.room < 0 || k.member != 0)
					continue;
				std::string ids;
				for (int m = 1; m < c.o.members; m++)
					ids += (m > 1 ? ",\"" : "\"") + c.o.prefix + "r" + std::to_string(k.room) +
					       "m" + std::to_string(m) + "\"";
				request(k, "create_conversation",
					std::string("{\"type\":\"") + (c.o.members == 2 ? "direct" : "group") +
						"\",\"participant_ids\":[" + ids + "]}",
					"c");
			}
		} else if (cmd == "start") {
			long long go, t0, t1;
			in >> go >> t0 >> t1;
			c.t_start = t0;
			c.t_end = t1;
			c.running = true;
			if (c.o.idle == 0)
				start_sending(c);
			double wait_s = static_cast<double>(t1 - mono_ns()) / 1e9 + c.o.drain;
			ev_timer_init(&c.end_timer, on_end, std::max(0.0, wait_s), 0);
			ev_timer_start(c.loop, &c.end_timer);
		}
	}
}

// lws 4.1.6's libev glue may leave a stale hrtimer: keep a timer of its own
// scheduled so it is always re-armed (the same tick qryptchatd keeps).
lws_sorted_usec_list_t g_tick;
void on_tick(lws_sorted_usec_list_t *)
{
	lws_sul_schedule(g_client->ctx, 0, &g_tick, on_tick, 100 * LWS_US_PER_MS);
}

[[noreturn]] void run_client(const Options &o, int ctl, int index)
{
	Client c;
	g_client = &c;
	c.o = o;
	c.ctl = ctl;
	c.padding.assign(static_cast<size_t>(std::max(o.payload, 1)), 'x');
	for (const auto &u : o.urls) {
		std::vector<char> url(u.begin(), u.end());
		url.push_back('\0');
		const char *prot = nullptr, *host = nullptr, *upath = nullptr;
		Endpoint e;
		if (lws_parse_uri(url.data(), &prot, &host, &e.port, &upath)) {
			say(c, "fail bad url " + u);
			_exit(1);
		}
		e.host = host;
		e.path = std::string("/") + upath;
		c.servers.push_back(e);
	}

	// This process's connections: every procs-th of all, in order.
	int total = o.idle > 0 ? o.idle : o.rooms * o.members;
	c.room_conv.resize(static_cast<size_t>(std::max(o.rooms, 0)));
	for (int i = index; i < total; i += o.procs) {
		auto k = std::make_unique<Conn>();
		k->cl = &c;
		if (o.idle > 0) {
			k->user = o.prefix + "idle" + std::to_string(i);
			k->server = static_cast<size_t>(i) % c.servers.size();
		} else {
			k->room = i / o.members;
			k->member = i % o.members;
			k->server = static_cast<size_t>(k->member) % c.servers.size();
			k->sender = k->member < o.senders;
			k->user = o.prefix + "r" + std::to_string(k->room) + "m" + std::to_string(k->member);
		}
		c.conns.push_back(std::move(k));
	}
	// Member 0 of each room creates it, so it must be authenticated after
	// the others are known: the parent says "create" once all are.

	lws_set_log_level(LLL_ERR, nullptr);
	c.loop = ev_loop_new(EVBACKEND_EPOLL | EVFLAG_NOENV);
	void *foreign[1] = {c.loop};
	lws_context_creation_info info;
	memset(&info, 0, sizeof info);
	info.port = CONTEXT_PORT_NO_LISTEN;
	info.protocols = client_protocols;
	info.options = LWS_SERVER_OPTION_LIBEV;
	info.foreign_loops = foreign;
	info.fd_limit_per_thread = static_cast<unsigned int>(c.conns.size() + 64);
	c.ctx = lws_create_context(&info);
	if (!c.ctx) {
		say(c, "fail cannot create the lws context");
		_exit(1);
	}
	lws_sul_schedule(c.ctx, 0, &g_tick, on_tick, 100 * LWS_US_PER_MS);
	ev_io_init(&c.ctl_watcher, on_ctl, ctl, EV_READ);
	ev_io_start(c.loop, &c.ctl_watcher);
	if (c.conns.empty()) {
		c.reported_auth = c.reported_join = true;
		say(c, "authed");
		if (o.idle == 0)
			say(c, "joined");
	}
	connect_more(c);
	ev_run(c.loop, 0);
	lws_context_destroy(c.ctx);
	_exit(0);
}

// ------------------------------------------------------------ the parent

struct Child {
	pid_t pid;
	int fd;
	std::string buf;
};

// Waits for one line starting with `want` from every child (timeout_s).
bool gather(std::vector<Child> &cs, const std::string &want, double timeout_s,
	    std::vector<std::string> *lines = nullptr)
{
	int64_t deadline = mono_ns() + static_cast<int64_t>(timeout_s * 1e9);
	std::vector<bool> got(cs.size(), false);
	size_t n = 0;
	while (n < cs.size()) {
		for (size_t i = 0; i < cs.size(); i++) {
			if (got[i])
				continue;
			size_t nl;
			while (!got[i] && (nl = cs[i].buf.find('\n')) != std::string::npos) {
				std::string line = cs[i].buf.substr(0, nl);
				cs[i].buf.erase(0, nl + 1);
				if (line.rfind("fail", 0) == 0) {
					fprintf(stderr, "qryptchat-bench: client %zu: %s\n", i, line.c_str());
					return false;
				}
				if (line.rfind(want, 0) == 0) {
					got[i] = true;
					n++;
					if (lines)
						(*lines)[i] = line;
				}
			}
		}
		if (n == cs.size())
			break;
		int64_t left = deadline - mono_ns();
		if (left <= 0) {
			fprintf(stderr, "qryptchat-bench: timed out waiting for '%s'\n", want.c_str());
			return false;
		}
		fd_set rd;
		FD_ZERO(&rd);
		int maxfd = 0;
		for (size_t i = 0; i < cs.size(); i++)
			if (!got[i]) {
				FD_SET(cs[i].fd, &rd);
				maxfd = std::max(maxfd, cs[i].fd);
			}
		timeval tv{static_cast<time_t>(left / 1000000000), static_cast<suseconds_t>(left % 1000000000 / 1000)};
		if (select(maxfd + 1, &rd, nullptr, nullptr, &tv) < 0)
			return false;
		for (size_t i = 0; i < cs.size(); i++)
			if (!got[i] && FD_ISSET(cs[i].fd, &rd)) {
				char b[65536];
				ssize_t r = read(cs[i].fd, b, sizeof b);
				if (r <= 0) {
					fprintf(stderr, "qryptchat-bench: client %zu exited early\n", i);
					return false;
				}
				cs[i].buf.append(b, static_cast<size_t>(r));
			}
	}
	return true;
}

void tell(std::vector<Child> &cs, const std::string &line)
{
	std::string l = line + "\n";
	for (auto &c : cs)
		if (write(c.fd, l.data(), l.size()) < 0)
			perror("qryptchat-bench: write");
}

std::vector<std::string> split(const std::string &s, char sep)
{
	std::vector<std::string> out;
	size_t from = 0;
	for (;;) {
		size_t at = s.find(sep, from);
		out.push_back(s.substr(from, at == std::string::npos ? std::string::npos : at - from));
		if (at == std::string::npos)
			return out;
		from = at + 1;
	}
}

// The summed CPU time and RSS of the server processes (NaN, -1 if none).
double servers_cpu_s(const Options &o)
{
	if (o.server_pids.empty())
		return NAN;
	double t = 0;
	for (pid_t p : o.server_pids)
		t += proc_cpu_s(p);
	return t;
}

long servers_rss_kb(const Options &o)
{
	if (o.server_pids.empty())
		return -1;
	long t = 0;
	for (pid_t p : o.server_pids)
		t += proc_rss_kb(p);
	return t;
}

double engine_cpu_s(const Engine &e)
{
	double t = 0;
	for (pid_t p : e.pids)
		t += proc_tree_cpu_s(p);
	return t;
}

bool parse_args(int argc, char **argv, Options &o)
{
	for (int i = 1; i < argc; i++) {
		std::string a = argv[i];
		if (a == "--help" || a == "-h") {
			usage(stdout);
			exit(0);
		}
		if (i + 1 >= argc) {
			fprintf(stderr, "qryptchat-bench: %s needs a value\n", a.c_str());
			return false;
		}
		std::string v = argv[++i];
		char *end = nullptr;
		double num = strtod(v.c_str(), &end);
		bool is_num = end && *end == '\0' && !v.empty();
		auto need_num = [&](double lo) {
			if (!is_num || num < lo) {
				fprintf(stderr, "qryptchat-bench: %s: bad value '%s'\n", a.c_str(), v.c_str());
				return false;
			}
			return true;
		};
		if (a == "--url") {
			for (const auto &u : split(v, ','))
				if (!u.empty())
					o.urls.push_back(u);
		} else if (a == "--server-pid" || a == "--engine") {
			Engine e;
			std::string list = v;
			if (a == "--engine") {
				size_t eq = v.find('=');
				e.name = eq == std::string::npos ? "" : v.substr(0, eq);
				list = eq == std::string::npos ? "" : v.substr(eq + 1);
			}
			for (const auto &p : split(list, ',')) {
				long pid = strtol(p.c_str(), &end, 10);
				if (p.empty() || *end || pid < 1) {
					fprintf(stderr, "qryptchat-bench: %s: bad value '%s'\n", a.c_str(), v.c_str());
					return false;
				}
				e.pids.push_back(static_cast<pid_t>(pid));
			}
			if (a == "--server-pid") {
				o.server_pids.insert(o.server_pids.end(), e.pids.begin(), e.pids.end());
			} else if (e.name.empty() || e.pids.empty() || e.name.find_first_of("\"\\ ") != std::string::npos) {
				fprintf(stderr, "qryptchat-bench: --engine needs NAME=PID[,PID...]\n");
				return false;
			} else {
				o.engines.push_back(e);
			}
		}
		else if (a == "--secret")
			o.secret = v;
		else if (a == "--secret-file") {
			std::ifstream f(v);
			if (!f) {
				fprintf(stderr, "qryptchat-bench: cannot read %s\n", v.c_str());
				return false;
			}
			std::getline(f, o.secret);
		} else if (a == "--rooms" && need_num(1))
			o.rooms = static_cast<int>(num);
		else if (a == "--members" && need_num(2))
			o.members = static_cast<int>(num);
		else if (a == "--senders" && need_num(0))
			o.senders = static_cast<int>(num);
		else if (a == "--rate" && need_num(0))
			o.rate = num;
		else if (a == "--window" && need_num(1))
			o.window = static_cast<int>(num);
		else if (a == "--payload" && need_num(0))
			o.payload = static_cast<int>(num);
		else if (a == "--duration" && need_num(0.1))
			o.duration = num;
		else if (a == "--warmup" && need_num(0))
			o.warmup = num;
		else if (a == "--drain" && need_num(0))
			o.drain = num;
		else if (a == "--procs" && need_num(1))
			o.procs = static_cast<int>(num);
		else if (a == "--idle" && need_num(1))
			o.idle = static_cast<int>(num);
		else if (a == "--label")
			o.label = v;
		else if (a == "--prefix")
			o.prefix = v;
		else {
			if (a == "--rooms" || a == "--members" || a == "--senders" || a == "--rate" ||
			    a == "--window" || a == "--payload" || a == "--duration" || a == "--warmup" ||
			    a == "--drain" || a == "--procs" || a == "--idle")
				return false;
			fprintf(stderr, "qryptchat-bench: unknown option %s\n", a.c_str());
			usage(stderr);
			return false;
		}
	}
	if (o.secret.size() < 32) {
		fprintf(stderr, "qryptchat-bench: --secret or --secret-file (at least 32 bytes) is required\n");
		return false;
	}
	if (o.senders > o.members) {
		fprintf(stderr, "qryptchat-bench: --senders cannot exceed --members\n");
		return false;
	}
	if (o.urls.empty())
		o.urls.push_back("ws://127.0.0.1:8080/ws");
	if (o.prefix.empty())
		o.prefix = "b" + std::to_string(getpid()) + "t" + std::to_string(time(nullptr) % 100000) + "-";
	return true;
}

} // namespace

int main(int argc, char **argv)
{
	Options o;
	if (!parse_args(argc, argv, o))
		return 2;
	signal(SIGPIPE, SIG_IGN);
	bool have_server = !o.server_pids.empty();
	long rss_before = servers_rss_kb(o);

	std::vector<Child> cs;
	for (int i = 0; i < o.procs; i++) {
		int sv[2];
		if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
			perror("qryptchat-bench: socketpair");
			return 1;
		}
		pid_t pid = fork();
		if (pid == 0) {
			close(sv[0]);
			for (auto &c : cs)
				close(c.fd);
			run_client(o, sv[1], i);
		}
		close(sv[1]);
		cs.push_back(Child{pid, sv[0], ""});
	}
	auto fail = [&]() {
		for (auto &c : cs)
			kill(c.pid, SIGKILL);
		for (auto &c : cs)
			waitpid(c.pid, nullptr, 0);
		return 1;
	};
	int64_t t_setup = mono_ns();
	if (!gather(cs, "authed", 120))
		return fail();
	if (o.idle == 0) {
		tell(cs, "create");
		if (!gather(cs, "joined", 120))
			return fail();
	}
	double setup_s = static_cast<double>(mono_ns() - t_setup) / 1e9;

	int64_t go = mono_ns() + 50000000;
	int64_t t0 = go + static_cast<int64_t>(o.warmup * 1e9);
	int64_t t1 = t0 + static_cast<int64_t>(o.duration * 1e9);
	tell(cs, "start " + std::to_string(go) + " " + std::to_string(t0) + " " + std::to_string(t1));
	// The measured window, as the server and the clients spend it.
	while (mono_ns() < t0)
		usleep(static_cast<useconds_t>(std::min<int64_t>((t0 - mono_ns()) / 1000, 100000)));
	double srv0 = servers_cpu_s(o);
	std::vector<double> eng0;
	for (const auto &e : o.engines)
		eng0.push_back(engine_cpu_s(e));
	double cli0 = 0;
	for (auto &c : cs)
		cli0 += proc_cpu_s(c.pid);
	while (mono_ns() < t1)
		usleep(static_cast<useconds_t>(std::min<int64_t>((t1 - mono_ns()) / 1000, 100000)));
	double srv1 = servers_cpu_s(o);
	std::vector<double> eng_cpu;
	for (size_t i = 0; i < o.engines.size(); i++)
		eng_cpu.push_back(engine_cpu_s(o.engines[i]) - eng0[i]);
	double cli1 = 0;
	for (auto &c : cs)
		cli1 += proc_cpu_s(c.pid);
	long rss = servers_rss_kb(o);

	std::vector<std::string> lines(cs.size());
	if (!gather(cs, "result", o.drain + 60, &lines))
		return fail();
	for (auto &c : cs)
		waitpid(c.pid, nullptr, 0);

	Result tot;
	for (const auto &line : lines) {
		std::istringstream in(line);
		std::string word;
		uint64_t sent, received, acks, errors, closed, maxus, acks_win, arrived_win;
		size_t ncodes;
		in >> word >> sent >> received >> acks >> errors >> closed >> maxus >> acks_win >> arrived_win >>
			ncodes;
		tot.acks_in_window += acks_win;
		tot.arrived_in_window += arrived_win;
		tot.sent += sent;
		tot.received += received;
		tot.acks += acks;
		tot.errors += errors;
		tot.closed += closed;
		tot.lat.max_us = std::max(tot.lat.max_us, maxus);
		for (size_t i = 0; i < ncodes; i++) {
			std::string code;
			uint64_t n;
			in >> code >> n;
			tot.error_codes[code] += n;
		}
		while (in >> word) {
			size_t colon = word.find(':');
			tot.lat.b[std::stoul(word.substr(0, colon))] += std::stoull(word.substr(colon + 1));
		}
	}
	uint64_t expected = o.idle ? 0 : tot.sent * static_cast<uint64_t>(o.members);
	double dps = static_cast<double>(tot.received) / o.duration;
	double srv_cpu = srv1 - srv0, cli_cpu = cli1 - cli0;
	double cpu_per_1k = tot.received ? srv_cpu * 1000.0 / static_cast<double>(tot.received) : NAN;
	double loss = expected ? 1.0 - static_cast<double>(tot.received) / static_cast<double>(expected) : 0;
	int conns = o.idle ? o.idle : o.rooms * o.members;

	printf("qryptchat-bench %s\n", o.label.c_str());
	printf("  load            %d connections; ", conns);
	if (o.idle)
		printf("idle\n");
	else if (o.rate > 0)
		printf("%d rooms x %d members, %d senders/room at %g msg/s, %d-byte content\n", o.rooms,
		       o.members, o.senders, o.rate, o.payload);
	else
		printf("%d rooms x %d members, %d senders/room saturating (window %d), %d-byte content\n",
		       o.rooms, o.members, o.senders, o.window, o.payload);
	printf("  setup           %.2f s (connect, authenticate, create, join)\n", setup_s);
	printf("  window          %.1f s after %.1f s warm-up, %d client processes\n", o.duration,
	       o.warmup, o.procs);
	if (!o.idle) {
		printf("  messages sent   %llu (%.0f/s)\n", static_cast<unsigned long long>(tot.sent),
		       static_cast<double>(tot.sent) / o.duration);
		printf("  deliveries      %llu of %llu expected (loss %.4f%%), %.0f/s\n",
		       static_cast<unsigned long long>(tot.received),
		       static_cast<unsigned long long>(expected), loss * 100, dps);
		printf("  latency ms      p50 %.2f  p90 %.2f  p99 %.2f  max %.2f\n", tot.lat.quantile_ms(0.5),
		       tot.lat.quantile_ms(0.9), tot.lat.quantile_ms(0.99),
		       static_cast<double>(tot.lat.max_us) / 1000.0);
		printf("  in the window   %.0f acknowledgements/s, %.0f message_received/s, whenever sent\n",
		       static_cast<double>(tot.acks_in_window) / o.duration,
		       static_cast<double>(tot.arrived_in_window) / o.duration);
	}
	if (o.urls.size() > 1)
		printf("  servers         %zu, member i of each room on server i %% %zu\n", o.urls.size(),
		       o.urls.size());
	if (have_server) {
		printf("  server CPU      %.2f s in the window (%.0f%% of a core)", srv_cpu,
		       srv_cpu / o.duration * 100);
		if (o.server_pids.size() > 1)
			printf(", the sum of %zu processes", o.server_pids.size());
		if (!o.idle)
			printf(", %.3f s per 1000 deliveries (%.2f us each)", cpu_per_1k, cpu_per_1k * 1000);
		printf("\n  server RSS      %.1f MB (%.1f MB before the clients connected", rss / 1024.0,
		       rss_before / 1024.0);
		if (o.idle)
			printf("; %.2f KB per connection", static_cast<double>(rss - rss_before) / conns);
		printf(")\n");
	}
	for (size_t i = 0; i < o.engines.size(); i++) {
		printf("  %-15s %.2f s CPU in the window (%.0f%% of a core)", o.engines[i].name.c_str(),
		       eng_cpu[i], eng_cpu[i] / o.duration * 100);
		if (!o.idle && tot.received)
			printf(", %.2f us per delivery", eng_cpu[i] * 1e6 / static_cast<double>(tot.received));
		printf("\n");
	}
	printf("  bench CPU       %.2f s in the window (%.0f%% of a core over %d processes)\n", cli_cpu,
	       cli_cpu / o.duration * 100, o.procs);
	if (tot.errors || tot.closed) {
		printf("  errors          %llu error frames, %llu connections lost",
		       static_cast<unsigned long long>(tot.errors),
		       static_cast<unsigned long long>(tot.closed));
		for (const auto &e : tot.error_codes)
			printf(" %s=%llu", e.first.c_str(), static_cast<unsigned long long>(e.second));
		printf("\n");
	}
	auto num = [](double v) { return std::isnan(v) ? std::string("null") : std::to_string(v); };
	std::string engines;
	for (size_t i = 0; i < o.engines.size(); i++)
		engines += (i ? ",\"" : "\"") + o.engines[i].name + "\":" + num(eng_cpu[i]);
	printf("{\"label\":\"%s\",\"connections\":%d,\"rooms\":%d,\"members\":%d,\"senders\":%d,\"rate\":%g,"
	       "\"payload\":%d,\"duration_s\":%g,\"sent\":%llu,\"expected\":%llu,\"received\":%llu,"
	       "\"loss\":%s,\"deliveries_per_s\":%s,\"p50_ms\":%s,\"p90_ms\":%s,\"p99_ms\":%s,"
	       "\"max_ms\":%s,\"server_cpu_s\":%s,\"server_cpu_s_per_1000\":%s,\"server_rss_kb\":%ld,"
	       "\"server_rss_before_kb\":%ld,\"bench_cpu_s\":%s,\"errors\":%llu,\"closed\":%llu,"
	       "\"setup_s\":%s,\"servers\":%zu,\"engine_cpu_s\":{%s},\"acked_in_window\":%llu,"
	       "\"arrived_in_window\":%llu}\n",
	       o.label.c_str(), conns, o.idle ? 0 : o.rooms, o.idle ? 0 : o.members, o.senders, o.rate,
	       o.payload, o.duration, static_cast<unsigned long long>(tot.sent),
	       static_cast<unsigned long long>(expected), static_cast<unsigned long long>(tot.received),
	       num(loss).c_str(), num(dps).c_str(), num(tot.lat.quantile_ms(0.5)).c_str(),
	       num(tot.lat.quantile_ms(0.9)).c_str(), num(tot.lat.quantile_ms(0.99)).c_str(),
	       num(static_cast<double>(tot.lat.max_us) / 1000.0).c_str(), num(srv_cpu).c_str(),
	       num(cpu_per_1k).c_str(), rss, rss_before, num(cli_cpu).c_str(),
	       static_cast<unsigned long long>(tot.errors), static_cast<unsigned long long>(tot.closed),
	       num(setup_s).c_str(), o.urls.size(), engines.c_str(),
	       static_cast<unsigned long long>(tot.acks_in_window),
	       static_cast<unsigned long long>(tot.arrived_in_window));
	return 0;
}
