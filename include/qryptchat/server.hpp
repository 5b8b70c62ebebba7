// server: the libwebsockets context on one epoll event loop, the listener,
// HTTP routes, WebSocket sessions, timers and signals.  Also the public
// interface for embedding qryptchatd in another program: create it from a
// configuration, run it on the calling thread, and stop it from anywhere.
#pragma once

#include <memory>
#include <string>

#include "qryptchat/config.hpp"
#include "qryptchat/util.hpp"

namespace qc {

struct ServerSetup {
	Config cfg;                // the effective configuration
	ConfigSources sources;     // re-read on reload (SIGHUP)
	std::string secret;        // the JWT secret (already checked)
	std::string ready_file;    // written with the port once listening ("" = none)
	bool handle_signals = true; // TERM/INT stop, HUP reloads (the daemon; embedders may not want it)
};

class Server
{
public:
	// Opens the store and binds the listener.  Errors are for the
	// operator (they name the file or the address).
	static Result<std::unique_ptr<Server>> create(ServerSetup setup);
	~Server();
	Server(const Server &) = delete;
	Server &operator=(const Server &) = delete;

	// Serves until stopped; returns the process exit status (0 on a clean
	// stop, 1 on a runtime failure).  Must be called on one thread only.
	int run();
	// Asks the loop to stop (close every socket with 1001) or to reload the
	// configuration.  Safe from any thread and from signal handlers.
	void request_stop();
	void request_reload();
	// The bound port (useful with port 0).
	int port() const;
	// The /stats JSON: the first call gets the one taken at start-up, and
	// from then on it is at most a second old.  Safe from any thread.
	std::string stats_json() const;

private:
	Server();
	struct Impl;
	std::unique_ptr<Impl> impl_;
};

} // namespace qc
