// loop-cost: what one event-loop wake-up costs a libwebsockets 4.1.6 server
// as idle connections accumulate, with lws's default poll() loop against
// its libev backend on an epoll loop (the loop qryptchatd runs on).
//
// A child process runs a minimal lws echo server on the chosen loop; the
// parent opens N idle WebSocket connections to it, then makes M echo round
// trips on one more connection and reads the server's CPU time from
// /proc/PID/stat around them.  The figure is server CPU per round trip:
// one wake-up to read the message and one to write the echo.
//
//   loop-cost [--loop poll|libev] [--idle N[,N...]] [--echoes M] [--runs R]
#include <ev.h>
#include <libwebsockets.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "../tests/support/wsclient.hpp"
#include "procstat.hpp"

namespace {

struct Pss {
	std::string *pending;
};

int echo_callback(lws *wsi, lws_callback_reasons reason, void *user, void *in, size_t len)
{
	auto *pss = static_cast<Pss *>(user);
	switch (reason) {
	case LWS_CALLBACK_ESTABLISHED:
		pss->pending = new std::string(LWS_PRE, '\0');
		break;
	case LWS_CALLBACK_RECEIVE:
		pss->pending->append(static_cast<const char *>(in), len);
		if (lws_is_final_fragment(wsi))
			lws_callback_on_writable(wsi);
		break;
	case LWS_CALLBACK_SERVER_WRITEABLE: {
		std::string &p = *pss->pending;
		size_t n = p.size() - LWS_PRE;
		if (n && lws_write(wsi, reinterpret_cast<unsigned char *>(&p[LWS_PRE]), n, LWS_WRITE_TEXT) <
				 static_cast<int>(n))
			return -1;
		p.resize(LWS_PRE);
		break;
	}
	case LWS_CALLBACK_CLOSED:
		delete pss->pending;
		pss->pending = nullptr;
		break;
	default:
		break;
	}
	return 0;
}

lws_protocols protocols[] = {
	{"echo", echo_callback, sizeof(Pss), 1024, 0, nullptr, 0},
	{nullptr, nullptr, 0, 0, 0, nullptr, 0},
};

// Runs the server until killed; writes the port to `fd` once listening.
[[noreturn]] void serve(bool use_libev, int fd)
{
	lws_set_log_level(LLL_ERR, nullptr);
	struct ev_loop *loop = nullptr;
	void *foreign[1] = {nullptr};
	lws_context_creation_info info;
	memset(&info, 0, sizeof info);
	info.port = 0; // the kernel chooses
	info.iface = "127.0.0.1";
	info.protocols = protocols;
	if (use_libev) {
		loop = ev_loop_new(EVBACKEND_EPOLL | EVFLAG_NOENV);
		foreign[0] = loop;
		info.options |= LWS_SERVER_OPTION_LIBEV;
		info.foreign_loops = foreign;
	}
	lws_context *ctx = lws_create_context(&info);
	if (!ctx) {
		fprintf(stderr, "loop-cost: cannot create the lws context\n");
		_exit(1);
	}
	int port = lws_get_vhost_listen_port(lws_get_vhost_by_name(ctx, "default"));
	if (write(fd, &port, sizeof port) != sizeof port)
		_exit(1);
	close(fd);
	if (use_libev)
		ev_run(loop, 0);
	else
		for (;;)
			lws_service(ctx, 0);
	_exit(0);
}

struct Result {
	double us_per_echo;
	double wall_us_per_echo;
};

bool measure(bool use_libev, int idle, int echoes, Result &out)
{
	int fds[2];
	if (pipe(fds) != 0)
		return false;
	pid_t pid = fork();
	if (pid == 0) {
		close(fds[0]);
		serve(use_libev, fds[1]);
	}
	close(fds[1]);
	int port = 0;
	bool ok = read(fds[0], &port, sizeof port) == sizeof port && port > 0;
	close(fds[0]);
	std::vector<std::unique_ptr<qc::test::WsClient>> clients;
	std::unique_ptr<qc::test::WsClient> active;
	if (ok) {
		for (int i = 0; i < idle && ok; i++) {
			clients.push_back(qc::test::WsClient::connect(port, "/"));
			ok = clients.back() != nullptr;
		}
		if (ok)
			active = qc::test::WsClient::connect(port, "/");
		ok = ok && active;
	}
	if (ok) {
		const std::string msg(100, 'x');
		for (int i = 0; i < 100 && ok; i++) // warm-up
			ok = active->send_text(msg) && active->recv(5000).kind == qc::test::WsEvent::Text;
		double c0 = qc::bench::proc_cpu_s(pid);
		auto t0 = std::chrono::steady_clock::now();
		for (int i = 0; i < echoes && ok; i++)
			ok = active->send_text(msg) && active->recv(5000).kind == qc::test::WsEvent::Text;
		auto t1 = std::chrono::steady_clock::now();
		double c1 = qc::bench::proc_cpu_s(pid);
		out.us_per_echo = (c1 - c0) * 1e6 / echoes;
		out.wall_us_per_echo =
			std::chrono::duration<double, std::micro>(t1 - t0).count() / echoes;
	}
	kill(pid, SIGKILL);
	waitpid(pid, nullptr, 0);
	return ok;
}

double median(std::vector<double> v)
{
	std::sort(v.begin(), v.end());
	return v[v.size() / 2];
}

void usage(FILE *f)
{
	fprintf(f, "usage: loop-cost [--loop poll|libev|both] [--idle N[,N...]] [--echoes M] [--runs R]\n"
		   "Server CPU per echo round trip with N idle connections open, median of R runs.\n");
}

} // namespace

int main(int argc, char **argv)
{
	std::vector<std::string> loops = {"poll", "libev"};
	std::vector<int> idles = {0, 1000, 5000};
	int echoes = 20000, runs = 3;
	for (int i = 1; i < argc; i++) {
		std::string a = argv[i];
		auto next = [&]() -> std::string {
			if (i + 1 >= argc) {
				usage(stderr);
				exit(2);
			}
			return argv[++i];
		};
		if (a == "--loop") {
			std::string l = next();
			loops = l == "both" ? std::vector<std::string>{"poll", "libev"} : std::vector<std::string>{l};
		} else if (a == "--idle") {
			idles.clear();
			std::stringstream ss(next());
			for (std::string n; std::getline(ss, n, ',');)
				idles.push_back(std::atoi(n.c_str()));
		} else if (a == "--echoes") {
			echoes = std::atoi(next().c_str());
		} else if (a == "--runs") {
			runs = std::atoi(next().c_str());
		} else if (a == "--help" || a == "-h") {
			usage(stdout);
			return 0;
		} else {
			usage(stderr);
			return 2;
		}
	}
	for (const auto &l : loops)
		if (l != "poll" && l != "libev") {
			usage(stderr);
			return 2;
		}
	if (echoes < 1 || runs < 1) {
		usage(stderr);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	printf("%-6s %8s %18s %18s\n", "loop", "idle", "server CPU us/echo", "wall us/echo");
	for (int idle : idles)
		for (const auto &l : loops) {
			std::vector<double> cpu, wall;
			for (int r = 0; r < runs; r++) {
				Result res{};
				if (!measure(l == "libev", idle, echoes, res)) {
					fprintf(stderr, "loop-cost: the %s run with %d idle connections failed "
							"(raise the open-file limit?)\n",
						l.c_str(), idle);
					return 1;
				}
				cpu.push_back(res.us_per_echo);
				wall.push_back(res.wall_us_per_echo);
			}
			printf("%-6s %8d %18.1f %18.1f\n", l.c_str(), idle, median(cpu), median(wall));
			fflush(stdout);
		}
	return 0;
}
