// fiber: tasks that wait on a socket give the loop back, run in order per
// lane, never more than the limit at once, and resume on readiness or
// timeout.  Pipes stand for the database's sockets.
#include <ev.h>
#include <unistd.h>

#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "cmocka.hpp"
#include "qryptchat/fiber.hpp"

using namespace qc;

namespace {

struct Pipe {
	int r = -1, w = -1;
	Pipe()
	{
		int p[2];
		assert_int_equal(pipe(p), 0);
		r = p[0];
		w = p[1];
	}
	~Pipe()
	{
		::close(r);
		::close(w);
	}
	void poke() { assert_int_equal(::write(w, "x", 1), 1); }
	void drain()
	{
		char c;
		assert_int_equal(::read(r, &c, 1), 1);
	}
};

// Runs the loop until `done` holds (each turn blocks until a watcher fires).
template <typename F> void run_until(struct ev_loop *loop, F done)
{
	for (int i = 0; i < 1000 && !done(); i++)
		ev_run(loop, EVRUN_ONCE);
	assert_true(done());
}

} // namespace

static void test_waiting_task_gives_the_loop_back(void **)
{
	struct ev_loop *loop = ev_loop_new(EVBACKEND_EPOLL);
	{
		FiberPool pool(loop, 4);
		Pipe p;
		std::vector<std::string> log;
		pool.run(1, [&] {
			log.push_back("a-start");
			assert_true(pool.in_fiber());
			assert_true(pool.wait(p.r, false, -1));
			p.drain();
			log.push_back("a-end");
		});
		// The task is suspended: control is back here, another lane runs.
		assert_int_equal(log.size(), 1);
		assert_int_equal(pool.running(), 1);
		pool.run(2, [&] { log.push_back("b"); });
		assert_int_equal(log.size(), 2);
		assert_str_eq(log[1], "b");
		assert_false(pool.in_fiber());
		p.poke();
		run_until(loop, [&] { return log.size() == 3; });
		assert_str_eq(log[2], "a-end");
		assert_int_equal(pool.running(), 0);
	}
	ev_loop_destroy(loop);
}

static void test_lane_order_and_idle(void **)
{
	struct ev_loop *loop = ev_loop_new(EVBACKEND_EPOLL);
	{
		FiberPool pool(loop, 4);
		Pipe p;
		std::vector<int> order;
		std::vector<uint64_t> idle;
		pool.on_lane_idle = [&](uint64_t lane) { idle.push_back(lane); };
		pool.run(7, [&] {
			assert_true(pool.wait(p.r, false, -1));
			p.drain();
			order.push_back(1);
		});
		pool.run(7, [&] { order.push_back(2); });
		pool.run(7, [&] { order.push_back(3); });
		// Later tasks of the lane wait for the first.
		assert_true(order.empty());
		assert_int_equal(pool.pending(7), 3);
		p.poke();
		run_until(loop, [&] { return order.size() == 3; });
		assert_int_equal(order[0], 1);
		assert_int_equal(order[1], 2);
		assert_int_equal(order[2], 3);
		assert_int_equal(pool.pending(7), 0);
		assert_int_equal(idle.size(), 1);
		assert_int_equal(idle[0], 7);
	}
	ev_loop_destroy(loop);
}

static void test_limit_and_nesting(void **)
{
	struct ev_loop *loop = ev_loop_new(EVBACKEND_EPOLL);
	{
		FiberPool pool(loop, 2);
		Pipe p;
		int started = 0, ended = 0;
		for (uint64_t lane = 1; lane <= 5; lane++)
			pool.run(lane, [&] {
				started++;
				// A task started from a fiber runs at once, on it.
				bool inner = false;
				pool.run(99, [&] { inner = true; });
				assert_true(inner);
				assert_true(pool.wait(p.r, false, -1));
				p.drain();
				ended++;
			});
		// Two fibers at most: the other three lanes wait.
		assert_int_equal(started, 2);
		assert_int_equal(pool.running(), 2);
		for (int i = 0; i < 5; i++)
			p.poke();
		run_until(loop, [&] { return ended == 5; });
		assert_int_equal(started, 5);
		assert_int_equal(pool.pending(99), 0);
	}
	ev_loop_destroy(loop);
}

static void test_timeout(void **)
{
	struct ev_loop *loop = ev_loop_new(EVBACKEND_EPOLL);
	{
		FiberPool pool(loop, 1);
		Pipe p;
		int result = -1;
		pool.run(1, [&] { result = pool.wait(p.r, false, 20) ? 1 : 0; });
		run_until(loop, [&] { return result != -1; });
		assert_int_equal(result, 0); // nothing to read: timed out
		// Outside a fiber, wait() blocks in poll().
		p.poke();
		assert_true(pool.wait(p.r, false, 1000));
		p.drain();
		assert_false(pool.wait(p.r, false, 0));
	}
	ev_loop_destroy(loop);
}

static void test_park(void **)
{
	struct ev_loop *loop = ev_loop_new(EVBACKEND_EPOLL);
	{
		FiberPool pool(loop, 4);
		std::function<void()> wake;
		int result = -1;
		pool.run(1, [&] { result = pool.park([&](std::function<void()> w) { wake = w; }, 5000); });
		assert_int_equal(result, -1); // parked
		wake();
		wake(); // a second call is harmless
		run_until(loop, [&] { return result != -1; });
		assert_int_equal(result, 1);

		// Woken from inside arm: no wait at all.
		result = -1;
		pool.run(1, [&] { result = pool.park([](std::function<void()> w) { w(); }, 5000); });
		assert_int_equal(result, 1);

		// Never woken: the timeout ends it; a late wake does nothing.
		result = -1;
		pool.run(1, [&] { result = pool.park([&](std::function<void()> w) { wake = w; }, 20); });
		run_until(loop, [&] { return result != -1; });
		assert_int_equal(result, 0);
		wake();
		assert_int_equal(pool.running(), 0);

		// Outside a fiber it does not wait.
		bool armed = false;
		assert_false(pool.park([&](std::function<void()>) { armed = true; }, 1000));
		assert_false(armed);
	}
	ev_loop_destroy(loop);
}

static void test_exception_ends_the_task_only(void **)
{
	struct ev_loop *loop = ev_loop_new(EVBACKEND_EPOLL);
	{
		FiberPool pool(loop, 1);
		bool after = false;
		pool.run(1, [] { throw std::runtime_error("boom"); });
		pool.run(1, [&] { after = true; });
		assert_true(after);
		assert_int_equal(pool.running(), 0);
	}
	ev_loop_destroy(loop);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_waiting_task_gives_the_loop_back),
		cmocka_unit_test(test_lane_order_and_idle),
		cmocka_unit_test(test_limit_and_nesting),
		cmocka_unit_test(test_timeout),
		cmocka_unit_test(test_park),
		cmocka_unit_test(test_exception_ends_the_task_only),
	};
	return cmocka_run_group_tests_name("fiber", tests, nullptr, nullptr);
}
