// RFC 6455 client and one-shot HTTP/1.1 requests for the integration tests.
//
// Every socket is non-blocking and every wait is a poll() against a deadline
// computed once per call, so a call's timeout is its overall budget, not a
// per-read allowance.  Writes use MSG_NOSIGNAL: a peer that has gone away
// yields a failed send, never a SIGPIPE in the test process.
#include "wsclient.hpp"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <random>

namespace qc::test {

namespace {

using Clock = std::chrono::steady_clock;

// Budget for connecting and for the whole opening handshake / HTTP exchange.
constexpr int kHttpTimeoutMs = 5000;
// Budget for the TCP connect of http_request_to.
constexpr int kConnectTimeoutMs = 2000;
// Budget for writing one frame or raw chunk (the peer may stop reading).
constexpr int kSendTimeoutMs = 10000;
// Largest response head accepted.
constexpr size_t kMaxHead = 64 * 1024;
// Largest frame payload accepted from the server.
constexpr uint64_t kMaxPayload = 256ull * 1024 * 1024;
// The GUID of RFC 6455 section 1.3.
constexpr const char *kWsGuid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

Clock::time_point deadline_in(int ms)
{
	return Clock::now() + std::chrono::milliseconds(ms < 0 ? 0 : ms);
}

// Milliseconds left until `deadline`, rounded up, 0 when passed.
int remaining_ms(Clock::time_point deadline)
{
	auto left = deadline - Clock::now();
	if (left <= Clock::duration::zero())
		return 0;
	long long ms = std::chrono::ceil<std::chrono::milliseconds>(left).count();
	return ms > INT_MAX ? INT_MAX : static_cast<int>(ms);
}

// Owns a file descriptor; closes it on destruction.
class UniqueFd {
public:
	UniqueFd() = default;
	explicit UniqueFd(int fd) : fd_(fd) {}
	~UniqueFd() { reset(); }
	UniqueFd(const UniqueFd &) = delete;
	UniqueFd &operator=(const UniqueFd &) = delete;
	UniqueFd(UniqueFd &&other) noexcept : fd_(other.release()) {}
	UniqueFd &operator=(UniqueFd &&other) noexcept
	{
		if (this != &other)
			reset(other.release());
		return *this;
	}

	int get() const { return fd_; }
	bool valid() const { return fd_ >= 0; }
	int release()
	{
		int fd = fd_;
		fd_ = -1;
		return fd;
	}
	void reset(int fd = -1)
	{
		if (fd_ >= 0)
			::close(fd_);
		fd_ = fd;
	}

private:
	int fd_ = -1;
};

// Waits until `fd` is ready for `events` (or has an error / hangup).
// Returns 1 when ready, 0 at the deadline, -1 on a poll error.
int wait_fd(int fd, short events, Clock::time_point deadline)
{
	for (;;) {
		struct pollfd p = {fd, events, 0};
		int r = ::poll(&p, 1, remaining_ms(deadline));
		if (r > 0)
			return 1;
		if (r == 0)
			return 0;
		if (errno != EINTR)
			return -1;
	}
}

enum class Io { Data, Eof, Timeout, Error };

// Appends what is available on `fd` to `buf`, waiting until the deadline
// for at least one byte.  A connection reset counts as end of stream.
Io read_some(int fd, std::string &buf, Clock::time_point deadline)
{
	char tmp[65536];
	for (;;) {
		ssize_t n = ::recv(fd, tmp, sizeof tmp, 0);
		if (n > 0) {
			buf.append(tmp, static_cast<size_t>(n));
			return Io::Data;
		}
		if (n == 0)
			return Io::Eof;
		if (errno == EINTR)
			continue;
		if (errno == ECONNRESET)
			return Io::Eof;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return Io::Error;
		int w = wait_fd(fd, POLLIN, deadline);
		if (w == 0)
			return Io::Timeout;
		if (w < 0)
			return Io::Error;
	}
}

// Writes all of `data` before the deadline; false on error or timeout.
bool send_all(int fd, const char *data, size_t len, Clock::time_point deadline)
{
	while (len > 0) {
		ssize_t n = ::send(fd, data, len, MSG_NOSIGNAL);
		if (n > 0) {
			data += n;
			len -= static_cast<size_t>(n);
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
			return false;
		if (wait_fd(fd, POLLOUT, deadline) <= 0)
			return false;
	}
	return true;
}

bool send_all(int fd, const std::string &data, Clock::time_point deadline)
{
	return send_all(fd, data.data(), data.size(), deadline);
}

// Opens a non-blocking, close-on-exec TCP connection (TCP_NODELAY, so that
// split frames really go out split).  Invalid fd on failure or deadline.
UniqueFd connect_addr(const struct sockaddr *addr, socklen_t len, Clock::time_point deadline)
{
	UniqueFd fd(::socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
	if (!fd.valid())
		return fd;
	int one = 1;
	::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	if (::connect(fd.get(), addr, len) == 0)
		return fd;
	if (errno != EINPROGRESS && errno != EINTR)
		return UniqueFd();
	if (wait_fd(fd.get(), POLLOUT, deadline) <= 0)
		return UniqueFd();
	int err = 0;
	socklen_t errlen = sizeof err;
	if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &errlen) != 0 || err != 0)
		return UniqueFd();
	return fd;
}

UniqueFd connect_loopback(int port, Clock::time_point deadline)
{
	if (port <= 0 || port > 65535)
		return UniqueFd();
	struct sockaddr_in sin;
	std::memset(&sin, 0, sizeof sin);
	sin.sin_family = AF_INET;
	sin.sin_port = htons(static_cast<uint16_t>(port));
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return connect_addr(reinterpret_cast<const struct sockaddr *>(&sin), sizeof sin, deadline);
}

char lower_ascii(char c)
{
	return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

std::string lower(const std::string &s)
{
	std::string out(s);
	for (char &c : out)
		c = lower_ascii(c);
	return out;
}

bool iequals(const std::string &a, const std::string &b)
{
	return lower(a) == lower(b);
}

std::string trim(const std::string &s)
{
	size_t b = s.find_first_not_of(" \t");
	if (b == std::string::npos)
		return "";
	size_t e = s.find_last_not_of(" \t");
	return s.substr(b, e - b + 1);
}

// True if the comma-separated header value contains `token` (any case).
bool has_token(const std::string &value, const std::string &token)
{
	size_t pos = 0;
	while (pos <= value.size()) {
		size_t comma = value.find(',', pos);
		if (comma == std::string::npos)
			comma = value.size();
		if (iequals(trim(value.substr(pos, comma - pos)), token))
			return true;
		pos = comma + 1;
	}
	return false;
}

// Random bytes for keys and masks; OpenSSL's CSPRNG, std::random_device if
// that ever fails (masks only need to be unpredictable to the server).
void random_bytes(unsigned char *out, size_t n)
{
	if (RAND_bytes(out, static_cast<int>(n)) == 1)
		return;
	std::random_device rd;
	for (size_t i = 0; i < n; i++)
		out[i] = static_cast<unsigned char>(rd());
}

std::string base64(const unsigned char *data, size_t len)
{
	std::string out(4 * ((len + 2) / 3) + 1, '\0');
	int n = EVP_EncodeBlock(reinterpret_cast<unsigned char *>(&out[0]), data,
				static_cast<int>(len));
	out.resize(n < 0 ? 0 : static_cast<size_t>(n));
	return out;
}

// Sec-WebSocket-Accept for `key`: base64(SHA-1(key + GUID)).
std::string accept_for(const std::string &key)
{
	std::string in = key + kWsGuid;
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	if (EVP_Digest(in.data(), in.size(), md, &mdlen, EVP_sha1(), nullptr) != 1)
		return "";
	return base64(md, mdlen);
}

// The request headers: `defaults` in order, each replaced in place by the
// first header of `extra` with the same name; the rest of `extra` appended.
Headers merge_headers(const Headers &defaults, const Headers &extra)
{
	Headers out = defaults;
	std::vector<bool> replaced(out.size(), false);
	for (const auto &h : extra) {
		bool done = false;
		for (size_t i = 0; i < out.size() && !done; i++) {
			if (!replaced[i] && iequals(out[i].first, h.first)) {
				out[i].second = h.second;
				replaced[i] = true;
				done = true;
			}
		}
		if (!done)
			out.push_back(h);
	}
	return out;
}

std::string header_value(const Headers &headers, const std::string &name)
{
	for (const auto &h : headers)
		if (iequals(h.first, name))
			return h.second;
	return "";
}

std::string request_head(const std::string &method, const std::string &target,
			 const Headers &headers)
{
	std::string req = method + " " + target + " HTTP/1.1\r\n";
	for (const auto &h : headers)
		req += h.first + ": " + h.second + "\r\n";
	req += "\r\n";
	return req;
}

// Offset just past the blank line ending the head ("\r\n\r\n", or a bare
// "\n\n" from a sloppy server), npos if not complete yet.
size_t head_end(const std::string &buf)
{
	size_t crlf = buf.find("\r\n\r\n");
	size_t lf = buf.find("\n\n");
	if (crlf != std::string::npos && (lf == std::string::npos || crlf < lf))
		return crlf + 4;
	if (lf != std::string::npos)
		return lf + 2;
	return std::string::npos;
}

// Reads until the response head is complete.  On success `body_start` is
// the offset of the first byte after the head in `buf`.
bool read_head(int fd, std::string &buf, size_t &body_start, Clock::time_point deadline)
{
	for (;;) {
		body_start = head_end(buf);
		if (body_start != std::string::npos)
			return true;
		if (buf.size() > kMaxHead)
			return false;
		if (read_some(fd, buf, deadline) != Io::Data)
			return false;
	}
}

// Parses the status line and header fields of `head`; false if the status
// line is not HTTP.
bool parse_head(const std::string &head, HttpResponse &resp)
{
	size_t pos = 0;
	bool first = true;
	while (pos < head.size()) {
		size_t eol = head.find('\n', pos);
		if (eol == std::string::npos)
			eol = head.size();
		std::string line = head.substr(pos, eol - pos);
		pos = eol + 1;
		if (!line.empty() && line.back() == '\r')
			line.pop_back();
		if (first) {
			first = false;
			// "HTTP/1.1 101 Switching Protocols"
			if (line.compare(0, 5, "HTTP/") != 0)
				return false;
			size_t sp = line.find(' ');
			if (sp == std::string::npos || line.size() < sp + 4)
				return false;
			int status = 0;
			for (size_t i = sp + 1; i < sp + 4; i++) {
				if (line[i] < '0' || line[i] > '9')
					return false;
				status = status * 10 + (line[i] - '0');
			}
			resp.status = status;
			continue;
		}
		if (line.empty())
			break;
		size_t colon = line.find(':');
		if (colon == std::string::npos)
			continue;
		resp.headers.emplace_back(trim(line.substr(0, colon)),
					  trim(line.substr(colon + 1)));
	}
	return !first;
}

// Decodes a chunked body from `in` into `out`; true once the last chunk
// and the trailer have been seen (`out` holds what is complete so far).
bool decode_chunked(const std::string &in, std::string &out)
{
	out.clear();
	size_t pos = 0;
	for (;;) {
		size_t eol = in.find("\r\n", pos);
		if (eol == std::string::npos)
			return false;
		std::string line = in.substr(pos, eol - pos);
		char *end = nullptr;
		unsigned long long n = std::strtoull(line.c_str(), &end, 16);
		if (end == line.c_str())
			return true; // malformed: keep what we have, stop reading
		pos = eol + 2;
		if (n == 0) {
			for (;;) { // trailer fields, then an empty line
				size_t e = in.find("\r\n", pos);
				if (e == std::string::npos)
					return false;
				if (e == pos)
					return true;
				pos = e + 2;
			}
		}
		if (in.size() - pos < n + 2) {
			out.append(in, pos, static_cast<size_t>(n));
			return false;
		}
		out.append(in, pos, static_cast<size_t>(n));
		pos += static_cast<size_t>(n) + 2;
	}
}

// Reads the body into resp.body: chunked, Content-Length bytes, or up to
// EOF; stops early at the deadline with what has arrived.  `buf` holds the
// bytes already read after the head.
void read_body(int fd, std::string buf, HttpResponse &resp, bool no_body,
	       Clock::time_point deadline)
{
	if (no_body || resp.status / 100 == 1 || resp.status == 204 || resp.status == 304)
		return;
	if (has_token(resp.header("Transfer-Encoding"), "chunked")) {
		while (!decode_chunked(buf, resp.body))
			if (read_some(fd, buf, deadline) != Io::Data)
				break;
		return;
	}
	std::string cl = resp.header("Content-Length");
	if (!cl.empty()) {
		unsigned long long len = std::strtoull(cl.c_str(), nullptr, 10);
		while (buf.size() < len)
			if (read_some(fd, buf, deadline) != Io::Data)
				break;
		if (buf.size() > len)
			buf.resize(static_cast<size_t>(len));
		resp.body = std::move(buf);
		return;
	}
	while (read_some(fd, buf, deadline) == Io::Data) {
	}
	resp.body = std::move(buf);
}

// Sends a request on a connected socket and reads the whole response.
HttpResponse exchange(int fd, const std::string &method, const std::string &target,
		      const Headers &headers, Clock::time_point deadline)
{
	HttpResponse resp;
	if (!send_all(fd, request_head(method, target, headers), deadline))
		return resp;
	std::string buf;
	size_t body_start = 0;
	if (!read_head(fd, buf, body_start, deadline))
		return resp;
	if (!parse_head(buf.substr(0, body_start), resp)) {
		resp = HttpResponse();
		return resp;
	}
	read_body(fd, buf.substr(body_start), resp, method == "HEAD", deadline);
	return resp;
}

// One parsed frame.
struct Frame {
	bool fin = false;
	int opcode = 0;
	std::string payload;
};

enum class Parse { Need, Ok, Bad };

// Encodes one frame; the payload is masked with a fresh random key when
// `masked`.  Only the low 4 bits of `opcode` are used.
std::string encode_frame(int opcode, const std::string &payload, bool fin, bool masked)
{
	std::string f;
	size_t n = payload.size();
	f.reserve(n + 14);
	f.push_back(static_cast<char>((fin ? 0x80 : 0x00) | (opcode & 0x0f)));
	unsigned char mbit = masked ? 0x80 : 0x00;
	if (n < 126) {
		f.push_back(static_cast<char>(mbit | n));
	} else if (n <= 0xffff) {
		f.push_back(static_cast<char>(mbit | 126));
		f.push_back(static_cast<char>((n >> 8) & 0xff));
		f.push_back(static_cast<char>(n & 0xff));
	} else {
		f.push_back(static_cast<char>(mbit | 127));
		uint64_t n64 = n;
		for (int i = 7; i >= 0; i--)
			f.push_back(static_cast<char>((n64 >> (8 * i)) & 0xff));
	}
	if (!masked) {
		f += payload;
		return f;
	}
	unsigned char key[4];
	random_bytes(key, sizeof key);
	f.append(reinterpret_cast<const char *>(key), sizeof key);
	size_t off = f.size();
	f.resize(off + n);
	for (size_t i = 0; i < n; i++)
		f[off + i] = static_cast<char>(static_cast<unsigned char>(payload[i]) ^ key[i % 4]);
	return f;
}

WsEvent make_event(WsEvent::Kind kind, std::string data = "", int code = 0)
{
	WsEvent ev;
	ev.kind = kind;
	ev.data = std::move(data);
	ev.close_code = code;
	return ev;
}

} // namespace

std::string HttpResponse::header(const std::string &name) const
{
	return header_value(headers, name);
}

HttpResponse http_request(int port, const std::string &method, const std::string &target,
			  const Headers &headers, const std::string &host)
{
	// Host is "<host>:<port>" (omitted when host is empty); a Host or
	// Connection entry in `headers` replaces the default.
	auto deadline = deadline_in(kHttpTimeoutMs);
	UniqueFd fd = connect_loopback(port, deadline);
	if (!fd.valid())
		return HttpResponse();
	Headers defaults;
	if (!host.empty())
		defaults.emplace_back("Host", host + ":" + std::to_string(port));
	defaults.emplace_back("Connection", "close");
	return exchange(fd.get(), method, target, merge_headers(defaults, headers), deadline);
}

HttpResponse http_request_to(const std::string &host, int port, const std::string &method,
			     const std::string &target, const Headers &headers)
{
	HttpResponse failed;
	failed.status = -1;
	auto deadline = deadline_in(kHttpTimeoutMs);
	struct addrinfo hints;
	std::memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
	struct addrinfo *ai = nullptr;
	if (port <= 0 || port > 65535 ||
	    ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &ai) != 0 || !ai)
		return failed;
	int family = ai->ai_family;
	UniqueFd fd = connect_addr(ai->ai_addr, ai->ai_addrlen, deadline_in(kConnectTimeoutMs));
	::freeaddrinfo(ai);
	if (!fd.valid())
		return failed;
	std::string authority = family == AF_INET6 ? "[" + host + "]" : host;
	Headers defaults = {{"Host", authority + ":" + std::to_string(port)},
			    {"Connection", "close"}};
	return exchange(fd.get(), method, target, merge_headers(defaults, headers), deadline);
}

// Connection state.  Bytes are read into rbuf and consumed from rpos; a
// fragmented message being assembled lives in msg (msg_opcode 0: none).
struct WsClient::Impl {
	UniqueFd fd;
	std::string rbuf;
	size_t rpos = 0;
	std::string msg;
	int msg_opcode = 0;
	bool auto_pong = true;
	int pings = 0;
	bool eof = false;        // the peer closed the TCP connection
	bool close_seen = false; // a Close frame has been returned
	bool close_sent = false; // we have sent a Close frame
	std::string broken;      // protocol error seen; every recv returns it

	Parse parse(Frame &f, std::string &why);
	bool send(const std::string &bytes);
	// Handles one frame; true when it completes an event for recv().
	bool handle(Frame &f, WsEvent &ev);
	WsEvent drain_to_eof(Clock::time_point deadline);
};

bool WsClient::Impl::send(const std::string &bytes)
{
	return fd.valid() && send_all(fd.get(), bytes, deadline_in(kSendTimeoutMs));
}

// Takes one complete frame off the read buffer.  Need: more bytes are
// required; Bad: the server broke RFC 6455 (reason in `why`).
Parse WsClient::Impl::parse(Frame &f, std::string &why)
{
	size_t avail = rbuf.size() - rpos;
	const unsigned char *p = reinterpret_cast<const unsigned char *>(rbuf.data()) + rpos;
	if (avail < 2)
		return Parse::Need;
	f.fin = (p[0] & 0x80) != 0;
	f.opcode = p[0] & 0x0f;
	bool masked = (p[1] & 0x80) != 0;
	uint64_t len = p[1] & 0x7f;
	size_t hdr = 2;
	if (p[0] & 0x70) {
		why = "frame with reserved bits set";
		return Parse::Bad;
	}
	if ((f.opcode >= 3 && f.opcode <= 7) || f.opcode >= 11) {
		why = "frame with reserved opcode " + std::to_string(f.opcode);
		return Parse::Bad;
	}
	if (masked) {
		why = "masked frame from the server";
		return Parse::Bad;
	}
	if (len == 126) {
		if (avail < 4)
			return Parse::Need;
		len = (uint64_t(p[2]) << 8) | p[3];
		hdr = 4;
	} else if (len == 127) {
		if (avail < 10)
			return Parse::Need;
		len = 0;
		for (int i = 0; i < 8; i++)
			len = (len << 8) | p[2 + i];
		hdr = 10;
	}
	if (f.opcode >= 8 && (!f.fin || len > 125)) {
		why = "fragmented or oversized control frame";
		return Parse::Bad;
	}
	if (len > kMaxPayload) {
		why = "frame payload of " + std::to_string(len) + " bytes";
		return Parse::Bad;
	}
	if (avail - hdr < len)
		return Parse::Need;
	f.payload.assign(rbuf, rpos + hdr, static_cast<size_t>(len));
	rpos += hdr + static_cast<size_t>(len);
	if (rpos == rbuf.size()) {
		rbuf.clear();
		rpos = 0;
	} else if (rpos > 65536 && rpos > rbuf.size() / 2) {
		rbuf.erase(0, rpos);
		rpos = 0;
	}
	return Parse::Ok;
}

bool WsClient::Impl::handle(Frame &f, WsEvent &ev)
{
	switch (f.opcode) {
	case 9: // ping
		pings++;
		if (auto_pong && !close_sent)
			send(encode_frame(10, f.payload, true, true));
		return false;
	case 10: // unsolicited or late pong
		return false;
	case 8: { // close
		if (f.payload.size() == 1) {
			broken = "close frame with a 1-byte payload";
			ev = make_event(WsEvent::Error, broken);
			return true;
		}
		int code = 1005;
		std::string reason;
		if (f.payload.size() >= 2) {
			code = (static_cast<unsigned char>(f.payload[0]) << 8) |
			       static_cast<unsigned char>(f.payload[1]);
			reason = f.payload.substr(2);
		}
		close_seen = true;
		if (!close_sent) {
			// Echo the code (RFC 6455 5.5.1); 1005/1006/1015 never go on the wire.
			std::string body;
			if (code != 1005 && code != 1006 && code != 1015) {
				body.push_back(static_cast<char>((code >> 8) & 0xff));
				body.push_back(static_cast<char>(code & 0xff));
			}
			send(encode_frame(8, body, true, true));
			close_sent = true;
		}
		ev = make_event(WsEvent::Close, std::move(reason), code);
		return true;
	}
	case 1:
	case 2:
		if (msg_opcode != 0) {
			broken = "new data frame inside a fragmented message";
			ev = make_event(WsEvent::Error, broken);
			return true;
		}
		if (!f.fin) {
			msg_opcode = f.opcode;
			msg = std::move(f.payload);
			return false;
		}
		ev = make_event(f.opcode == 1 ? WsEvent::Text : WsEvent::Binary,
				std::move(f.payload));
		return true;
	case 0:
		if (msg_opcode == 0) {
			broken = "continuation frame without a message";
			ev = make_event(WsEvent::Error, broken);
			return true;
		}
		msg += f.payload;
		if (!f.fin)
			return false;
		ev = make_event(msg_opcode == 1 ? WsEvent::Text : WsEvent::Binary, std::move(msg));
		msg.clear();
		msg_opcode = 0;
		return true;
	default:
		broken = "unexpected opcode " + std::to_string(f.opcode);
		ev = make_event(WsEvent::Error, broken);
		return true;
	}
}

// After a Close: discards anything still arriving and waits for the TCP
// EOF.  Eof when it comes, Timeout if the server keeps the connection open.
WsEvent WsClient::Impl::drain_to_eof(Clock::time_point deadline)
{
	rbuf.clear();
	rpos = 0;
	while (!eof) {
		std::string junk;
		switch (read_some(fd.get(), junk, deadline)) {
		case Io::Data:
			break;
		case Io::Eof:
			eof = true;
			break;
		case Io::Timeout:
			return make_event(WsEvent::Timeout);
		case Io::Error:
			return make_event(WsEvent::Error, std::strerror(errno));
		}
	}
	return make_event(WsEvent::Eof);
}

std::unique_ptr<WsClient> WsClient::connect(int port, const std::string &target,
					    const Headers &headers, HttpResponse *refused)
{
	// `refused` receives the server's answer whatever it is (on success the
	// 101 response, e.g. to read Sec-WebSocket-Protocol); status 0 when none
	// was read.  A header in `headers` with the name of a default request
	// header (Host, Upgrade, Connection, Sec-WebSocket-Key,
	// Sec-WebSocket-Version) replaces it; the accept check then uses the
	// key actually sent.
	HttpResponse scratch;
	HttpResponse &resp = refused ? *refused : scratch;
	resp = HttpResponse();
	auto deadline = deadline_in(kHttpTimeoutMs);
	UniqueFd fd = connect_loopback(port, deadline);
	if (!fd.valid())
		return nullptr;

	unsigned char raw_key[16];
	random_bytes(raw_key, sizeof raw_key);
	Headers defaults = {{"Host", "127.0.0.1:" + std::to_string(port)},
			    {"Upgrade", "websocket"},
			    {"Connection", "Upgrade"},
			    {"Sec-WebSocket-Key", base64(raw_key, sizeof raw_key)},
			    {"Sec-WebSocket-Version", "13"}};
	Headers sent = merge_headers(defaults, headers);
	if (!send_all(fd.get(), request_head("GET", target, sent), deadline))
		return nullptr;

	std::string buf;
	size_t body_start = 0;
	if (!read_head(fd.get(), buf, body_start, deadline))
		return nullptr;
	if (!parse_head(buf.substr(0, body_start), resp)) {
		resp = HttpResponse();
		return nullptr;
	}
	if (resp.status != 101) {
		read_body(fd.get(), buf.substr(body_start), resp, false, deadline);
		return nullptr;
	}
	std::string want = accept_for(header_value(sent, "Sec-WebSocket-Key"));
	if (want.empty() || resp.header("Sec-WebSocket-Accept") != want ||
	    !iequals(resp.header("Upgrade"), "websocket") ||
	    !has_token(resp.header("Connection"), "upgrade"))
		return nullptr;

	std::unique_ptr<WsClient> c(new WsClient());
	c->impl_ = std::make_unique<Impl>();
	c->impl_->fd = std::move(fd);
	c->impl_->rbuf = buf.substr(body_start); // frames sent right behind the 101
	return c;
}

WsClient::~WsClient() = default;

bool WsClient::send_text(const std::string &text)
{
	return send_frame(1, text);
}

bool WsClient::send_binary(const std::string &data)
{
	return send_frame(2, data);
}

bool WsClient::send_frame(int opcode, const std::string &payload, bool fin, bool masked)
{
	if (!impl_->send(encode_frame(opcode, payload, fin, masked)))
		return false;
	if ((opcode & 0x0f) == 8)
		impl_->close_sent = true;
	return true;
}

bool WsClient::send_raw(const std::string &bytes)
{
	return impl_->send(bytes);
}

bool WsClient::send_close(int code, const std::string &reason)
{
	// The code goes out as its low 16 bits, whatever its value, so that
	// tests can send invalid codes.
	std::string body;
	body.push_back(static_cast<char>((code >> 8) & 0xff));
	body.push_back(static_cast<char>(code & 0xff));
	body += reason;
	return send_frame(8, body);
}

WsEvent WsClient::recv(int timeout_ms)
{
	// timeout_ms < 0 is taken as 0: only what has already arrived is seen.
	Impl &s = *impl_;
	auto deadline = deadline_in(timeout_ms);
	if (!s.fd.valid())
		return make_event(WsEvent::Error, "not connected");
	if (!s.broken.empty())
		return make_event(WsEvent::Error, s.broken);
	if (s.close_seen)
		return s.drain_to_eof(deadline);
	for (;;) {
		Frame f;
		std::string why;
		switch (s.parse(f, why)) {
		case Parse::Bad:
			s.broken = why;
			return make_event(WsEvent::Error, why);
		case Parse::Ok: {
			WsEvent ev;
			if (s.handle(f, ev))
				return ev;
			continue;
		}
		case Parse::Need:
			break;
		}
		if (s.eof)
			return make_event(WsEvent::Eof);
		switch (read_some(s.fd.get(), s.rbuf, deadline)) {
		case Io::Data:
			break;
		case Io::Eof:
			s.eof = true;
			break;
		case Io::Timeout:
			return make_event(WsEvent::Timeout);
		case Io::Error:
			return make_event(WsEvent::Error, std::strerror(errno));
		}
	}
}

void WsClient::set_auto_pong(bool on)
{
	impl_->auto_pong = on;
}

int WsClient::pings_received() const
{
	return impl_->pings;
}

void WsClient::abort()
{
	impl_->fd.reset();
}

bool WsClient::peer_closed() const
{
	return impl_->eof;
}

int WsClient::fd() const
{
	return impl_->fd.get();
}

} // namespace qc::test
