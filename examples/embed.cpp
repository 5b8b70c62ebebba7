// An appliance that hosts qryptchatd inside its own process: it builds the
// configuration in code, runs the server on a thread of its own, watches
// it through stats_json(), and stops it when it is done.
//
//   build/examples/embed           start, check /health, stop (exit 0 if all went well)
//   build/examples/embed --serve   serve on 127.0.0.1:8080 until Ctrl-C
//
// Link with libqryptchat.a and the libraries `make` links qryptchatd with.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "qryptchat/config.hpp"
#include "qryptchat/server.hpp"

namespace {

qc::Server *g_server = nullptr;

void on_sigint(int) { g_server->request_stop(); } // safe in a signal handler

// GET /health over a plain socket: the HTTP status, or -1.
int health_status(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	sockaddr_in a{};
	a.sin_family = AF_INET;
	a.sin_port = htons(static_cast<uint16_t>(port));
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || connect(fd, reinterpret_cast<sockaddr *>(&a), sizeof a) != 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	const char req[] = "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
	char buf[512] = {0};
	ssize_t n = write(fd, req, sizeof req - 1) == sizeof req - 1 ? read(fd, buf, sizeof buf - 1) : -1;
	close(fd);
	int status = -1;
	if (n > 0 && sscanf(buf, "HTTP/1.%*d %d", &status) != 1)
		status = -1;
	return status;
}

} // namespace

int main(int argc, char **argv)
{
	bool serve = argc > 1 && strcmp(argv[1], "--serve") == 0;
	char dir[] = "/tmp/qryptchat-embed-XXXXXX";
	if (!mkdtemp(dir))
		return 1;

	// The configuration, as the appliance's own settings would give it.
	qc::Config cfg = qc::config_defaults();
	for (auto [name, value] : {std::pair<const char *, std::string>{"listen", serve ? "127.0.0.1:8080" : "127.0.0.1:0"},
				   {"database", std::string(dir) + "/chat.db"},
				   {"web_root", ""},
				   {"max_connections", "200"},
				   {"log_level", "warn"}})
		if (auto e = qc::config_set(cfg, name, value, "appliance")) {
			fprintf(stderr, "embed: %s\n", e->text().c_str());
			return 1;
		}
	if (auto e = qc::config_validate(cfg)) {
		fprintf(stderr, "embed: %s\n", e->text().c_str());
		return 1;
	}

	qc::ServerSetup setup;
	setup.cfg = cfg;
	setup.secret = "appliance-secret-of-at-least-32-bytes!";
	setup.handle_signals = false; // the appliance owns its signals
	auto server = qc::Server::create(std::move(setup));
	if (!server) {
		fprintf(stderr, "embed: %s\n", server.error().message.c_str());
		return 1;
	}
	g_server = server->get();
	std::thread loop([&] { (*server)->run(); });
	printf("embed: serving on 127.0.0.1:%d\n", (*server)->port());

	int rc = 0;
	if (serve) {
		signal(SIGINT, on_sigint);
		loop.join();
	} else {
		int status = health_status((*server)->port());
		std::string stats = (*server)->stats_json();
		printf("embed: /health %d; stats %s\n", status, stats.substr(0, 60).c_str());
		rc = status == 200 && stats.find("\"totalConnections\":0") != std::string::npos ? 0 : 1;
		(*server)->request_stop(); // from another thread than the loop's
		loop.join();
	}
	server->reset();
	for (const char *f : {"/chat.db", "/chat.db-wal", "/chat.db-shm"})
		unlink((std::string(dir) + f).c_str());
	rmdir(dir);
	printf("embed: stopped%s\n", rc ? " (check failed)" : "");
	return rc;
}
