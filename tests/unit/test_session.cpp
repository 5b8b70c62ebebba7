// session: reassembly with its bound, the bounded outbound queue, closes.
#include "cmocka.hpp"
#include "qryptchat/session.hpp"

using namespace qc;

static FramePtr frame(size_t n)
{
	auto f = std::make_shared<Frame>();
	f->buf.assign(kFrameHeadroom, '\0');
	f->buf.append(n, 'x');
	return f;
}

static void test_reassembly(void **)
{
	Session s;
	assert_int_equal(s.receive("{\"ty", 4, false, false, 100), Session::Rx::Partial);
	assert_int_equal(s.receive("pe\":1}", 6, false, true, 100), Session::Rx::Text);
	assert_str_eq(s.rx, "{\"type\":1}");
	s.rx_done();
	assert_int_equal(s.receive("ab", 2, false, true, 100), Session::Rx::Text);
	assert_str_eq(s.rx, "ab");
	s.rx_done();
	// binary: bytes counted, not kept
	assert_int_equal(s.receive("\x01\x02", 2, true, false, 100), Session::Rx::Partial);
	assert_int_equal(s.receive("\x03", 1, false, true, 100), Session::Rx::Binary);
	assert_true(s.rx.empty());
	s.rx_done();
}

static void test_size_bound_at_n_and_n_plus_1(void **)
{
	Session s;
	std::string half(50, 'a');
	assert_int_equal(s.receive(half.data(), 50, false, false, 100), Session::Rx::Partial);
	assert_int_equal(s.receive(half.data(), 50, false, true, 100), Session::Rx::Text);
	s.rx_done();
	assert_int_equal(s.receive(half.data(), 50, false, false, 100), Session::Rx::Partial);
	assert_int_equal(s.receive(half.data(), 50, false, false, 100), Session::Rx::Partial);
	assert_int_equal(s.receive("x", 1, false, true, 100), Session::Rx::TooBig);
	Session b;
	std::string big(101, 'b');
	assert_int_equal(b.receive(big.data(), 101, true, true, 100), Session::Rx::TooBig);
}

static void test_queue_bound(void **)
{
	Session s;
	assert_int_equal(s.enqueue(frame(60), 100), Session::Enq::Queued);
	assert_int_equal(s.enqueue(frame(40), 100), Session::Enq::Queued); // exactly at the bound
	assert_int_equal(s.out_bytes, 100);
	assert_int_equal(s.enqueue(frame(1), 100), Session::Enq::Overflow);
	assert_true(s.outq.empty()); // the slow reader's queue is dropped
	assert_int_equal(s.out_bytes, 0);
}

static void test_close(void **)
{
	Session s;
	s.enqueue(frame(10), 100);
	s.set_close(1008, "too many failed authentication attempts", false);
	assert_int_equal(s.outq.size(), 1); // the error before the close still goes out
	assert_int_equal(s.enqueue(frame(10), 100), Session::Enq::Dropped);
	s.set_close(1001, "later", true); // the first decision wins
	assert_int_equal(s.close_code, 1008);
	Session t;
	t.enqueue(frame(10), 100);
	t.set_close(1001, "server shutting down", true);
	assert_true(t.outq.empty());
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_reassembly), cmocka_unit_test(test_size_bound_at_n_and_n_plus_1),
		cmocka_unit_test(test_queue_bound), cmocka_unit_test(test_close),
	};
	return cmocka_run_group_tests_name("session", tests, nullptr, nullptr);
}
