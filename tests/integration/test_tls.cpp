// TLS on the listening port (tls_cert, tls_key): https:// and wss:// with
// a self-signed certificate, plain HTTP refused, and a new certificate
// picked up on SIGHUP without closing open connections.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>

#include "common.hpp"

using namespace qc::test;

namespace {

// A self-signed P-256 certificate for localhost: DIR/NAME.crt, DIR/NAME.key.
void make_cert(const std::string &dir, const std::string &name)
{
	std::string cmd = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 "
			  "-subj /CN=localhost -keyout '" + dir + "/" + name + ".key' -out '" + dir + "/" +
			  name + ".crt' 2>/dev/null";
	assert_int_equal(std::system(cmd.c_str()), 0);
}

// SHA-256 of a certificate, DER.
std::string fingerprint(X509 *x)
{
	unsigned char md[32];
	unsigned int n = 0;
	assert_int_equal(X509_digest(x, EVP_sha256(), md, &n), 1);
	return std::string(reinterpret_cast<char *>(md), n);
}

std::string file_fingerprint(const std::string &pem_path)
{
	FILE *f = fopen(pem_path.c_str(), "r");
	assert_non_null(f);
	X509 *x = PEM_read_X509(f, nullptr, nullptr, nullptr);
	fclose(f);
	assert_non_null(x);
	std::string fp = fingerprint(x);
	X509_free(x);
	return fp;
}

// One TLS connection to 127.0.0.1:port (the certificate is not verified:
// the test compares its fingerprint instead).
struct Tls {
	SSL_CTX *ctx = nullptr;
	SSL *ssl = nullptr;
	int fd = -1;
	explicit Tls(int port)
	{
		ctx = SSL_CTX_new(TLS_client_method());
		fd = socket(AF_INET, SOCK_STREAM, 0);
		sockaddr_in a{};
		a.sin_family = AF_INET;
		a.sin_port = htons(static_cast<uint16_t>(port));
		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		timeval tv{5, 0};
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
		assert_int_equal(connect(fd, reinterpret_cast<sockaddr *>(&a), sizeof a), 0);
		ssl = SSL_new(ctx);
		SSL_set_fd(ssl, fd);
		SSL_set_tlsext_host_name(ssl, "localhost");
		if (SSL_connect(ssl) != 1)
			fail_msg("TLS handshake failed: %lu", ERR_get_error());
	}
	~Tls()
	{
		SSL_free(ssl);
		SSL_CTX_free(ctx);
		close(fd);
	}
	std::string peer()
	{
		X509 *x = SSL_get1_peer_certificate(ssl);
		assert_non_null(x);
		std::string fp = fingerprint(x);
		X509_free(x);
		return fp;
	}
	void write_all(const std::string &s) { assert_int_equal(SSL_write(ssl, s.data(), static_cast<int>(s.size())), static_cast<int>(s.size())); }
	// Reads until `until` appears (or the connection ends).
	std::string read_until(const std::string &until)
	{
		std::string got;
		char buf[4096];
		while (got.find(until) == std::string::npos) {
			int n = SSL_read(ssl, buf, sizeof buf);
			if (n <= 0)
				break;
			got.append(buf, static_cast<size_t>(n));
		}
		return got;
	}
	// A masked text frame (RFC 6455 §5.2), payload < 126 bytes.
	void ws_text(const std::string &text)
	{
		std::string f = {'\x81', static_cast<char>(0x80 | text.size()), 1, 2, 3, 4};
		for (size_t i = 0; i < text.size(); i++)
			f.push_back(static_cast<char>(text[i] ^ "\x01\x02\x03\x04"[i % 4]));
		write_all(f);
	}
};

std::string https_get(int port, const std::string &path)
{
	Tls t(port);
	t.write_all("GET " + path + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
	return t.read_until("\r\n\r\n{");
}

// An upgraded wss:// connection.
std::unique_ptr<Tls> wss(int port)
{
	auto t = std::make_unique<Tls>(port);
	t->write_all("GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
		     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
	std::string head = t->read_until("\r\n\r\n");
	assert_contains(head, "HTTP/1.1 101");
	return t;
}

void ping_pong(Tls &t, const std::string &id)
{
	t.ws_text("{\"type\":\"ping\",\"requestId\":\"" + id + "\"}");
	std::string got = t.read_until("\"requestId\":\"" + id + "\"");
	assert_contains(got, "\"type\":\"pong\"");
}

} // namespace

static void test_tls_and_reload(void **)
{
	std::string dir = make_temp_dir();
	make_cert(dir, "a");
	make_cert(dir, "b");
	std::string crt = dir + "/server.crt", key = dir + "/server.key";
	assert_int_equal(std::system(("cp '" + dir + "/a.crt' '" + crt + "' && cp '" + dir + "/a.key' '" + key + "'").c_str()), 0);
	auto s = start_server({{"tls_cert", crt}, {"tls_key", key}});
	assert_true(s->wait_log("tls=yes"));

	std::string r = https_get(s->port(), "/health");
	assert_contains(r, "HTTP/1.1 200");
	assert_contains(r, "\"status\":\"ok\"");
	assert_true(Tls(s->port()).peer() == file_fingerprint(dir + "/a.crt"));
	// Plain HTTP on the TLS port gets no answer.
	assert_int_not_equal(http_request(s->port(), "GET", "/health").status, 200);

	auto open = wss(s->port());
	ping_pong(*open, "before");

	// Renewal: new files in place, SIGHUP.
	assert_int_equal(std::system(("cp '" + dir + "/b.crt' '" + crt + "' && cp '" + dir + "/b.key' '" + key + "'").c_str()), 0);
	s->signal(SIGHUP);
	assert_true(s->wait_log("tls_reloaded"));
	assert_true(Tls(s->port()).peer() == file_fingerprint(dir + "/b.crt"));
	ping_pong(*open, "after"); // the open connection kept its session
	auto fresh = wss(s->port());
	ping_pong(*fresh, "fresh");

	// A broken renewal is refused; the running certificate stays.
	write_file(crt, "not a certificate\n");
	s->signal(SIGHUP);
	assert_true(s->wait_log("tls_reload_failed"));
	assert_true(Tls(s->port()).peer() == file_fingerprint(dir + "/b.crt"));
	ping_pong(*open, "still");
	open.reset();
	fresh.reset();
	assert_int_equal(s->stop(), 0);
	s.reset();
	remove_tree(dir);
}

static void test_tls_refused_at_start(void **)
{
	std::string dir = make_temp_dir();
	make_cert(dir, "a");
	make_cert(dir, "b");
	RunResult r = run_binary({"-D", "listen=127.0.0.1:0", "-D", "database=" + dir + "/db", "-D",
				  "tls_cert=" + dir + "/a.crt", "-D", "tls_key=" + dir + "/b.key"},
				 {{"QRYPTCHAT_JWT_SECRET", kTestSecret}});
	assert_int_equal(r.status, 1);
	assert_contains(r.err, "the key does not belong to the certificate");
	r = run_binary({"-D", "listen=127.0.0.1:0", "-D", "tls_cert=" + dir + "/a.crt", "--check-config"},
		       {{"QRYPTCHAT_JWT_SECRET", kTestSecret}});
	assert_int_equal(r.status, 2);
	assert_contains(r.err, "tls_cert and tls_key go together");
	remove_tree(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_tls_and_reload),
		cmocka_unit_test(test_tls_refused_at_start),
	};
	return cmocka_run_group_tests_name("tls", tests, nullptr, nullptr);
}
