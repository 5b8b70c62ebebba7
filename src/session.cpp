#include "qryptchat/session.hpp"

namespace qc {

Session::Rx Session::receive(const void *data, size_t len, bool binary, bool final, size_t max_bytes)
{
	if (!rx_active) {
		rx_active = true;
		rx_binary = binary;
		rx_bytes = 0;
		rx.clear();
	}
	rx_bytes += len;
	if (rx_bytes > max_bytes)
		return Rx::TooBig;
	// Binary messages are refused whole; their bytes need not be kept.
	if (!rx_binary)
		rx.append(static_cast<const char *>(data), len);
	if (!final)
		return Rx::Partial;
	return rx_binary ? Rx::Binary : Rx::Text;
}

void Session::rx_done()
{
	rx_active = false;
	rx_bytes = 0;
	// Keep the capacity of ordinary messages, give back that of big ones.
	if (rx.capacity() > 16384)
		std::string().swap(rx);
	else
		rx.clear();
}

Session::Enq Session::enqueue(const FramePtr &f, size_t max_bytes)
{
	if (close_code != 0)
		return Enq::Dropped;
	if (out_bytes + f->size() > max_bytes) {
		outq.clear();
		out_bytes = 0;
		return Enq::Overflow;
	}
	outq.push_back(f);
	out_bytes += f->size();
	return Enq::Queued;
}

void Session::set_close(int code, std::string reason, bool drop_queue)
{
	if (close_code != 0)
		return;
	close_code = code;
	close_reason = std::move(reason);
	if (drop_queue) {
		outq.clear();
		out_bytes = 0;
	}
}

} // namespace qc
