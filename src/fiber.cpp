#include "qryptchat/fiber.hpp"

#include <ev.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdlib>
#include <exception>
#include <memory>

#include "qryptchat/log.hpp"

// AddressSanitizer must be told when the thread changes stacks, or it takes
// the fiber's frames for an overflow of the main stack.
#if defined(__SANITIZE_ADDRESS__)
#define QC_ASAN_FIBERS 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define QC_ASAN_FIBERS 1
#endif
#endif
#ifdef QC_ASAN_FIBERS
#include <sanitizer/common_interface_defs.h>
#endif

namespace qc {

namespace {

// Handlers, cJSON and libpq (with OpenSSL for TLS connections) stay well
// within this; only the pages a fiber touches become memory.  The lowest
// page is a guard: an overflow faults instead of corrupting the heap.
#ifdef QC_ASAN_FIBERS
constexpr size_t kStackBytes = 1024 * 1024;
#else
constexpr size_t kStackBytes = 256 * 1024;
#endif

size_t page_size()
{
	static size_t p = static_cast<size_t>(sysconf(_SC_PAGESIZE));
	return p;
}

// Not inlined into the callers of swapcontext(), which "returns twice":
// their locals would be at risk there (-Wclobbered).
[[gnu::noinline]] void *map_stack()
{
	void *p = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK,
		       -1, 0);
	if (p == MAP_FAILED)
		return nullptr;
	mprotect(p, page_size(), PROT_NONE);
	return p;
}

void start_switch(void **fake, const void *bottom, size_t size)
{
#ifdef QC_ASAN_FIBERS
	__sanitizer_start_switch_fiber(fake, bottom, size);
#else
	(void)fake, (void)bottom, (void)size;
#endif
}

void finish_switch(void *fake, const void **bottom, size_t *size)
{
#ifdef QC_ASAN_FIBERS
	__sanitizer_finish_switch_fiber(fake, bottom, size);
#else
	(void)fake, (void)bottom, (void)size;
#endif
}

} // namespace

struct FiberPool::Fiber {
	ev_io io;                     // its socket, while it waits (data: the fiber)
	ev_timer timer;               // its timeout, likewise
	FiberPool *pool = nullptr;
	ucontext_t ctx{};             // the fiber's own
	ucontext_t back{};            // where it returns to when it waits or ends
	void *stack = nullptr;
	uint64_t lane = 0;
	std::function<void()> fn;
	bool done = false;
	bool timed_out = false;
	std::shared_ptr<bool> parked;  // park(): true until woken or timed out
	const void *back_bottom = nullptr; // the loop's stack, for the sanitizer
	size_t back_size = 0;
};

namespace {
thread_local FiberPool::Fiber *t_starting = nullptr; // handed to entry()
}

FiberPool::FiberPool(struct ev_loop *loop, size_t max_running)
	: loop_(loop), max_running_(max_running ? max_running : 1)
{
}

FiberPool::~FiberPool()
{
	for (void *s : free_stacks_)
		munmap(s, kStackBytes);
}

size_t FiberPool::pending(uint64_t lane) const
{
	auto it = lanes_.find(lane);
	return it == lanes_.end() ? 0 : it->second.pending;
}

void FiberPool::run(uint64_t lane, std::function<void()> fn)
{
	if (current_) {
		fn();
		return;
	}
	Lane &l = lanes_[lane];
	l.queue.push_back(std::move(fn));
	l.pending++;
	if (!l.active) {
		l.active = true;
		ready_.push_back(lane);
	}
	pump();
}

// Starts waiting lanes' next tasks while fibers are free.  Not re-entered:
// a fiber that ends during the loop below is followed up by the loop.
void FiberPool::pump()
{
	if (pumping_)
		return;
	pumping_ = true;
	while (alive_ < max_running_ && !ready_.empty()) {
		uint64_t lane = ready_.front();
		ready_.pop_front();
		Lane &l = lanes_[lane];
		std::function<void()> fn = std::move(l.queue.front());
		l.queue.pop_front();
		start(lane, std::move(fn));
	}
	pumping_ = false;
}

void FiberPool::start(uint64_t lane, std::function<void()> fn)
{
	void *stack;
	if (!free_stacks_.empty()) {
		stack = free_stacks_.back();
		free_stacks_.pop_back();
	} else {
		stack = map_stack();
	}
	if (!stack) {
		// No memory for a stack: run it here, blocking the loop, rather
		// than drop a request.
		QC_ERR("fiber_stack_failed lane=%llu", static_cast<unsigned long long>(lane));
		alive_++;
		Fiber f;
		f.lane = lane;
		f.done = true;
		try {
			fn();
		} catch (const std::exception &e) {
			QC_ERR("task_exception what=%s", log_str(e.what()).c_str());
		}
		finish(&f);
		return;
	}
	auto *f = new Fiber;
	f->pool = this;
	f->stack = stack;
	f->lane = lane;
	f->fn = std::move(fn);
	getcontext(&f->ctx);
	f->ctx.uc_stack.ss_sp = stack;
	f->ctx.uc_stack.ss_size = kStackBytes;
	f->ctx.uc_link = nullptr;
	makecontext(&f->ctx, &FiberPool::entry, 0);
	alive_++;
	t_starting = f;
	resume(f);
}

void FiberPool::entry()
{
	Fiber *f = t_starting;
	t_starting = nullptr;
	finish_switch(nullptr, &f->back_bottom, &f->back_size);
	try {
		f->fn();
	} catch (const std::exception &e) {
		QC_ERR("task_exception what=%s", log_str(e.what()).c_str());
	}
	f->fn = nullptr; // its captures go while the fiber still runs
	f->done = true;
	start_switch(nullptr, f->back_bottom, f->back_size); // this stack is done
	swapcontext(&f->ctx, &f->back);
	abort(); // never resumed once done
}

void FiberPool::resume(Fiber *f)
{
	current_ = f;
	void *fake = nullptr;
	start_switch(&fake, f->stack, kStackBytes);
	swapcontext(&f->back, &f->ctx);
	finish_switch(fake, nullptr, nullptr);
	current_ = nullptr;
	if (f->done)
		finish(f);
}

void FiberPool::finish(Fiber *f)
{
	uint64_t lane = f->lane;
	if (f->stack) {
		if (free_stacks_.size() < max_running_)
			free_stacks_.push_back(f->stack);
		else
			munmap(f->stack, kStackBytes);
		delete f;
	}
	alive_--;
	auto it = lanes_.find(lane);
	if (it != lanes_.end()) {
		Lane &l = it->second;
		l.pending--;
		if (!l.queue.empty()) {
			ready_.push_back(lane);
		} else {
			lanes_.erase(it);
			if (on_lane_idle)
				on_lane_idle(lane);
		}
	}
	pump();
}

bool FiberPool::wait(int fd, bool write, int64_t timeout_ms)
{
	Fiber *f = current_;
	if (!f)
		return blocking_io_wait().wait(fd, write, timeout_ms);
	ev_io_init(&f->io, &FiberPool::on_io, fd, write ? EV_WRITE : EV_READ);
	f->io.data = f;
	ev_io_start(loop_, &f->io);
	ev_init(&f->timer, &FiberPool::on_timer);
	f->timer.data = f;
	if (timeout_ms >= 0) {
		ev_timer_set(&f->timer, static_cast<ev_tstamp>(timeout_ms) / 1000.0, 0.);
		ev_timer_start(loop_, &f->timer);
	}
	f->timed_out = false;
	void *fake = nullptr;
	start_switch(&fake, f->back_bottom, f->back_size);
	swapcontext(&f->ctx, &f->back);
	finish_switch(fake, &f->back_bottom, &f->back_size);
	return !f->timed_out;
}

bool FiberPool::park(const std::function<void(std::function<void()> wake)> &arm, int64_t timeout_ms)
{
	Fiber *f = current_;
	if (!f)
		return false;
	auto parked = std::make_shared<bool>(true);
	f->parked = parked;
	bool woken = false;
	// The wake-up goes through the fiber's timer, at 0 s: the fiber is then
	// resumed from the loop, never from inside whoever calls wake.  A wake
	// after a timeout, or after the fiber moved on, finds `parked` false.
	arm([this, f, parked, &woken] {
		if (!*parked)
			return;
		*parked = false;
		woken = true;
		if (current_ == f)
			return; // woken before it had to wait
		ev_timer_stop(loop_, &f->timer);
		ev_timer_set(&f->timer, 0., 0.);
		ev_timer_start(loop_, &f->timer);
	});
	if (woken) {
		f->parked.reset();
		return true;
	}
	ev_init(&f->timer, &FiberPool::on_timer);
	f->timer.data = f;
	ev_init(&f->io, &FiberPool::on_io); // not started: on_timer stops it harmlessly
	if (timeout_ms >= 0) {
		ev_timer_set(&f->timer, static_cast<ev_tstamp>(timeout_ms) / 1000.0, 0.);
		ev_timer_start(loop_, &f->timer);
	}
	void *fake = nullptr;
	start_switch(&fake, f->back_bottom, f->back_size);
	swapcontext(&f->ctx, &f->back);
	finish_switch(fake, &f->back_bottom, &f->back_size);
	*parked = false;
	f->parked.reset();
	return woken;
}

void FiberPool::on_io(struct ev_loop *loop, ev_io *w, int) noexcept
{
	auto *f = static_cast<Fiber *>(w->data);
	ev_io_stop(loop, &f->io);
	ev_timer_stop(loop, &f->timer);
	f->pool->resume(f);
}

void FiberPool::on_timer(struct ev_loop *loop, ev_timer *w, int) noexcept
{
	auto *f = static_cast<Fiber *>(w->data);
	ev_io_stop(loop, &f->io);
	f->timed_out = true;
	f->pool->resume(f);
}

} // namespace qc
