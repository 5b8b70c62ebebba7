// session: the state of one WebSocket connection that is not chat state —
// message reassembly with its size bound, the bounded outbound queue of
// shared frames, and the pending close.  Owned by the server's registry;
// everything else refers to a session by its SessionId.
#pragma once

#include <ev.h>
#include <libwebsockets.h>

#include <deque>
#include <string>
#include <string_view>

#include "qryptchat/handlers.hpp"
#include "qryptchat/protocol.hpp"

namespace qc {

static_assert(kFrameHeadroom >= LWS_PRE, "frame headroom must cover lws's LWS_PRE");

// A timer of one session on the server's event loop.  `w` comes first so
// that the callback, which gets the watcher, can recover the record.
struct SessionTimer {
	ev_timer w;
	SessionId id;      // whose timer
	void *owner;       // the server that armed it
};

struct Session {
	Caller caller;                         // chat-level state (auth, buckets)
	struct lws *wsi = nullptr;             // valid until the CLOSED callback
	int fd = -1;                           // its socket, for direct writes; -1 on TLS
	std::string ip;                        // client address (after trusted proxies)

	// Reassembly of the current inbound message.
	std::string rx;                        // text received so far
	size_t rx_bytes = 0;                   // bytes of the current message (binary too)
	bool rx_active = false;                // a message is in progress
	bool rx_binary = false;                // it is a binary message
	bool rx_paused = false;                // lws stopped reading: too many requests in flight

	// Outbound queue: shared frames, written at the end of the loop turn
	// that queued them (several per system call) or from WRITEABLE.
	std::deque<FramePtr> outq;
	size_t out_bytes = 0;                  // payload bytes queued (bounded by max_queue_bytes)
	bool flush_pending = false;            // listed for the end-of-turn write
	double validity_confirmed = 0;         // loop time traffic last proved it alive
	uint64_t batch_epoch = 0;              // the store batch of batch_mark
	size_t batch_mark = 0;                 // outq size when that batch first queued here

	// A close the server decided on; sent from the next WRITEABLE.
	int close_code = 0;                    // 0: none pending
	std::string close_reason;

	SessionTimer auth_timer{};             // auth_timeout
	SessionTimer token_timer{};            // token expiry (+ leeway)

	enum class Rx { Partial, Text, Binary, TooBig };
	// Adds one received chunk.  `final` is true on the last chunk of the
	// last fragment.  Returns Text/Binary when a whole message is ready
	// (then rx holds the text), TooBig once it exceeds max_bytes.
	Rx receive(const void *data, size_t len, bool binary, bool final, size_t max_bytes);
	// Clears the finished message.
	void rx_done();

	enum class Enq { Queued, Overflow, Dropped };
	// Queues a frame.  Dropped when a close is pending; Overflow (nothing
	// queued, the queue emptied) when it would exceed max_bytes: the
	// caller closes the slow reader.
	Enq enqueue(const FramePtr &f, size_t max_bytes);
	// Decides a close, sent once the queue is written; `drop_queue`
	// discards what is queued first (slow readers, shutdown).  The first
	// decision wins.
	void set_close(int code, std::string reason, bool drop_queue);
};

} // namespace qc
