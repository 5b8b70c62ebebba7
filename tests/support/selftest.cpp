// Self-test of the integration-test support library: everything that can be
// checked without qryptchatd.
//
// WebSocket and HTTP peers are loopback servers written here, on 127.0.0.1
// port 0, each running a script in a thread.  A script never calls cmocka
// (a longjmp must not cross threads); it notes problems in a Record that the
// test inspects after joining.  Scripts synchronise with the client through
// the protocol itself (a frame from the client releases the next step);
// short timeouts appear only where the test asserts that nothing arrives.
// ServerProcess and run_binary are exercised with shell-script stand-ins
// for the binary (via $QRYPTCHATD).  Failure paths of the helpers run in a
// forked child with CMOCKA_TEST_ABORT=1, so that fail_msg() aborts it.
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
extern "C" { // cmocka 1.1.5 has no C++ guards
#include <cmocka.h>
}

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/evp.h>

#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "chat.hpp"
#include "jwt.hpp"
#include "spawn.hpp"
#include "wsclient.hpp"

using namespace qc::test;

namespace {

using Clock = std::chrono::steady_clock;

// Deadline of every step of a loopback script.
constexpr int kPeerTimeoutMs = 5000;

long elapsed_ms(Clock::time_point since)
{
	auto d = Clock::now() - since;
	return static_cast<long>(std::chrono::duration_cast<std::chrono::milliseconds>(d).count());
}

int remaining_ms(Clock::time_point deadline)
{
	auto left = deadline - Clock::now();
	if (left <= Clock::duration::zero())
		return 0;
	return static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(left).count());
}

bool contains(const std::string &hay, const std::string &needle)
{
	return hay.find(needle) != std::string::npos;
}

// What a script saw and what went wrong, read by the test after join().
struct Record {
	std::vector<std::string> errors;
	std::vector<std::pair<std::string, std::string>> seen;

	void check(bool ok, const std::string &what)
	{
		if (!ok)
			errors.push_back(what);
	}
	void note(const std::string &key, const std::string &value)
	{
		seen.emplace_back(key, value);
	}
	std::string get(const std::string &key) const
	{
		for (const auto &kv : seen)
			if (kv.first == key)
				return kv.second;
		return "<absent>";
	}
};

void assert_record_ok(const Record &rec)
{
	for (const auto &e : rec.errors)
		print_error("loopback script: %s\n", e.c_str());
	assert_int_equal(rec.errors.size(), 0);
}

// A frame as the server sees it (unmasked).
struct SrvFrame {
	bool fin = false;
	int opcode = -1;
	bool masked = false;
	std::string payload;
};

// An unmasked server frame, with 7/16/64-bit lengths as needed.
std::string srv_frame(int opcode, const std::string &payload, bool fin = true)
{
	std::string f;
	f.push_back(static_cast<char>((fin ? 0x80 : 0) | opcode));
	uint64_t n = payload.size();
	if (n < 126) {
		f.push_back(static_cast<char>(n));
	} else if (n < 65536) {
		f.push_back(static_cast<char>(126));
		f.push_back(static_cast<char>(n >> 8));
		f.push_back(static_cast<char>(n & 0xff));
	} else {
		f.push_back(static_cast<char>(127));
		for (int i = 7; i >= 0; i--)
			f.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
	}
	return f + payload;
}

std::string close_payload(int code, const std::string &reason)
{
	std::string p;
	p.push_back(static_cast<char>(code >> 8));
	p.push_back(static_cast<char>(code & 0xff));
	return p + reason;
}

// Sec-WebSocket-Accept computed independently of wsclient.cpp.
std::string ws_accept(const std::string &key)
{
	std::string in = key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int len = 0;
	EVP_Digest(in.data(), in.size(), md, &len, EVP_sha1(), nullptr);
	unsigned char out[64];
	int n = EVP_EncodeBlock(out, md, static_cast<int>(len));
	return std::string(reinterpret_cast<char *>(out), static_cast<size_t>(n));
}

std::string lower(std::string s)
{
	for (char &c : s)
		if (c >= 'A' && c <= 'Z')
			c = static_cast<char>(c - 'A' + 'a');
	return s;
}

// A parsed request head.
struct Request {
	std::string line;
	Headers headers;
	int count(const std::string &name) const
	{
		int n = 0;
		for (const auto &h : headers)
			n += lower(h.first) == lower(name);
		return n;
	}
	std::string header(const std::string &name) const
	{
		for (const auto &h : headers)
			if (lower(h.first) == lower(name))
				return h.second;
		return "<absent>";
	}
};

// Server side of one loopback connection; every read has a 5 s deadline.
class Peer {
public:
	explicit Peer(int fd) : fd_(fd) {}
	~Peer() { close_now(); }
	Peer(const Peer &) = delete;
	Peer &operator=(const Peer &) = delete;

	bool write(const std::string &bytes)
	{
		size_t done = 0;
		while (done < bytes.size()) {
			ssize_t n = ::send(fd_, bytes.data() + done, bytes.size() - done,
					   MSG_NOSIGNAL);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				return false;
			done += static_cast<size_t>(n);
		}
		return true;
	}
	// Ensures `n` bytes are buffered.
	bool need(size_t n)
	{
		auto deadline = Clock::now() + std::chrono::milliseconds(kPeerTimeoutMs);
		while (buf_.size() < n)
			if (!fill(deadline))
				return false;
		return true;
	}
	bool read_until(const std::string &needle, std::string &out)
	{
		auto deadline = Clock::now() + std::chrono::milliseconds(kPeerTimeoutMs);
		size_t pos;
		while ((pos = buf_.find(needle)) == std::string::npos)
			if (!fill(deadline))
				return false;
		out = buf_.substr(0, pos + needle.size());
		buf_.erase(0, pos + needle.size());
		return true;
	}
	bool read_request(Request &req)
	{
		std::string head;
		if (!read_until("\r\n\r\n", head))
			return false;
		size_t eol = head.find("\r\n");
		req.line = head.substr(0, eol);
		size_t pos = eol + 2;
		while (pos < head.size()) {
			size_t e = head.find("\r\n", pos);
			std::string l = head.substr(pos, e - pos);
			pos = e + 2;
			size_t colon = l.find(':');
			if (colon == std::string::npos)
				continue;
			size_t v = l.find_first_not_of(' ', colon + 1);
			req.headers.emplace_back(l.substr(0, colon),
						 v == std::string::npos ? "" : l.substr(v));
		}
		return true;
	}
	// Reads the opening handshake and answers 101 (plus `after`, in the
	// same write); `accept` overrides the computed Sec-WebSocket-Accept.
	bool handshake(Request &req, const std::string &after = "", const std::string &accept = "")
	{
		if (!read_request(req))
			return false;
		std::string acc = accept;
		if (acc.empty())
			acc = ws_accept(req.header("Sec-WebSocket-Key"));
		return write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
			     "Connection: Upgrade\r\nSec-WebSocket-Accept: " +
			     acc + "\r\n\r\n" + after);
	}
	bool read_frame(SrvFrame &f)
	{
		if (!need(2))
			return false;
		auto b = [this](size_t i) { return static_cast<unsigned char>(buf_[i]); };
		f.fin = (b(0) & 0x80) != 0;
		f.opcode = b(0) & 0x0f;
		f.masked = (b(1) & 0x80) != 0;
		uint64_t len = b(1) & 0x7f;
		size_t hdr = 2;
		if (len == 126) {
			if (!need(4))
				return false;
			len = (uint64_t(b(2)) << 8) | b(3);
			hdr = 4;
		} else if (len == 127) {
			if (!need(10))
				return false;
			len = 0;
			for (size_t i = 2; i < 10; i++)
				len = (len << 8) | b(i);
			hdr = 10;
		}
		unsigned char key[4] = {0, 0, 0, 0};
		if (f.masked) {
			if (!need(hdr + 4))
				return false;
			for (size_t i = 0; i < 4; i++)
				key[i] = b(hdr + i);
			hdr += 4;
		}
		if (!need(hdr + len))
			return false;
		f.payload = buf_.substr(hdr, len);
		for (size_t i = 0; i < f.payload.size(); i++)
			f.payload[i] = static_cast<char>(f.payload[i] ^ key[i % 4]);
		buf_.erase(0, hdr + len);
		return true;
	}
	// Reads until the client closes; counts the frames that still came.
	bool wait_eof(int &frames)
	{
		frames = 0;
		for (;;) {
			SrvFrame f;
			if (read_frame(f)) {
				frames++;
				continue;
			}
			return eof_;
		}
	}
	void shutdown_write() { ::shutdown(fd_, SHUT_WR); }
	void close_now()
	{
		if (fd_ >= 0)
			::close(fd_);
		fd_ = -1;
	}

private:
	bool fill(Clock::time_point deadline)
	{
		if (fd_ < 0 || eof_)
			return false;
		struct pollfd p = {fd_, POLLIN, 0};
		int r = ::poll(&p, 1, remaining_ms(deadline));
		if (r <= 0)
			return false;
		char tmp[65536];
		ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
		if (n <= 0) {
			eof_ = true;
			return false;
		}
		buf_.append(tmp, static_cast<size_t>(n));
		return true;
	}

	int fd_;
	bool eof_ = false;
	std::string buf_;
};

using Script = std::function<void(Peer &)>;

// Listens on the loopback address, port 0, and runs `script` in a thread
// on each of the next `connections` accepted connections, one at a time.
// The thread owns copies of everything it uses, so a test aborted by a
// failed assertion leaves no dangling references behind.
class Loopback {
public:
	explicit Loopback(Script script, int connections = 1, int family = AF_INET)
	{
		int fd = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return;
		struct sockaddr_storage ss;
		std::memset(&ss, 0, sizeof ss);
		socklen_t len;
		if (family == AF_INET6) {
			auto *s6 = reinterpret_cast<struct sockaddr_in6 *>(&ss);
			s6->sin6_family = AF_INET6;
			s6->sin6_addr = in6addr_loopback;
			len = sizeof *s6;
		} else {
			auto *s4 = reinterpret_cast<struct sockaddr_in *>(&ss);
			s4->sin_family = AF_INET;
			s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
			len = sizeof *s4;
		}
		if (::bind(fd, reinterpret_cast<struct sockaddr *>(&ss), len) != 0 ||
		    ::listen(fd, 8) != 0 ||
		    ::getsockname(fd, reinterpret_cast<struct sockaddr *>(&ss), &len) != 0) {
			::close(fd);
			return;
		}
		port_ = ntohs(family == AF_INET6
				      ? reinterpret_cast<struct sockaddr_in6 *>(&ss)->sin6_port
				      : reinterpret_cast<struct sockaddr_in *>(&ss)->sin_port);
		lfd_ = fd;
		th_ = std::thread(run, fd, std::move(script), connections);
	}
	~Loopback()
	{
		join();
		if (lfd_ >= 0)
			::close(lfd_);
	}
	Loopback(const Loopback &) = delete;
	Loopback &operator=(const Loopback &) = delete;

	bool ok() const { return lfd_ >= 0; }
	int port() const { return port_; }
	void join()
	{
		if (th_.joinable())
			th_.join();
	}

private:
	static void run(int lfd, Script script, int connections)
	{
		for (int i = 0; i < connections; i++) {
			struct pollfd p = {lfd, POLLIN, 0};
			if (::poll(&p, 1, kPeerTimeoutMs) <= 0)
				return;
			int fd = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
			if (fd < 0)
				return;
			Peer peer(fd);
			script(peer);
		}
	}

	int lfd_ = -1;
	int port_ = 0;
	std::thread th_;
};

// A port on 127.0.0.1 that is bound but not listening: connections to it
// are refused for as long as the returned socket stays open.
int refusing_port(int &holder)
{
	holder = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sin;
	std::memset(&sin, 0, sizeof sin);
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t len = sizeof sin;
	if (holder < 0 || ::bind(holder, reinterpret_cast<struct sockaddr *>(&sin), len) != 0 ||
	    ::getsockname(holder, reinterpret_cast<struct sockaddr *>(&sin), &len) != 0)
		return -1;
	return ntohs(sin.sin_port);
}

std::string b64url_decode(const std::string &in)
{
	std::string out;
	unsigned long acc = 0;
	int bits = 0;
	for (char c : in) {
		int v;
		if (c >= 'A' && c <= 'Z')
			v = c - 'A';
		else if (c >= 'a' && c <= 'z')
			v = c - 'a' + 26;
		else if (c >= '0' && c <= '9')
			v = c - '0' + 52;
		else if (c == '-')
			v = 62;
		else if (c == '_')
			v = 63;
		else
			return "<bad>";
		acc = (acc << 6) | static_cast<unsigned long>(v);
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out.push_back(static_cast<char>((acc >> bits) & 0xff));
		}
	}
	return out;
}

// Runs `fn` in a forked child in which a cmocka failure aborts.  True when
// the child aborted and its stderr contains every string of `needles`.
bool fails_with(const std::function<void()> &fn, const std::vector<std::string> &needles)
{
	std::string dir = make_temp_dir();
	std::string errfile = dir + "/stderr";
	std::fflush(stdout);
	std::fflush(stderr);
	pid_t pid = ::fork();
	if (pid == 0) {
		int fd = ::open(errfile.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
		::dup2(fd, 2);
		::setenv("CMOCKA_TEST_ABORT", "1", 1);
		fn();
		::_exit(0);
	}
	int st = 0;
	while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
	}
	std::string err = read_file(errfile);
	remove_tree(dir);
	bool ok = WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT;
	for (const auto &n : needles)
		ok = ok && contains(err, n);
	if (!ok)
		print_error("child status %d, stderr:\n%s\n", st, err.c_str());
	return ok;
}

// Writes an executable shell script.
void write_script(const std::string &path, const std::string &body)
{
	write_file(path, "#!/bin/sh\n" + body);
	::chmod(path.c_str(), 0755);
}

// Sets (or with nullptr unsets) an environment variable for one test.
void set_env(const char *name, const char *value)
{
	if (value)
		::setenv(name, value, 1);
	else
		::unsetenv(name);
}

// ---------------------------------------------------------------- jwt.hpp

void test_b64url_rfc4648(void **)
{
	// RFC 4648 section 10, without padding, plus the two URL-safe digits.
	assert_string_equal(b64url("").c_str(), "");
	assert_string_equal(b64url("f").c_str(), "Zg");
	assert_string_equal(b64url("fo").c_str(), "Zm8");
	assert_string_equal(b64url("foo").c_str(), "Zm9v");
	assert_string_equal(b64url("foob").c_str(), "Zm9vYg");
	assert_string_equal(b64url("fooba").c_str(), "Zm9vYmE");
	assert_string_equal(b64url("foobar").c_str(), "Zm9vYmFy");
	assert_string_equal(b64url("\xfb\xff").c_str(), "-_8");
	assert_string_equal(b64url("\xfb\xff\xbf").c_str(), "-_-_");
	assert_string_equal(b64url(std::string("\0\0\0\0", 4)).c_str(), "AAAAAA");
	std::string all;
	for (int i = 0; i < 256; i++)
		all.push_back(static_cast<char>(i));
	assert_true(b64url_decode(b64url(all)) == all);
}

void test_sign_jwt_vectors(void **)
{
	// The jwt.io example.
	assert_string_equal(
		sign_jwt("{\"alg\":\"HS256\",\"typ\":\"JWT\"}",
			 "{\"sub\":\"1234567890\",\"name\":\"John Doe\",\"iat\":1516239022}",
			 "your-256-bit-secret")
			.c_str(),
		"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
		"eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ."
		"SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c");
	// RFC 7515 appendix A.1 (binary key, CR LF inside the JSON).
	std::string key = b64url_decode("AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aK"
					"tMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow");
	assert_string_equal(
		sign_jwt("{\"typ\":\"JWT\",\r\n \"alg\":\"HS256\"}",
			 "{\"iss\":\"joe\",\r\n \"exp\":1300819380,\r\n "
			 "\"http://example.com/is_root\":true}",
			 key)
			.c_str(),
		"eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9."
		"eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb2"
		"90Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
}

void test_token_for(void **)
{
	assert_true(std::strlen(kTestSecret) >= 32);
	long before = now_s();
	std::string tok = token_for("o\"dd\\sub\n\x01", 60, "\"email\":\"a@b.c\",\"n\":[1]");
	long after = now_s();
	size_t d1 = tok.find('.');
	size_t d2 = tok.find('.', d1 + 1);
	assert_true(d1 != std::string::npos && d2 != std::string::npos);
	assert_true(tok.find('.', d2 + 1) == std::string::npos);
	std::string header = b64url_decode(tok.substr(0, d1));
	std::string payload = b64url_decode(tok.substr(d1 + 1, d2 - d1 - 1));
	assert_string_equal(header.c_str(), "{\"alg\":\"HS256\",\"typ\":\"JWT\"}");
	Json j = parse_json(payload);
	assert_non_null(j.get());
	assert_string_equal(jstr(j.get(), "sub").c_str(), "o\"dd\\sub\n\x01");
	double iat = jnum(j.get(), "iat");
	assert_true(iat >= before && iat <= after);
	assert_true(jnum(j.get(), "exp") == iat + 60);
	assert_string_equal(jstr(j.get(), "email").c_str(), "a@b.c");
	assert_int_equal(jsize(j.get(), "n"), 1);
	assert_int_equal(jsize(j.get(), ""), 5);
	assert_string_equal(sign_jwt(header, payload, kTestSecret).c_str(), tok.c_str());
	// An expired token is just a negative ttl.
	std::string old_tok = token_for("x", -10);
	size_t o1 = old_tok.find('.');
	size_t o2 = old_tok.rfind('.');
	Json old = parse_json(b64url_decode(old_tok.substr(o1 + 1, o2 - o1 - 1)));
	assert_non_null(old.get());
	assert_true(jnum(old.get(), "exp") < jnum(old.get(), "iat"));
}

// --------------------------------------------------------------- chat.hpp

void test_jquote(void **)
{
	assert_string_equal(jquote("").c_str(), "\"\"");
	assert_string_equal(jquote("plain /é€").c_str(), "\"plain /é€\"");
	assert_string_equal(jquote("a\"b\\c").c_str(), "\"a\\\"b\\\\c\"");
	assert_string_equal(jquote("\n\r\t\b\f").c_str(), "\"\\n\\r\\t\\b\\f\"");
	assert_string_equal(jquote("\x01\x1f\x7f").c_str(), "\"\\u0001\\u001f\x7f\"");
	assert_string_equal(jquote(std::string("a\0b", 3)).c_str(), "\"a\\u0000b\"");
	// Every byte 1..255 survives a round trip through a JSON parser.
	std::string all;
	for (int i = 1; i < 256; i++)
		all.push_back(static_cast<char>(i));
	Json j = parse_json("{\"s\":" + jquote(all) + "}");
	assert_non_null(j.get());
	assert_true(jstr(j.get(), "s") == all);
}

void test_parse_json(void **)
{
	assert_non_null(parse_json("{}").get());
	assert_non_null(parse_json(" [1, 2] \n").get());
	assert_non_null(parse_json("\"text\"").get());
	assert_null(parse_json("").get());
	assert_null(parse_json("{").get());
	assert_null(parse_json("{} x").get());
	assert_null(parse_json("{}{}").get());
	assert_null(parse_json(std::string("{}\0", 3)).get());
	assert_null(parse_json("not json").get());
}

void test_json_paths(void **)
{
	Json j = parse_json("{\"a\":{\"b\":[10,{\"c\":\"x\"},null,true,false]},\"n\":1.5,"
			    "\"e\":{},\"arr\":[],\"0\":\"zero\"}");
	assert_non_null(j.get());
	const cJSON *r = j.get();
	assert_true(jnum(r, "a.b.0") == 10);
	assert_true(jnum(r, "n") == 1.5);
	assert_string_equal(jstr(r, "a.b.1.c").c_str(), "x");
	assert_string_equal(jstr(r, "0").c_str(), "zero"); // digits on an object: a key
	assert_true(jnull(r, "a.b.2"));
	assert_false(jnull(r, "a.b.0"));
	assert_false(jnull(r, "missing"));
	assert_true(jbool(r, "a.b.3"));
	assert_false(jbool(r, "a.b.4"));
	assert_int_equal(jsize(r, "a.b"), 5);
	assert_int_equal(jsize(r, "a"), 1);
	assert_int_equal(jsize(r, "e"), 0);
	assert_int_equal(jsize(r, "arr"), 0);
	assert_ptr_equal(jget(r, ""), r);
	assert_non_null(jget(r, "a.b.4"));
	assert_null(jget(r, "a.b.5"));
	assert_null(jget(r, "a.b.x"));
	assert_null(jget(r, "a.b.-1"));
	assert_null(jget(r, "a..b"));
	assert_null(jget(r, "a."));
	assert_null(jget(r, ".a"));
	assert_null(jget(r, "n.x"));
	assert_null(jget(nullptr, "a"));
}

void test_json_failures(void **)
{
	const std::string doc = "{\"a\":{\"b\":[1,\"s\"]}}";
	assert_true(fails_with(
		[&doc] {
			Json j = parse_json(doc);
			jstr(j.get(), "a.c");
		},
		{"\"a.c\"", "absent", "{\"a\":{\"b\":[1,\"s\"]}}"}));
	assert_true(fails_with(
		[&doc] {
			Json j = parse_json(doc);
			jnum(j.get(), "a.b.1");
		},
		{"\"a.b.1\"", "another type", "a number"}));
	assert_true(fails_with(
		[&doc] {
			Json j = parse_json(doc);
			jbool(j.get(), "a.b.0");
		},
		{"\"a.b.0\"", "a boolean"}));
	assert_true(fails_with(
		[&doc] {
			Json j = parse_json(doc);
			jsize(j.get(), "a.b.0");
		},
		{"\"a.b.0\"", "an array or object"}));
}

// ----------------------------------------------------------- wsclient.hpp

void test_ws_handshake_and_lengths(void **)
{
	auto rec = std::make_shared<Record>();
	Loopback lb([rec](Peer &p) {
		Request req;
		// A frame in the same segment as the 101 response.
		if (!p.handshake(req, srv_frame(1, "hello"))) {
			rec->check(false, "handshake");
			return;
		}
		rec->note("line", req.line);
		rec->note("host", req.header("Host"));
		rec->note("upgrade", req.header("Upgrade"));
		rec->note("connection", req.header("Connection"));
		rec->note("version", req.header("Sec-WebSocket-Version"));
		rec->note("key", req.header("Sec-WebSocket-Key"));
		rec->note("origin", req.header("Origin"));
		rec->note("cookie", req.header("Cookie"));
		rec->note("hosts", std::to_string(req.count("Host")));
		for (;;) {
			SrvFrame f;
			if (!p.read_frame(f)) {
				rec->check(false, "client vanished");
				return;
			}
			rec->check(f.masked, "client frame not masked");
			rec->check(f.fin, "client frame without FIN");
			if (f.opcode == 8) {
				rec->note("close", f.payload);
				p.write(srv_frame(8, f.payload));
				return;
			}
			p.write(srv_frame(f.opcode, f.payload));
		}
	});
	assert_true(lb.ok());
	HttpResponse resp;
	auto c = WsClient::connect(lb.port(), "/ws?x=1&y=2",
				   {{"Origin", "http://o.example"}, {"Cookie", "a=b"}}, &resp);
	assert_non_null(c.get());
	assert_int_equal(resp.status, 101);
	assert_true(c->fd() >= 0);
	WsEvent ev = c->recv();
	assert_int_equal(ev.kind, WsEvent::Text);
	assert_string_equal(ev.data.c_str(), "hello");

	const size_t sizes[] = {0, 1, 125, 126, 127, 65535, 65536, 70000, 300000};
	for (size_t n : sizes) {
		std::string data(n, '\0');
		for (size_t i = 0; i < n; i++)
			data[i] = static_cast<char>((i * 7 + n) & 0xff);
		assert_true(c->send_binary(data));
		ev = c->recv();
		assert_int_equal(ev.kind, WsEvent::Binary);
		assert_int_equal(ev.data.size(), n);
		assert_true(ev.data == data);
		std::string text(n, 'x');
		assert_true(c->send_text(text));
		ev = c->recv();
		assert_int_equal(ev.kind, WsEvent::Text);
		assert_true(ev.data == text);
	}
	assert_true(c->send_close(1000, "done"));
	ev = c->recv();
	assert_int_equal(ev.kind, WsEvent::Close);
	assert_int_equal(ev.close_code, 1000);
	assert_string_equal(ev.data.c_str(), "done");
	ev = c->recv();
	assert_int_equal(ev.kind, WsEvent::Eof);
	assert_true(c->peer_closed());
	ev = c->recv();
	assert_int_equal(ev.kind, WsEvent::Eof);
	lb.join();
	assert_record_ok(*rec);
	assert_string_equal(rec->get("line").c_str(), "GET /ws?x=1&y=2 HTTP/1.1");
	assert_string_equal(rec->get("host").c_str(),
			    ("127.0.0.1:" + std::to_string(lb.port())).c_str());
	assert_string_equal(rec->get("hosts").c_str(), "1");
	assert_string_equal(lower(rec->get("upgrade")).c_str(), "websocket");
	assert_string_equal(lower(rec->get("connection")).c_str(), "upgrade");
	assert_string_equal(rec->get("version").c_str(), "13");
	assert_string_equal(rec->get("origin").c_str(), "http://o.example");
	assert_string_equal(rec->get("cookie").c_str(), "a=b");
	std::string key = rec->get("key");
	unsigned char raw[32];
	assert_int_equal(key.size(), 24);
	assert_int_equal(EVP_DecodeBlock(raw, reinterpret_cast<const unsigned char *>(key.data()),
					 24),
			 18); // 16 bytes + 2 padding
	assert_string_equal(key.substr(22).c_str(), "==");
	assert_string_equal(rec->get("close").c_str(), close_payload(1000, "done").c_str());
}

void test_ws_rfc6455_accept(void **)
{
	// The worked example of RFC 6455 section 1.3, as the loopback uses it.
	assert_string_equal(ws_accept("dGhlIHNhbXBsZSBub25jZQ==").c_str(),
			    "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
	// Two connections never share a key; a header given by the test
	// replaces the default one instead of being sent twice.
	auto rec = std::make_shared<Record>();
	Loopback lb(
		[rec](Peer &p) {
			Request req;
			if (!p.handshake(req))
				return;
			rec->note("key", req.header("Sec-WebSocket-Key"));
			rec->note("host", req.header("Host"));
			rec->note("hosts", std::to_string(req.count("Host")));
			int frames;
			p.wait_eof(frames);
		},
		2);
	auto a = WsClient::connect(lb.port(), "/ws", {{"host", "chat.example"}});
	assert_non_null(a.get());
	a.reset();
	auto b = WsClient::connect(lb.port());
	assert_non_null(b.get());
	b.reset();
	lb.join();
	assert_int_equal(rec->seen.size(), 6);
	assert_string_equal(rec->seen[1].second.c_str(), "chat.example");
	assert_string_equal(rec->seen[2].second.c_str(), "1");
	assert_true(rec->seen[0].second != rec->seen[3].second);
}

void test_ws_fragments_and_pings(void **)
{
	auto rec = std::make_shared<Record>();
	Loopback lb([rec](Peer &p) {
		Request req;
		if (!p.handshake(req))
			return;
		p.write(srv_frame(1, "Hel", false) + srv_frame(9, "p1") +
			srv_frame(0, "lo", false) + srv_frame(10, "unsolicited") +
			srv_frame(0, " world", true) +
			srv_frame(2, "ab", false) + srv_frame(0, "", false) + srv_frame(0, "cd"));
		SrvFrame f;
		rec->check(p.read_frame(f) && f.opcode == 10 && f.masked && f.payload == "p1",
			   "pong with the ping's payload");
		rec->check(p.read_frame(f) && f.opcode == 1 && f.payload == "now-off",
			   "now-off (no second pong)");
		p.write(srv_frame(9, "p2") + srv_frame(1, "after"));
		rec->check(p.read_frame(f) && f.opcode == 1 && f.payload == "end",
			   "end right after (auto-pong off)");
		p.write(srv_frame(8, close_payload(1000, "")));
		rec->check(p.read_frame(f) && f.opcode == 8 &&
				   f.payload == close_payload(1000, ""),
			   "close echoed");
	});
	auto c = WsClient::connect(lb.port());
	assert_non_null(c.get());
	WsEvent ev = c->recv();
	assert_int_equal(ev.kind, WsEvent::Text);
	assert_string_equal(ev.data.c_str(), "Hello world");
	assert_int_equal(c->pings_received(), 1);
	ev = c->recv();
	assert_int_equal(ev.kind, WsEvent::Binary);
	assert_string_equal(ev.data.c_str(), "abcd");
	c->set_auto_pong(false);
	assert_true(c->send_text("now-off"));
	ev = c->recv();
	assert_int_equal(ev.kind, WsEvent::Text);
	assert_string_equal(ev.data.c_str(), "after");
	assert_int_equal(c->pings_received(), 2);
	assert_true(c->send_text("end"));
	ev = c->recv();
	assert_int_equal(ev.kind, WsEvent::Close);
	assert_int_equal(ev.close_code, 1000);
	assert_string_equal(ev.data.c_str(), "");
	lb.join();
	assert_record_ok(*rec);
}

void test_ws_partial_data_and_timeouts(void **)
{
	auto rec = std::make_shared<Record>();
	Loopback lb([rec](Peer &p) {
		Request req;
		if (!p.handshake(req))
			return;
		SrvFrame f;
		std::string a = srv_frame(1, "split-message");
		p.write(a.substr(0, 1));
		rec->check(p.read_frame(f) && f.payload == "more1", "more1");
		p.write(a.substr(1, 5));
		rec->check(p.read_frame(f) && f.payload == "more2", "more2");
		p.write(a.substr(6));
		std::string big(70000, 'b');
		std::string b = srv_frame(2, big);
		rec->check(p.read_frame(f) && f.payload == "more3", "more3");
		p.write(b.substr(0, 5));
		rec->check(p.read_frame(f) && f.payload == "more4", "more4");
		p.write(b.substr(5, 30000));
		rec->check(p.read_frame(f) && f.payload == "more5", "more5");
		p.write(b.substr(30005) + srv_frame(1, "frag-", false));
		rec->check(p.read_frame(f) && f.payload == "more6", "more6");
		p.write(srv_frame(0, "ment"));
		int frames;
		p.wait_eof(frames);
	});
	auto c = WsClient::connect(lb.port());
	assert_non_null(c.get());
	auto t0 = Clock::now();
	assert_int_equal(c->recv(200).kind, WsEvent::Timeout);
	long took = elapsed_ms(t0);
	assert_true(took >= 190 && took < 2000);
	assert_true(c->send_text("more1"));
	assert_int_equal(c->recv(50).kind, WsEvent::Timeout);
	assert_true(c->send_text("more2"));
	WsEvent ev = c->recv();
	assert_int_equal(ev.kind, WsEvent::Text);
	assert_string_equal(ev.data.c_str(), "split-message");
	assert_int_equal(c->recv(0).kind, WsEvent::Timeout);
	assert_true(c->send_text("more3"));
	assert_int_equal(c->recv(50).kind, WsEvent::Timeout);
	assert_true(c->send_text("more4"));
	assert_int_equal(c->recv(50).kind, WsEvent::Timeout);
	assert_true(c->send_text("more5"));
	ev = c->recv();
	assert_int_equal(ev.kind, WsEvent::Binary);
	assert_true(ev.data == std::string(70000, 'b'));
	assert_int_equal(c->recv(50).kind, WsEvent::Timeout); // half a fragmented message
	assert_true(c->send_text("more6"));
	ev = c->recv();
	assert_int_equal(ev.kind, WsEvent::Text);
	assert_string_equal(ev.data.c_str(), "frag-ment");
	c.reset();
	lb.join();
	assert_record_ok(*rec);
}

void test_ws_timeout_is_overall(void **)
{
	// Pings every 50 ms for 1.5 s: each wakes recv() up, yet recv(300)
	// returns Timeout after about 300 ms, and answers every ping.
	auto rec = std::make_shared<Record>();
	Loopback lb([rec](Peer &p) {
		Request req;
		if (!p.handshake(req))
			return;
		for (int i = 0; i < 30; i++) {
			p.write(srv_frame(9, std::to_string(i)));
			::poll(nullptr, 0, 50); // pacing of the trickle, not synchronisation
		}
		p.write(srv_frame(1, "done"));
		int pongs = 0;
		SrvFrame f;
		while (pongs < 30 && p.read_frame(f) && f.opcode == 10 &&
		       f.payload == std::to_string(pongs))
			pongs++;
		rec->check(pongs == 30, "30 pongs in order, got " + std::to_string(pongs));
	});
	auto c = WsClient::connect(lb.port());
	assert_non_null(c.get());
	auto t0 = Clock::now();
	assert_int_equal(c->recv(300).kind, WsEvent::Timeout);
	long took = elapsed_ms(t0);
	assert_true(took >= 290 && took < 700);
	WsEvent ev = c->recv();
	assert_int_equal(ev.kind, WsEvent::Text);
	assert_string_equal(ev.data.c_str(), "done");
	assert_int_equal(c->pings_received(), 30);
	lb.join();
	c.reset();
	assert_record_ok(*rec);
}

void test_ws_server_close(void **)
{
	auto rec = std::make_shared<Record>();
	Loopback lb([rec](Peer &p) {
		Request req;
		if (!p.handshake(req))
			return;
		p.write(srv_frame(8, close_payload(4001, "bye")));
		SrvFrame f;
		rec->check(p.read_frame(f) && f.opcode == 8 && f.masked &&
				   f.payload == close_payload(4001, ""),
			   "close reply with the code");
		p.write(srv_frame(8, close_payload(4002, "again")) + srv_frame(1, "late"));
		p.shutdown_write();
		int frames = -1;
		rec->check(p.wait_eof(frames), "client EOF");
		rec->check(frames == 0, "exactly one close reply, got " + std::to_string(frames));
	});
	auto c = WsClient::connect(lb.port());
	assert_non_null(c.get());
	WsEvent ev = c->recv();
	assert_int_equal(ev.kind, WsEvent::Close);
	assert_int_equal(ev.close_code, 4001);
	assert_string_equal(ev.data.c_str(), "bye");
	ev = c->recv();
	assert_int_equal(ev.kind, WsEvent::Eof); // the second close and "late" are discarded
	assert_true(c->peer_closed());
	c.reset();
	lb.join();
	assert_record_ok(*rec);
}

void test_ws_empty_close_and_lingering_server(void **)
{
	auto rec = std::make_shared<Record>();
	Loopback lb([rec](Peer &p) {
		Request req;
		if (!p.handshake(req))
			return;
		p.write(srv_frame(8, ""));
		SrvFrame f;
		rec->check(p.read_frame(f) && f.opcode == 8 && f.payload.empty(),
			   "empty close reply");
		int frames;
		rec->check(p.wait_eof(frames), "client EOF"); // keeps the TCP open till then
	});
	auto c = WsClient::connect(lb.port());
	assert_non_null(c.get());
	WsEvent ev = c->recv();
	assert_int_equal(ev.kind, WsEvent::Close);
	assert_int_equal(ev.close_code, 1005);
	assert_string_equal(ev.data.c_str(), "");
	assert_int_equal(c->recv(100).kind, WsEvent::Timeout); // no TCP EOF yet
	assert_false(c->peer_closed());
	c.reset();
	lb.join();
	assert_record_ok(*rec);
}

void test_ws_client_close_first(void **)
{
	auto rec = std::make_shared<Record>();
	Loopback lb([rec](Peer &p) {
		Request req;
		if (!p.handshake(req))
			return;
		SrvFrame f;
		rec->check(p.read_frame(f) && f.opcode == 8 &&
				   f.payload == close_payload(1001, "going"),
			   "client close");
		p.write(srv_frame(8, close_payload(1001, "")));
		int frames = -1;
		rec->check(p.wait_eof(frames), "client EOF");
		rec->check(frames == 0, "no second close from the client");
	});
	auto c = WsClient::connect(lb.port());
	assert_non_null(c.get());
	assert_true(c->send_close(1001, "going"));
	WsEvent ev = c->recv();
	assert_int_equal(ev.kind, WsEvent::Close);
	assert_int_equal(ev.close_code, 1001);
	c.reset();
	lb.join();
	assert_record_ok(*rec);
}

void test_ws_raw_and_unmasked_frames(void **)
{
	auto rec = std::make_shared<Record>();
	Loopback lb([rec](Peer &p) {
		Request req;
		if (!p.handshake(req))
			return;
		SrvFrame f;
		rec->check(p.read_frame(f) && !f.masked && f.opcode == 1 && f.payload == "plain",
			   "unmasked frame");
		rec->check(p.read_frame(f) && f.masked && f.opcode == 1 && !f.fin &&
				   f.payload == "par",
			   "first fragment");
		rec->check(p.read_frame(f) && f.opcode == 9 && f.payload == "cp", "ping");
		rec->check(p.read_frame(f) && f.opcode == 0 && f.fin && f.payload == "t",
			   "continuation");
		rec->check(p.read_frame(f) && f.masked && f.opcode == 2 && f.payload == "RAW",
			   "raw frame in two writes");
		rec->check(p.read_frame(f) && f.opcode == 3, "reserved opcode passes through");
		p.write(srv_frame(1, "ok"));
		rec->check(p.read_frame(f) && f.opcode == 8 && f.payload == close_payload(1000, ""),
			   "default close");
		p.write(srv_frame(1, "x").substr(0, 2)); // then vanish mid-frame
	});
	auto c = WsClient::connect(lb.port());
	assert_non_null(c.get());
	assert_true(c->send_frame(1, "plain", true, false));
	assert_true(c->send_frame(1, "par", false));
	assert_true(c->send_frame(9, "cp"));
	assert_true(c->send_frame(0, "t", true));
	// "RAW" masked with key 01 02 03 04, written in two pieces.
	std::string raw = "\x82\x83\x01\x02\x03\x04";
	raw += static_cast<char>('R' ^ 1);
	raw += static_cast<char>('A' ^ 2);
	raw += static_cast<char>('W' ^ 3);
	assert_true(c->send_raw(raw.substr(0, 4)));
	assert_true(c->send_raw(raw.substr(4)));
	assert_true(c->send_frame(3, ""));
	WsEvent ev = c->recv();
	assert_int_equal(ev.kind, WsEvent::Text);
	assert_string_equal(ev.data.c_str(), "ok");
	assert_true(c->send_close());
	ev = c->recv();
	assert_int_equal(ev.kind, WsEvent::Eof); // truncated frame, then EOF
	assert_true(c->peer_closed());
	lb.join();
	assert_record_ok(*rec);
	// After abort() the client is unusable but safe.
	c->abort();
	assert_int_equal(c->fd(), -1);
	assert_false(c->send_text("x"));
	assert_int_equal(c->recv(0).kind, WsEvent::Error);
}

void test_ws_protocol_errors(void **)
{
	using namespace std::string_literals;
	const std::string bad[] = {
		"\x81\x81\x00\x00\x00\x00x"s, // masked server frame
		"\xc1\x01x"s,                 // RSV1 set
		"\x83\x00"s,                  // reserved opcode
		"\x09\x00"s,                  // fragmented ping
		"\x80\x01x"s,                 // continuation without a message
		"\x88\x01\x03"s,             // 1-byte close payload
	};
	for (const auto &b : bad) {
		Loopback lb([b](Peer &p) {
			Request req;
			if (!p.handshake(req, b))
				return;
			int frames;
			p.wait_eof(frames);
		});
		auto c = WsClient::connect(lb.port());
		assert_non_null(c.get());
		WsEvent ev = c->recv();
		assert_int_equal(ev.kind, WsEvent::Error);
		assert_false(ev.data.empty());
		assert_int_equal(c->recv(0).kind, WsEvent::Error);
		c.reset();
	}
}

void test_ws_refused(void **)
{
	// Content-Length body; the server keeps the connection open.
	{
		Loopback lb([](Peer &p) {
			Request req;
			p.read_request(req);
			p.write("HTTP/1.1 403 Forbidden\r\nX-Why:  test \r\n"
				"Content-Length: 5\r\n\r\nnope!trailing");
			int frames;
			p.wait_eof(frames);
		});
		HttpResponse r;
		auto t0 = Clock::now();
		assert_null(WsClient::connect(lb.port(), "/ws", {}, &r).get());
		assert_true(elapsed_ms(t0) < 2000);
		assert_int_equal(r.status, 403);
		assert_string_equal(r.header("x-why").c_str(), "test");
		assert_string_equal(r.header("X-Absent").c_str(), "");
		assert_string_equal(r.body.c_str(), "nope!");
	}
	// Body up to EOF; Sec-WebSocket-Version replaced by the test's.
	{
		auto rec = std::make_shared<Record>();
		Loopback lb([rec](Peer &p) {
			Request req;
			p.read_request(req);
			rec->note("version", req.header("Sec-WebSocket-Version"));
			rec->note("versions", std::to_string(req.count("Sec-WebSocket-Version")));
			p.write("HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\n\r\n"
				"use 13\n");
		});
		HttpResponse r;
		assert_null(
			WsClient::connect(lb.port(), "/ws", {{"Sec-WebSocket-Version", "8"}}, &r)
				.get());
		assert_int_equal(r.status, 426);
		assert_string_equal(r.header("sec-websocket-version").c_str(), "13");
		assert_string_equal(r.body.c_str(), "use 13\n");
		lb.join();
		assert_string_equal(rec->get("version").c_str(), "8");
		assert_string_equal(rec->get("versions").c_str(), "1");
	}
	// A 101 with a wrong accept is no WebSocket.
	{
		Loopback lb([](Peer &p) {
			Request req;
			p.handshake(req, "", "AAAAAAAAAAAAAAAAAAAAAAAAAAA=");
		});
		HttpResponse r;
		assert_null(WsClient::connect(lb.port(), "/ws", {}, &r).get());
		assert_int_equal(r.status, 101);
	}
	// Nothing listening; no refused given.
	int holder = -1;
	int port = refusing_port(holder);
	assert_true(port > 0);
	HttpResponse r;
	r.status = 77;
	assert_null(WsClient::connect(port, "/ws", {}, &r).get());
	assert_int_equal(r.status, 0);
	assert_null(WsClient::connect(port).get());
	::close(holder);
}

// ----------------------------------------------------- http_request[_to]

void test_http_request(void **)
{
	auto rec = std::make_shared<Record>();
	Loopback lb(
		[rec](Peer &p) {
			Request req;
			if (!p.read_request(req))
				return;
			rec->note("line", req.line);
			rec->note("host", req.header("Host"));
			rec->note("connection", req.header("Connection"));
			rec->note("x-a", req.header("X-A"));
			int frames;
			if (req.line.compare(0, 4, "HEAD") == 0) {
				p.write("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n");
				p.wait_eof(frames);
			} else if (contains(req.line, "/chunked")) {
				p.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
					"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nT: x\r\n\r\n");
				p.wait_eof(frames);
			} else if (contains(req.line, "/length")) {
				p.write("HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nabc");
				p.wait_eof(frames);
			} else {
				p.write("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n"
					"to eof");
			}
		},
		5);
	HttpResponse r = http_request(lb.port(), "GET", "/chunked", {{"X-A", "1"}});
	assert_int_equal(r.status, 200);
	assert_string_equal(r.body.c_str(), "hello world");
	r = http_request(lb.port(), "GET", "/length");
	assert_int_equal(r.status, 404);
	assert_string_equal(r.body.c_str(), "abc");
	r = http_request(lb.port(), "HEAD", "/length");
	assert_int_equal(r.status, 200);
	assert_string_equal(r.header("content-length").c_str(), "10");
	assert_string_equal(r.body.c_str(), "");
	r = http_request(lb.port(), "GET", "/eof", {}, "example.org");
	assert_int_equal(r.status, 200);
	assert_string_equal(r.header("Content-Type").c_str(), "text/plain");
	assert_string_equal(r.body.c_str(), "to eof");
	r = http_request(lb.port(), "GET", "/eof", {{"Host", "h"}, {"Connection", "keep-alive"}});
	assert_int_equal(r.status, 200);
	lb.join();
	std::string port = std::to_string(lb.port());
	const std::vector<std::pair<std::string, std::string>> want = {
		{"line", "GET /chunked HTTP/1.1"},   {"host", "127.0.0.1:" + port},
		{"connection", "close"},             {"x-a", "1"},
		{"line", "GET /length HTTP/1.1"},    {"host", "127.0.0.1:" + port},
		{"connection", "close"},             {"x-a", "<absent>"},
		{"line", "HEAD /length HTTP/1.1"},   {"host", "127.0.0.1:" + port},
		{"connection", "close"},             {"x-a", "<absent>"},
		{"line", "GET /eof HTTP/1.1"},       {"host", "example.org:" + port},
		{"connection", "close"},             {"x-a", "<absent>"},
		{"line", "GET /eof HTTP/1.1"},       {"host", "h"},
		{"connection", "keep-alive"},        {"x-a", "<absent>"},
	};
	assert_int_equal(rec->seen.size(), want.size());
	for (size_t i = 0; i < want.size(); i++)
		assert_string_equal(rec->seen[i].second.c_str(), want[i].second.c_str());

	int holder = -1;
	int refused = refusing_port(holder);
	assert_int_equal(http_request(refused, "GET", "/").status, 0);
	::close(holder);
}

void test_http_request_to(void **)
{
	auto rec = std::make_shared<Record>();
	Script answer = [rec](Peer &p) {
		Request req;
		if (!p.read_request(req))
			return;
		rec->note("host", req.header("Host"));
		p.write("HTTP/1.1 204 No Content\r\n\r\n");
		int frames;
		p.wait_eof(frames);
	};
	{
		Loopback lb(answer);
		HttpResponse r = http_request_to("127.0.0.1", lb.port(), "GET", "/");
		assert_int_equal(r.status, 204);
		lb.join();
		assert_string_equal(rec->get("host").c_str(),
				    ("127.0.0.1:" + std::to_string(lb.port())).c_str());
	}
	rec->seen.clear();
	{
		Loopback lb6(answer, 1, AF_INET6);
		if (lb6.ok()) {
			HttpResponse r = http_request_to("::1", lb6.port(), "GET", "/");
			assert_int_equal(r.status, 204);
			lb6.join();
			assert_string_equal(rec->get("host").c_str(),
					    ("[::1]:" + std::to_string(lb6.port())).c_str());
		} else {
			print_message("no IPv6 loopback here; IPv6 part skipped\n");
		}
	}
	int holder = -1;
	int port = refusing_port(holder);
	auto t0 = Clock::now();
	assert_int_equal(http_request_to("127.0.0.1", port, "GET", "/").status, -1);
	assert_true(elapsed_ms(t0) < 1000);
	::close(holder);
	assert_int_equal(http_request_to("localhost", 80, "GET", "/").status, -1); // not a literal
	assert_int_equal(http_request_to("127.0.0.1", 0, "GET", "/").status, -1);
}

// ---------------------------------------------------------- chat helpers

// A fake chat server: auth (checks the token), ping, echo, bad, bye.
Script fake_chat(std::shared_ptr<Record> rec)
{
	return [rec](Peer &p) {
		Request req;
		if (!p.handshake(req))
			return;
		for (;;) {
			SrvFrame f;
			if (!p.read_frame(f) || f.opcode == 8)
				return;
			rec->note("text", f.payload);
			Json j = parse_json(f.payload);
			const cJSON *t = cJSON_GetObjectItemCaseSensitive(j.get(), "type");
			const cJSON *rid = cJSON_GetObjectItemCaseSensitive(j.get(), "requestId");
			std::string type = cJSON_IsString(t) ? t->valuestring : "";
			std::string ridj = cJSON_IsString(rid) ? jquote(rid->valuestring) : "null";
			if (type == "auth") {
				const cJSON *tok = jget(j.get(), "payload.token");
				std::string token = cJSON_IsString(tok) ? tok->valuestring : "";
				size_t d1 = token.find('.');
				size_t d2 = token.rfind('.');
				bool ok = d1 != std::string::npos && d2 > d1 &&
					  sign_jwt(b64url_decode(token.substr(0, d1)),
						   b64url_decode(token.substr(d1 + 1, d2 - d1 - 1)),
						   kTestSecret) == token;
				rec->check(ok, "token signature");
				std::string claims = token.substr(d1 + 1, d2 - d1 - 1);
				rec->note("claims", b64url_decode(claims));
				p.write(srv_frame(1, "{\"type\":\"auth_success\",\"payload\":{}}"));
			} else if (type == "ping") {
				p.write(srv_frame(1, "{\"type\":\"pong\",\"payload\":{},"
						     "\"requestId\":" + ridj + "}"));
			} else if (type == "echo") {
				char *payload = cJSON_PrintUnformatted(jget(j.get(), "payload"));
				std::string text = "{\"type\":\"echo\",\"payload\":";
				text += payload;
				text += ",\"requestId\":" + ridj + "}";
				p.write(srv_frame(1, text));
				cJSON_free(payload);
			} else if (type == "bad") {
				p.write(srv_frame(1, "{\"type\":\"error\",\"payload\":{\"code\":"
						     "\"bad_request\",\"message\":\"no\"}}"));
			} else if (type == "bye") {
				p.write(srv_frame(8, close_payload(4000, "bye")));
			} else if (type == "drop") {
				return;
			}
		}
	};
}

void test_chat_helpers(void **)
{
	auto rec = std::make_shared<Record>();
	Loopback lb(fake_chat(rec), 2);
	auto c = connect_as(lb.port(), "alice\"1", "\"email\":\"a@b.c\"");
	assert_non_null(c.get());
	assert_true(send_request(*c, "echo", "{\"n\":[1,{\"x\":2}]}", "r1"));
	Json j = expect_frame(*c, "echo");
	assert_true(jnum(j.get(), "payload.n.1.x") == 2);
	assert_string_equal(jstr(j.get(), "requestId").c_str(), "r1");
	assert_true(send_request(*c, "echo"));
	j = expect_frame(*c);
	assert_int_equal(jsize(j.get(), "payload"), 0);
	assert_true(jnull(j.get(), "requestId"));
	expect_quiet(*c);
	expect_quiet(*c);
	assert_true(send_request(*c, "bad", "{}", "r2"));
	j = expect_error(*c, "bad_request");
	assert_string_equal(jstr(j.get(), "payload.message").c_str(), "no");
	assert_true(send_request(*c, "bye"));
	expect_close(*c, 4000);
	c.reset();
	// EOF also satisfies expect_close, whatever the code.
	auto d = connect_as(lb.port(), "bob");
	assert_true(send_request(*d, "drop"));
	expect_close(*d, 1000);
	d.reset();
	lb.join();
	assert_record_ok(*rec);
	std::vector<std::string> texts;
	for (const auto &kv : rec->seen)
		if (kv.first == "text")
			texts.push_back(kv.second);
	assert_int_equal(texts.size(), 9);
	assert_string_equal(texts[1].c_str(),
			    "{\"type\":\"echo\",\"payload\":{\"n\":[1,{\"x\":2}]},"
			    "\"requestId\":\"r1\"}");
	assert_string_equal(texts[2].c_str(), "{\"type\":\"echo\",\"payload\":{}}");
	assert_string_equal(texts[3].c_str(),
			    "{\"type\":\"ping\",\"payload\":{},\"requestId\":\"quiet-1\"}");
	assert_string_equal(texts[4].c_str(),
			    "{\"type\":\"ping\",\"payload\":{},\"requestId\":\"quiet-2\"}");
	Json claims = parse_json(rec->get("claims"));
	assert_non_null(claims.get());
	assert_string_equal(jstr(claims.get(), "sub").c_str(), "alice\"1");
	assert_string_equal(jstr(claims.get(), "email").c_str(), "a@b.c");
	assert_true(jnum(claims.get(), "exp") - jnum(claims.get(), "iat") == 3600);
}

// An echo server: every text frame comes back verbatim, except that a
// ping request gets a pong for the wrong requestId and "close-me" a Close
// 4000.
Script echo_text()
{
	return [](Peer &p) {
		Request req;
		if (!p.handshake(req))
			return;
		for (;;) {
			SrvFrame f;
			if (!p.read_frame(f) || f.opcode == 8)
				return;
			if (f.payload == "close-me")
				p.write(srv_frame(8, close_payload(4000, "")));
			else if (contains(f.payload, "\"type\":\"ping\""))
				p.write(srv_frame(1, "{\"type\":\"pong\","
						     "\"requestId\":\"stale-7\"}"));
			else
				p.write(srv_frame(1, f.payload));
		}
	};
}

void test_chat_failures(void **)
{
	Loopback lb(echo_text(), 10);
	const int port = lb.port();
	assert_true(fails_with(
		[port] {
			auto c = WsClient::connect(port);
			c->send_text("{\"type\":\"other\",\"payload\":{\"k\":1}}");
			expect_frame(*c, "pong");
		},
		{"\"pong\"", "{\"type\":\"other\",\"payload\":{\"k\":1}}"}));
	assert_true(fails_with(
		[port] {
			auto c = WsClient::connect(port);
			c->send_text("not json at all");
			expect_frame(*c);
		},
		{"not JSON", "not json at all"}));
	assert_true(fails_with(
		[port] {
			auto c = WsClient::connect(port);
			expect_frame(*c, "x", 100);
		},
		{"nothing within 100 ms"}));
	assert_true(fails_with(
		[port] {
			auto c = WsClient::connect(port);
			c->send_text("{\"type\":\"chat\",\"payload\":{\"text\":\"sneaky\"}}");
			expect_quiet(*c);
		},
		{"quiet-", "sneaky"}));
	assert_true(fails_with(
		[port] {
			auto c = WsClient::connect(port);
			c->send_text("{\"type\":\"error\",\"payload\":{\"code\":\"nope\"}}");
			expect_error(*c, "bad_request");
		},
		{"bad_request", "nope"}));
	assert_true(fails_with(
		[port] {
			auto c = WsClient::connect(port);
			c->send_text("{\"type\":\"still-open\"}");
			expect_close(*c, 1000);
		},
		{"close 1000", "still-open"}));
	assert_true(fails_with([port] { connect_as(port, "mallory"); },
			       {"connect_as(mallory)", "auth_success", "\"type\":\"auth\""}));
	assert_true(fails_with(
		[port] {
			auto c = WsClient::connect(port);
			c->send_text("close-me");
			expect_close(*c, 1000);
		},
		{"close 1000", "close frame 4000"}));
	assert_true(fails_with(
		[port] {
			auto c = WsClient::connect(port);
			expect_quiet(*c);
		},
		{"pong for quiet-", "stale-7"}));
	{
		auto c = WsClient::connect(port); // code 0: any close will do
		assert_non_null(c.get());
		assert_true(c->send_text("close-me"));
		expect_close(*c, 0);
	}
	lb.join();
	int holder = -1;
	int refused = refusing_port(holder);
	assert_true(fails_with([refused] { connect_as(refused, "nobody"); },
			       {"connect_as(nobody)", "handshake"}));
	::close(holder);
}

// -------------------------------------------------------------- spawn.hpp

void test_files_and_proc(void **)
{
	const char *old_tmp = std::getenv("TMPDIR");
	std::string saved = old_tmp ? old_tmp : "";
	set_env("TMPDIR", nullptr);
	std::string d = make_temp_dir();
	assert_int_equal(d.compare(0, 12, "/tmp/qctest."), 0);
	struct stat st;
	assert_int_equal(::stat(d.c_str(), &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	set_env("TMPDIR", d.c_str());
	std::string inner = make_temp_dir();
	assert_int_equal(inner.compare(0, d.size() + 8, d + "/qctest."), 0);
	set_env("TMPDIR", old_tmp ? saved.c_str() : nullptr);

	std::string bin("a\0b\n\xff", 5);
	write_file(inner + "/f", bin);
	assert_true(read_file(inner + "/f") == bin);
	write_file(inner + "/f", "short");
	assert_string_equal(read_file(inner + "/f").c_str(), "short");
	assert_string_equal(read_file(inner + "/missing").c_str(), "");

	// remove_tree does not follow a symbolic link out of the tree.
	std::string outside = make_temp_dir();
	write_file(outside + "/precious", "x");
	assert_int_equal(::mkdir((inner + "/sub").c_str(), 0755), 0);
	write_file(inner + "/sub/file", "y");
	assert_int_equal(::symlink(outside.c_str(), (inner + "/sub/link").c_str()), 0);
	remove_tree(d);
	assert_int_equal(::access(d.c_str(), F_OK), -1);
	assert_string_equal(read_file(outside + "/precious").c_str(), "x");
	remove_tree(outside);
	assert_int_equal(::access(outside.c_str(), F_OK), -1);
	remove_tree(""); // harmless

	assert_true(process_rss_kb(::getpid()) > 0);
	int n1 = process_fd_count(::getpid());
	int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
	int n2 = process_fd_count(::getpid());
	::close(fd);
	assert_true(n1 >= 3);
	assert_int_equal(n2, n1 + 1);
	assert_int_equal(process_rss_kb(INT_MAX), -1);
	assert_int_equal(process_fd_count(INT_MAX), -1);
}

void test_server_binary_default(void **)
{
	const char *old = std::getenv("QRYPTCHATD");
	std::string saved = old ? old : "";
	set_env("QRYPTCHATD", nullptr);
	assert_string_equal(server_binary().c_str(), "build/qryptchatd");
	set_env("QRYPTCHATD", "/x/y");
	assert_string_equal(server_binary().c_str(), "/x/y");
	set_env("QRYPTCHATD", old ? saved.c_str() : nullptr);
}

// Runs the test body with $QRYPTCHATD pointing at a script, and with
// variables set that the children must not see.
struct FakeBinary {
	std::string dir;
	std::string path;
	std::string saved;
	bool had = false;

	explicit FakeBinary(const std::string &body)
	{
		dir = make_temp_dir();
		path = dir + "/fake-qryptchatd";
		write_script(path, body);
		const char *old = std::getenv("QRYPTCHATD");
		had = old != nullptr;
		saved = old ? old : "";
		set_env("QRYPTCHATD", path.c_str());
		set_env("QRYPTCHAT_SECRET", "leaked");
		set_env("WEBSOCKET_PORT", "9");
		set_env("QCT_INHERITED", "1");
	}
	~FakeBinary()
	{
		set_env("QRYPTCHATD", had ? saved.c_str() : nullptr);
		set_env("QRYPTCHAT_SECRET", nullptr);
		set_env("WEBSOCKET_PORT", nullptr);
		set_env("QCT_INHERITED", nullptr);
		remove_tree(dir);
	}
	FakeBinary(const FakeBinary &) = delete;
	FakeBinary &operator=(const FakeBinary &) = delete;
};

const char kEnvDump[] = "env | grep -E '^(QRYPTCHAT_|WEBSOCKET_PORT|QCT_)' | LC_ALL=C sort\n";

void test_run_binary(void **)
{
	FakeBinary fake(std::string("echo \"args:$*\"\n") + kEnvDump +
			"head -c 300000 /dev/zero | tr '\\0' o\n"
			"head -c 300000 /dev/zero | tr '\\0' e >&2\n"
			"exit 7\n");
	RunResult r = run_binary(
		{"--check-config", "a b"},
		{{"QCT_EXTRA", "y"}, {"QRYPTCHAT_GIVEN", "z"}, {"QCT_INHERITED", "2"}});
	assert_int_equal(r.status, 7);
	const std::string head = "args:--check-config a b\nQCT_EXTRA=y\nQCT_INHERITED=2\n"
				 "QRYPTCHAT_GIVEN=z\n";
	assert_string_equal(r.out.substr(0, head.size()).c_str(), head.c_str());
	assert_int_equal(r.out.size(), head.size() + 300000);
	assert_int_equal(r.err.size(), 300000);
	assert_true(r.err == std::string(300000, 'e'));

	write_script(fake.path, "exec sleep 30\n");
	auto t0 = Clock::now();
	r = run_binary({}, {}, 200);
	assert_int_equal(r.status, -1);
	assert_true(elapsed_ms(t0) < 3000);

	write_script(fake.path, "echo partial; kill -TERM $$\n");
	r = run_binary({});
	assert_int_equal(r.status, 128 + SIGTERM);
	assert_string_equal(r.out.c_str(), "partial\n");

	set_env("QRYPTCHATD", (fake.dir + "/does-not-exist").c_str());
	r = run_binary({"x"});
	assert_int_equal(r.status, 127);
	assert_true(contains(r.err, "cannot execute"));
}

// A stand-in for qryptchatd: parses -c/--ready-file, dumps its filtered
// environment, logs, writes the ready file atomically (port $QCT_PORT or
// 4242) and runs until TERM (exit 0).  QCT_MODE=die exits 3 at once;
// QCT_MODE=hang never becomes ready.
const char kFakeServer[] =
	"conf=; ready=\n"
	"while [ $# -gt 0 ]; do\n"
	"\tcase \"$1\" in\n"
	"\t-c) conf=$2; shift 2 ;;\n"
	"\t--ready-file) ready=$2; shift 2 ;;\n"
	"\t*) echo \"fake: extra arg $1\" >&2; shift ;;\n"
	"\tesac\n"
	"done\n"
	"dir=$(dirname \"$conf\")\n"
	"env | grep -E '^(QRYPTCHAT_|WEBSOCKET_PORT|QCT_)' | LC_ALL=C sort > \"$dir/env.txt\"\n"
	"echo 'fake: stdout line'\n"
	"echo \"fake: starting with $conf\" >&2\n"
	"case \"$QCT_MODE\" in\n"
	"die) echo 'fake: dying' >&2; exit 3 ;;\n"
	"hang) exec sleep 1000 ;;\n"
	"esac\n"
	"trap 'echo \"fake: got HUP\" >&2' HUP\n"
	"trap 'echo \"fake: TERM\" >&2; exit 0' TERM\n"
	"printf '%s\\n' \"${QCT_PORT:-4242}\" > \"$ready.tmp\" && mv \"$ready.tmp\" \"$ready\"\n"
	"echo 'fake: ready' >&2\n"
	"rm -f \"$dir/fifo\"; mkfifo \"$dir/fifo\"; exec 3<>\"$dir/fifo\"\n"
	"while :; do read -r _ <&3; done\n"; // a builtin wait: no orphans, traps run

void test_server_process(void **)
{
	FakeBinary fake(kFakeServer);
	ServerOptions o;
	o.config = {{"max_message_bytes", "1024"}, {"log_level", "info"}};
	o.extra_args = {"--foreground"};
	o.env = {{"QCT_MODE", "run"}};
	auto s = ServerProcess::start(o);
	assert_non_null(s.get());
	assert_int_equal(s->port(), 4242);
	assert_true(s->pid() > 0);
	const std::string dir = s->dir();
	assert_true(contains(dir, "/qctest."));
	assert_string_equal(s->db_path().c_str(), (dir + "/chat.db").c_str());
	assert_string_equal(s->config_path().c_str(), (dir + "/qryptchatd.conf").c_str());
	assert_string_equal(read_file(s->config_path()).c_str(),
			    ("listen 127.0.0.1:0\ndatabase " + dir + "/chat.db\njwt_secret_file " +
			     dir + "/secret\nlog_level debug\nmax_message_bytes 1024\n"
			     "log_level info\n")
				    .c_str());
	assert_string_equal(read_file(dir + "/secret").c_str(), kTestSecret);
	struct stat st;
	assert_int_equal(::stat((dir + "/secret").c_str(), &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_string_equal(read_file(dir + "/env.txt").c_str(), "QCT_INHERITED=1\nQCT_MODE=run\n");
	assert_true(s->wait_log("fake: ready"));
	assert_true(contains(s->log(), "fake: extra arg --foreground"));
	assert_true(contains(s->log(), "fake: starting with " + dir + "/qryptchatd.conf"));
	assert_string_equal(read_file(dir + "/stdout.log").c_str(), "fake: stdout line\n");
	assert_true(process_rss_kb(s->pid()) > 0);
	assert_true(process_fd_count(s->pid()) >= 3);
	s->signal(SIGHUP);
	assert_true(s->wait_log("fake: got HUP"));
	auto t0 = Clock::now();
	assert_false(s->wait_log("never logged", 100));
	assert_true(elapsed_ms(t0) >= 100);
	assert_int_equal(s->wait_exit(50), -1); // still running

	s->keep_dir(true);
	assert_int_equal(s->stop(), 0);
	assert_int_equal(s->stop(), 0); // already reaped: the same status
	assert_true(s->wait_log("fake: TERM", 100));
	t0 = Clock::now();
	assert_false(s->wait_log("never logged", 5000)); // exited: returns at once
	assert_true(elapsed_ms(t0) < 1000);
	s.reset();
	assert_int_equal(::access(dir.c_str(), F_OK), 0);

	// Restart on the same directory: stale ready file removed, config
	// rewritten, secret and data left alone.
	write_file(dir + "/ready", "1\n");
	write_file(dir + "/chat.db", "data");
	ServerOptions o2;
	o2.dir = dir;
	o2.env = {{"QCT_PORT", "4343"}};
	auto s2 = ServerProcess::start(o2);
	assert_int_equal(s2->port(), 4343);
	assert_string_equal(s2->dir().c_str(), dir.c_str());
	assert_false(contains(read_file(s2->config_path()), "max_message_bytes"));
	assert_string_equal(read_file(dir + "/chat.db").c_str(), "data");
	assert_string_equal(read_file(dir + "/secret").c_str(), kTestSecret);
	assert_false(contains(s2->log(), "fake: got HUP")); // a fresh log
	assert_int_equal(s2->stop(SIGKILL), 128 + SIGKILL);
	s2.reset();
	assert_int_equal(::access(dir.c_str(), F_OK), -1);

	// The destructor stops a running server and removes its directory.
	auto s3 = ServerProcess::start();
	pid_t pid = s3->pid();
	std::string dir3 = s3->dir();
	s3.reset();
	assert_int_equal(::kill(pid, 0), -1);
	assert_int_equal(errno, ESRCH);
	assert_int_equal(::access(dir3.c_str(), F_OK), -1);
}

void test_server_process_failures(void **)
{
	FakeBinary fake(kFakeServer);
	assert_true(fails_with(
		[] {
			ServerOptions o;
			o.env = {{"QCT_MODE", "die"}};
			ServerProcess::start(o);
		},
		{"exited with status 3", "fake: dying", fake.path}));
	assert_true(fails_with(
		[] {
			ServerOptions o;
			o.env = {{"QCT_MODE", "hang"}};
			o.ready_timeout_ms = 300;
			ServerProcess::start(o);
		},
		{"not ready within 300 ms", "fake: starting with"}));
	set_env("QRYPTCHATD", (fake.dir + "/missing-binary").c_str());
	assert_true(fails_with([] { ServerProcess::start(); },
			       {"exited with status 127", "cannot execute"}));
}

} // namespace

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_b64url_rfc4648),
		cmocka_unit_test(test_sign_jwt_vectors),
		cmocka_unit_test(test_token_for),
		cmocka_unit_test(test_jquote),
		cmocka_unit_test(test_parse_json),
		cmocka_unit_test(test_json_paths),
		cmocka_unit_test(test_json_failures),
		cmocka_unit_test(test_ws_handshake_and_lengths),
		cmocka_unit_test(test_ws_rfc6455_accept),
		cmocka_unit_test(test_ws_fragments_and_pings),
		cmocka_unit_test(test_ws_partial_data_and_timeouts),
		cmocka_unit_test(test_ws_timeout_is_overall),
		cmocka_unit_test(test_ws_server_close),
		cmocka_unit_test(test_ws_empty_close_and_lingering_server),
		cmocka_unit_test(test_ws_client_close_first),
		cmocka_unit_test(test_ws_raw_and_unmasked_frames),
		cmocka_unit_test(test_ws_protocol_errors),
		cmocka_unit_test(test_ws_refused),
		cmocka_unit_test(test_http_request),
		cmocka_unit_test(test_http_request_to),
		cmocka_unit_test(test_chat_helpers),
		cmocka_unit_test(test_chat_failures),
		cmocka_unit_test(test_files_and_proc),
		cmocka_unit_test(test_server_binary_default),
		cmocka_unit_test(test_run_binary),
		cmocka_unit_test(test_server_process),
		cmocka_unit_test(test_server_process_failures),
	};
	return cmocka_run_group_tests(tests, nullptr, nullptr);
}
