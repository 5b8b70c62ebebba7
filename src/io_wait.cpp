#include "qryptchat/io_wait.hpp"

#include <poll.h>

#include <cerrno>

#include "qryptchat/util.hpp"

namespace qc {

namespace {

class PollWait final : public IoWait
{
public:
	bool wait(int fd, bool write, int64_t timeout_ms) override
	{
		int64_t deadline = timeout_ms < 0 ? -1 : mono_us() / 1000 + timeout_ms;
		for (;;) {
			int left = -1;
			if (deadline >= 0) {
				int64_t l = deadline - mono_us() / 1000;
				left = l < 0 ? 0 : static_cast<int>(l);
			}
			struct pollfd p = {fd, static_cast<short>(write ? POLLOUT : POLLIN), 0};
			int n = ::poll(&p, 1, left);
			if (n > 0)
				return true; // ready, or an error the caller's next call reports
			if (n == 0)
				return false;
			if (errno != EINTR)
				return true;
		}
	}
};

} // namespace

IoWait &blocking_io_wait()
{
	static PollWait w;
	return w;
}

} // namespace qc
