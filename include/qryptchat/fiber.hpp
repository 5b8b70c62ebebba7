// fiber: requests that wait for a network database without stalling the
// event loop.
//
// With the PostgreSQL store, each request runs on a fiber: a small stack
// of its own, on the loop thread.  When the store must wait for its
// socket, the fiber gives the thread back to the loop (FiberPool is the
// store's IoWait) and is resumed by a libev watcher once the socket is
// ready, so that handlers keep their plain sequential form and one slow
// query delays only the request that made it.
//
// Order: tasks belong to lanes (a connection's requests, its close); a
// lane runs one task at a time, in order.  At most `max_running` fibers
// exist at once (one per database connection: a fiber holds at most one
// connection at a time); further tasks wait their turn.  A task started
// from inside a fiber runs at once on that fiber.
//
// With SQLite the server runs tasks inline and uses no fiber: its queries
// take microseconds and are committed by the loop's group commit.
#pragma once

#include <ev.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <functional>
#include <memory>
#include <unordered_map>
#include <vector>

#include "qryptchat/io_wait.hpp"

namespace qc {

class FiberPool final : public IoWait
{
public:
	FiberPool(struct ev_loop *loop, size_t max_running);
	~FiberPool() override;
	FiberPool(const FiberPool &) = delete;
	FiberPool &operator=(const FiberPool &) = delete;

	// Runs `fn` after every earlier task of `lane`; inside a fiber, at once.
	void run(uint64_t lane, std::function<void()> fn);
	// IoWait: inside a fiber, suspends it until the socket is ready or the
	// timeout passes; outside one, blocks in poll().
	bool wait(int fd, bool write, int64_t timeout_ms) override;
	// Suspends the current fiber until the `wake` function handed to
	// `arm` is called (from the loop, at any time, any number of times),
	// or until timeout_ms pass.  Returns true when woken.  Outside a fiber
	// it cannot wait: it returns false at once, without calling `arm`.
	bool park(const std::function<void(std::function<void()> wake)> &arm, int64_t timeout_ms);

	bool in_fiber() const { return current_ != nullptr; }
	// Tasks of the lane not yet finished (queued or running).
	size_t pending(uint64_t lane) const;
	// Fibers alive (running or suspended).
	size_t running() const { return alive_; }
	// Called when the last task of a lane has finished.
	std::function<void(uint64_t lane)> on_lane_idle;

	struct Fiber;

private:
	struct Lane {
		std::deque<std::function<void()>> queue;  // not started
		bool active = false;                      // running, or waiting for a fiber
		size_t pending = 0;                       // queued + running
	};
	void pump();
	void start(uint64_t lane, std::function<void()> fn);
	void resume(Fiber *f);
	void finish(Fiber *f);
	static void entry();
	static void on_io(struct ev_loop *loop, ev_io *w, int revents) noexcept;
	static void on_timer(struct ev_loop *loop, ev_timer *w, int revents) noexcept;

	struct ev_loop *loop_;
	size_t max_running_;
	size_t alive_ = 0;
	bool pumping_ = false;
	Fiber *current_ = nullptr;
	std::unordered_map<uint64_t, Lane> lanes_;
	std::deque<uint64_t> ready_;                      // lanes waiting for a fiber
	std::vector<void *> free_stacks_;                 // kept for reuse
};

} // namespace qc
