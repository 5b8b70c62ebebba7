// io_wait: how a client library's socket (libpq, hiredis) is waited on.
//
// A store on a network database sends its query without blocking and then
// asks an IoWait to wait until the socket is ready.  The default waiter
// blocks the calling thread in poll(): right for the admin subcommands and
// for tests.  The server installs one that suspends the request that made
// the call (see fiber.hpp) and lets the event loop run until the socket is
// ready, so that a slow database never stalls the other connections.
#pragma once

#include <cstdint>

namespace qc {

class IoWait
{
public:
	virtual ~IoWait() = default;
	// Waits until `fd` is readable (or writable when `write`), or until
	// `timeout_ms` have passed (< 0: no limit).  Returns false on timeout.
	virtual bool wait(int fd, bool write, int64_t timeout_ms) = 0;
};

// Blocks the calling thread in poll().
IoWait &blocking_io_wait();

} // namespace qc
