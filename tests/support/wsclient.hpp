// A small, blocking WebSocket client for the integration tests.
//
// It speaks RFC 6455 over a plain TCP socket to 127.0.0.1 and gives the tests
// the control a browser never would: raw frames, fragmentation, binary and
// oversized messages, abrupt disconnects in the middle of a frame.  Every
// read takes a deadline, so a test waits for an event, never sleeps.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace qc::test {

using Headers = std::vector<std::pair<std::string, std::string>>;

// The answer to an HTTP request (plain GET or a refused upgrade).
struct HttpResponse {
	int status = 0;          // 0 when no response could be read
	Headers headers;         // names as sent by the server
	std::string body;        // Content-Length bytes, or up to EOF
	std::string header(const std::string &name) const; // case-insensitive, "" if absent
};

// One plain HTTP/1.1 request on a fresh connection ("Connection: close").
HttpResponse http_request(int port, const std::string &method, const std::string &target,
			  const Headers &headers = {}, const std::string &host = "127.0.0.1");

// Like http_request but connects to `host` (an IPv4/IPv6 literal); returns
// status -1 when the TCP connection itself is refused or unreachable.
HttpResponse http_request_to(const std::string &host, int port, const std::string &method,
			     const std::string &target, const Headers &headers = {});

// A received WebSocket event.
struct WsEvent {
	enum Kind { Text, Binary, Close, Timeout, Eof, Error };
	Kind kind = Error;
	std::string data;        // payload of Text/Binary; reason of Close
	int close_code = 0;      // Close: the code in the frame, 1005 if none
};

class WsClient {
public:
	// Performs the opening handshake on path `target` (may carry a query).
	// On success returns a client; otherwise nullptr and, when `refused` is
	// given, the server's HTTP answer (status, headers, body).
	static std::unique_ptr<WsClient> connect(int port, const std::string &target = "/ws",
						 const Headers &headers = {},
						 HttpResponse *refused = nullptr);
	~WsClient();
	WsClient(const WsClient &) = delete;
	WsClient &operator=(const WsClient &) = delete;

	// Sends one complete masked text / binary message. false on I/O error.
	bool send_text(const std::string &text);
	bool send_binary(const std::string &data);
	// Sends one frame with full control: opcode (1 text, 2 binary, 0
	// continuation, 8 close, 9 ping, 10 pong), FIN bit, masking.
	bool send_frame(int opcode, const std::string &payload, bool fin = true, bool masked = true);
	// Writes raw bytes to the socket (for truncated frames and garbage).
	bool send_raw(const std::string &bytes);
	// Sends a close frame with this code and reason (does not wait).
	bool send_close(int code = 1000, const std::string &reason = "");

	// Waits up to timeout_ms for the next Text, Binary or Close event.
	// Ping frames from the server are answered with a pong automatically
	// (unless set_auto_pong(false)) and counted in pings_received().
	// Fragmented server messages are reassembled.  After a Close event,
	// further calls return Eof.
	WsEvent recv(int timeout_ms = 5000);

	void set_auto_pong(bool on);
	int pings_received() const;
	// Closes the TCP connection at once, without a close frame.
	void abort();
	// True once the peer closed the TCP connection (EOF seen).
	bool peer_closed() const;
	int fd() const;

private:
	WsClient() = default;
	struct Impl;
	std::unique_ptr<Impl> impl_;
};

} // namespace qc::test
