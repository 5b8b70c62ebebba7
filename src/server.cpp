#include "qryptchat/server.hpp"

#include <arpa/inet.h>
#include <ev.h>
#include <fcntl.h>
#include <libwebsockets.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <unordered_map>

#include "qryptchat/broker.hpp"
#include "qryptchat/broker_redis.hpp"
#include "qryptchat/fiber.hpp"
#include "qryptchat/handlers.hpp"
#include "qryptchat/log.hpp"
#include "qryptchat/session.hpp"
#include "qryptchat/stats.hpp"
#include "qryptchat/store_pg.hpp"
#include "qryptchat/store_sqlite.hpp"
#include "qryptchat/web.hpp"

namespace qc {

namespace {

// Per-wsi storage that lws allocates (zeroed) for our one protocol.
struct Pss {
	SessionId id;            // WebSocket: the session, from ESTABLISHED
	struct HttpReply *http;  // plain HTTP: the reply being written
};

// How a plain HTTP answer may be cached, and whether it is a file of the
// web client (which then gets its security headers).
struct HttpMeta {
	const char *cache = "no-store";
	std::string etag; // "" = none
	bool web = false;
};

// A plain HTTP reply waiting for HTTP_WRITEABLE.
struct HttpReply {
	std::string buf;         // LWS_PRE bytes, then the body
	bool head_only = false;  // HEAD: headers were the whole answer
};

// With permessage-deflate, lws frames (and compresses) each message: up to
// this many are written per WRITEABLE while the socket takes them, which
// saves a loop round trip per frame under load.
constexpr int kMaxFramesPerWriteable = 16;

// Without it, frames are framed here and written together: up to this many
// bytes per system call (a larger frame goes alone).
constexpr size_t kMaxWriteBytes = 64 * 1024;

// See Impl::lws_tick.
constexpr lws_usec_t kLwsTickUs = 100 * LWS_US_PER_MS;

// How long a shutdown waits for close handshakes before it cuts the rest.
constexpr ev_tstamp kShutdownGraceS = 0.5;

// The table of client addresses is swept once it holds this many, and
// then whenever it has doubled since the last sweep (see sweep_per_ip).
constexpr size_t kPerIpSweepMin = 1024;

// With the PostgreSQL store, a connection's requests wait in its lane while
// an earlier one waits for the database; past this many, lws stops reading
// the socket until the lane drains (TCP then pushes back on the client).
constexpr size_t kMaxQueuedRequests = 64;

// The lane of tasks that belong to no connection (presence pushes decided
// by the cluster broker, the database probe).  Session ids start at 1.
constexpr uint64_t kServerLane = 0;

// The longest a join or an authentication waits for Redis to confirm a
// subscription (see await_broker).
constexpr int64_t kBrokerWaitMs = 2000;

// The upgrade is refused with this HTTP status.
struct Refusal {
	unsigned int status;
	const char *message;
};

bool write_ready_file(const std::string &path, int port)
{
	std::string tmp = path + ".tmp";
	FILE *f = fopen(tmp.c_str(), "w");
	if (!f)
		return false;
	bool ok = fprintf(f, "%d\n", port) > 0;
	ok = (fclose(f) == 0) && ok;
	return ok && rename(tmp.c_str(), path.c_str()) == 0;
}

} // namespace

struct Server::Impl final : public Host, public DeliverySink, public ClusterListener {
	ServerSetup setup;
	Config &cfg = setup.cfg;
	AuthParams auth;
	Stats stats;
	RoomTable rooms;
	std::unique_ptr<Store> store;
	std::unique_ptr<Broker> broker;
	RedisBroker *redis = nullptr;      // the broker, when it is the cluster one
	std::unique_ptr<Ctx> ctx;

	// Requests that may wait for the database.  With SQLite they run inline
	// (fibers is null); with PostgreSQL each runs on a fiber, in its
	// connection's lane (see fiber.hpp).  A closed connection's session is
	// kept, detached from lws, until its lane has finished.
	std::unique_ptr<FiberPool> fibers;
	bool database_ok = true;           // PostgreSQL: the last probe's answer
	bool probe_running = false;
	void run_task(uint64_t lane, std::function<void()> fn)
	{
		if (fibers)
			fibers->run(lane, std::move(fn));
		else
			fn();
	}
	void lane_idle(uint64_t lane);
	Status open_store();
	void open_broker();

	struct ev_loop *loop = nullptr;
	lws_context *lws_ctx = nullptr;
	lws_vhost *vhost = nullptr;
	lws_retry_bo_t retry{};            // ping / idle policy, updated on reload
	lws_protocols protocols[2]{};
	lws_extension extensions[2]{};

	int listen_fd = -1;
	int bound_port = 0;
	ev_io accept_watcher{};
	ev_timer accept_pause{};           // accept() paused after EMFILE
	ev_signal sig_term{}, sig_int{}, sig_hup{}, sig_usr1{};
	ev_async async_stop{}, async_reload{};
	ev_timer shutdown_timer{};
	ev_tstamp shutdown_deadline = 0;
	bool stopping = false;
	bool cluster_left = false;         // RedisBroker::shutdown() called
	int exit_status = 0;
	int64_t started_ms = 0;

	SessionId next_id = 1;
	std::unordered_map<SessionId, std::unique_ptr<Session>> sessions;

	// Output.  A frame queued during a loop turn is written when the turn
	// ends (an ev_prepare watcher runs just before the loop waits): every
	// frame queued to one socket in that turn goes out in one send(), and
	// a socket that takes it all costs no epoll_ctl() to ask for POLLOUT.
	// Only when the kernel does not take everything does lws hold the rest
	// and call WRITEABLE once the socket drains.
	bool raw_writes = true;            // false with permessage-deflate
	ev_tstamp validity_step = 1;       // see on_receive
	ev_prepare flush_watcher{};
	std::vector<Session *> to_flush;   // sessions with frames queued this turn
	std::vector<Session *> flushing;   // the list being written (see on_closed)
	std::string wire;                  // the bytes of one write

	// Group commit (see Store::begin_batch): the store's writes during a
	// loop turn share one transaction, committed by commit_batch() before
	// any frame is written.  If that commit fails, what the turn queued is
	// taken back and each request handled in it is answered DATABASE_ERROR.
	uint64_t batch_epoch = 1;
	std::vector<SessionId> batch_sessions;  // sessions that got frames this batch
	std::vector<std::pair<SessionId, std::optional<std::string>>> batch_requests;
	void commit_batch();
	ev_timer typing_timer{};           // the earliest typing deadline
	ev_timer change_timer{};           // every second: changes by other processes (admin),
					   // and the stats snapshot
	mutable std::mutex snapshot_mu;    // guards snapshot, read by other threads (embedding)
	std::string snapshot;              // render_stats() of the last second
	std::atomic<bool> snapshot_wanted{false}; // stats_json() was called: keep snapshot fresh
	// lws 4.1.6's libev glue re-arms its timer with ev_timer_set() on a
	// watcher that may still be active, which libev ignores: a timer added
	// earlier than the armed one (a ping, a close handshake timeout) then
	// waits for the old deadline.  A self-rescheduling lws timer keeps the
	// armed deadline at most kLwsTickUs away, which bounds that delay.
	struct LwsTick {
		lws_sorted_usec_list_t sul; // first: the callback gets only this
		Impl *owner;
	} lws_tick{};

	// Per client address: open connections and the new-connection bucket.
	struct PerIp {
		int64_t open = 0;
		TokenBucket rate;
	};
	std::unordered_map<std::string, PerIp> per_ip;
	size_t per_ip_sweep_at = kPerIpSweepMin;
	void sweep_per_ip(int64_t now_us);

	// An upgrade between FILTER_PROTOCOL_CONNECTION and ESTABLISHED (the
	// two happen in one call; nothing else runs in between).
	struct Pending {
		lws *wsi = nullptr;
		std::string ip;
		std::optional<Claims> claims;
	} pending;

	~Impl() override;
	Status init();
	Status open_listener();
	Status create_context();
	// TLS (tls_cert, tls_key): the paths lws was given, fixed until a
	// restart; their files are read again on SIGHUP.
	std::string tls_cert, tls_key;
	Status check_tls_files();
	void reload_tls();
	void apply_runtime_config();

	// ClusterListener
	void presence_changed(const std::string &user, bool online) override
	{
		run_task(kServerLane, [this, user, online] { handle_presence_changed(*ctx, user, online); });
	}

	// Host and DeliverySink
	void send(SessionId s, const FramePtr &f) override { deliver(s, f); }
	void deliver(SessionId s, const FramePtr &f) override;
	void close(SessionId s, int code, const std::string &reason) override;
	void token_changed(SessionId s) override;
	void typing_changed() override;
	void await_broker() override;

	Session *find(SessionId id)
	{
		auto it = sessions.find(id);
		return it == sessions.end() ? nullptr : it->second.get();
	}

	// lws callback pieces
	int on_http(lws *wsi, Pss *pss, const char *path);
	int on_http_writeable(lws *wsi, Pss *pss);
	int on_filter(lws *wsi);
	int on_established(lws *wsi, Pss *pss);
	int on_receive(lws *wsi, Pss *pss, const void *in, size_t len);
	int on_writeable(lws *wsi, Pss *pss);
	bool write_queued(Session *s);
	bool write_each_by_lws(Session *s);
	bool send_wire(Session *s);
	void on_closed(Pss *pss);
	void forget(SessionId id);
	void on_destroy(Pss *pss);

	std::string client_ip(lws *wsi);
	bool admin_allowed(lws *wsi);
	std::optional<Refusal> check_limits(const std::string &ip);
	int refuse(lws *wsi, const Refusal &r);
	int reply_http(lws *wsi, Pss *pss, unsigned int status, const char *type, std::string body,
		       bool head_only, const HttpMeta &meta = HttpMeta{});
	int serve_web(lws *wsi, Pss *pss, const std::string &path, bool head);
	std::string web_root;              // canonical web_root, "" when the web client is not served
	std::string render_stats();
	std::string metrics_text();
	Gauges gauges();

	void begin_shutdown();
	void maybe_finish_shutdown();
	void reload();

	static int callback(lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
			    size_t len) noexcept;
	static void on_accept(struct ev_loop *loop, ev_io *w, int revents) noexcept;
	static void on_accept_resume(struct ev_loop *loop, ev_timer *w, int revents) noexcept;
	static void on_signal(struct ev_loop *loop, ev_signal *w, int revents) noexcept;
	static void on_async(struct ev_loop *loop, ev_async *w, int revents) noexcept;
	static void on_shutdown_tick(struct ev_loop *loop, ev_timer *w, int revents) noexcept;
	static void on_auth_timeout(struct ev_loop *loop, ev_timer *w, int revents) noexcept;
	static void on_token_timeout(struct ev_loop *loop, ev_timer *w, int revents) noexcept;
	static void on_typing_timer(struct ev_loop *loop, ev_timer *w, int revents) noexcept;
	static void on_change_timer(struct ev_loop *loop, ev_timer *w, int revents) noexcept;
	static void on_lws_tick(lws_sorted_usec_list_t *sul) noexcept;
	static void on_prepare(struct ev_loop *loop, ev_prepare *w, int revents) noexcept;
};

// ---------------------------------------------------------------- setup

Server::Impl::~Impl()
{
	if (lws_ctx)
		lws_context_destroy(lws_ctx);
	if (listen_fd >= 0)
		::close(listen_fd);
	if (loop)
		ev_loop_destroy(loop);
}

void Server::Impl::apply_runtime_config()
{
	LogLevel level;
	if (parse_log_level(cfg.log_level, level))
		g_log_level = level;
	parse_log_format(cfg.log_format, g_log_format);
	if (std::string err = log_set_file(cfg.log_file); !err.empty())
		QC_ERR("log_file_failed reason=%s", log_str(err).c_str());
	auth.secret = setup.secret;
	auth.leeway_s = cfg.jwt_leeway_ms / 1000;
	auth.audience = cfg.jwt_audience;
	auth.issuer = cfg.jwt_issuer;
	auth.require_exp = cfg.jwt_require_exp;
	// lws reads the policy through a pointer each time it re-arms a
	// connection's validity timer, so new values apply from the next one.
	retry.secs_since_valid_ping = static_cast<uint16_t>(cfg.ping_interval_ms / 1000);
	validity_step = static_cast<double>(cfg.ping_interval_ms) / 4000.0;
	retry.secs_since_valid_hangup = static_cast<uint16_t>(cfg.idle_timeout_ms / 1000);
}

Status Server::Impl::open_listener()
{
	const std::string &host = cfg.listen_host;
	sockaddr_storage ss{};
	socklen_t sslen;
	int family;
	if (host == "*") {
		auto *in6 = reinterpret_cast<sockaddr_in6 *>(&ss);
		in6->sin6_family = AF_INET6;
		in6->sin6_addr = in6addr_any;
		in6->sin6_port = htons(static_cast<uint16_t>(cfg.listen_port));
		family = AF_INET6;
		sslen = sizeof *in6;
	} else {
		auto ip = parse_ip(host);
		if (!ip)
			return make_error(Err::ServerError, "listen: bad address " + host);
		family = ip->family;
		if (family == AF_INET) {
			auto *in = reinterpret_cast<sockaddr_in *>(&ss);
			in->sin_family = AF_INET;
			memcpy(&in->sin_addr, ip->addr, 4);
			in->sin_port = htons(static_cast<uint16_t>(cfg.listen_port));
			sslen = sizeof *in;
		} else {
			auto *in6 = reinterpret_cast<sockaddr_in6 *>(&ss);
			in6->sin6_family = AF_INET6;
			memcpy(&in6->sin6_addr, ip->addr, 16);
			in6->sin6_port = htons(static_cast<uint16_t>(cfg.listen_port));
			sslen = sizeof *in6;
		}
	}
	// We bind the listener ourselves and hand accepted sockets to lws:
	// lws 4.1.6's own listener ignores the address it is given (`iface`)
	// and listens on every interface.
	int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0 && host == "*" && errno == EAFNOSUPPORT) {
		// No IPv6 on this host: all IPv4 addresses instead.
		auto *in = reinterpret_cast<sockaddr_in *>(&ss);
		memset(&ss, 0, sizeof ss);
		in->sin_family = AF_INET;
		in->sin_addr.s_addr = htonl(INADDR_ANY);
		in->sin_port = htons(static_cast<uint16_t>(cfg.listen_port));
		sslen = sizeof *in;
		family = AF_INET;
		fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	}
	if (fd < 0)
		return make_error(Err::ServerError, std::string("listen: socket: ") + strerror(errno));
	int one = 1, zero = 0;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, host == "*" ? &zero : &one, sizeof one);
	if (bind(fd, reinterpret_cast<sockaddr *>(&ss), sslen) < 0 || listen(fd, SOMAXCONN) < 0) {
		int e = errno;
		::close(fd);
		return make_error(Err::ServerError, "listen " + cfg.listen + ": " + strerror(e));
	}
	sockaddr_storage bound{};
	socklen_t blen = sizeof bound;
	getsockname(fd, reinterpret_cast<sockaddr *>(&bound), &blen);
	bound_port = bound.ss_family == AF_INET6
			     ? ntohs(reinterpret_cast<sockaddr_in6 *>(&bound)->sin6_port)
			     : ntohs(reinterpret_cast<sockaddr_in *>(&bound)->sin_port);
	listen_fd = fd;
	return ok_status();
}

Status Server::Impl::create_context()
{
	protocols[0].name = "qryptchat";
	protocols[0].callback = &Server::Impl::callback;
	protocols[0].per_session_data_size = sizeof(Pss);
	// The receive buffer bounds one RECEIVE chunk; messages are reassembled
	// in the session, so a small buffer costs calls, not correctness.  lws
	// keeps one per connection.  Measured with bench/run: 2048 bytes cost
	// 5.5 KB per idle connection against 7.5 KB with 4096 and 4.5 KB with
	// 1024, and kept the store-bound throughput of 4096 (34k messages/s)
	// where 1024 lost 14 % of it to extra recv() calls.
	protocols[0].rx_buffer_size = 2048;
	// One coalesced write goes to the kernel in one piece (lws would
	// otherwise cut sends at rx_buffer_size and buffer the rest).
	protocols[0].tx_packet_size = kMaxWriteBytes;
	// protocols[1] stays all-NULL: the terminator (lws 4.1.6 has no
	// LWS_PROTOCOL_LIST_TERM).

	extensions[0].name = "permessage-deflate";
	extensions[0].callback = lws_extension_callback_pm_deflate;
	extensions[0].client_offer = "permessage-deflate; client_max_window_bits";

	lws_context_creation_info info;
	memset(&info, 0, sizeof info);
	// The event loop: lws's libev backend on a libev loop we own, with the
	// epoll backend.  bench/loop-cost measures what one echo round trip
	// costs an lws 4.1.6 server as idle connections accumulate (server CPU
	// per echo, medians of 3 runs on a 2-core VM, two sessions): poll()
	// 20-25 / 310-460 / 1520-1960 us with 0 / 1,000 / 5,000 idle
	// connections, libev 16-31 / 17-24 / 17-23 us.  The
	// default poll() loop scans every socket on every wake-up, which a chat
	// server with thousands of mostly idle connections cannot afford; libev
	// stays flat, and costs about the same as poll with none.  libuv, the
	// other epoll backend, costs 1.3-1.5 times libev's CPU per delivered
	// frame (bench/README.md has the figures).  Owning the loop
	// also gives us signal watchers that run on the loop thread and a place
	// for other sockets (the listener; later Redis and PostgreSQL).
	info.options = LWS_SERVER_OPTION_LIBEV | LWS_SERVER_OPTION_VALIDATE_UTF8 |
		       LWS_SERVER_OPTION_EXPLICIT_VHOSTS;
	void *foreign[1] = {loop};
	info.foreign_loops = foreign;
	info.user = this;
	info.pt_serv_buf_size = 16384;
	// Tokens may travel in a header or the query string: room for them.
	info.max_http_header_data = 16384;
	info.timeout_secs = 10;
	info.server_string = "qryptchatd";
	if (!tls_cert.empty())
		info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
	lws_ctx = lws_create_context(&info);
	if (!lws_ctx)
		return make_error(Err::ServerError,
				  "cannot create the libwebsockets context (is the package "
				  "libwebsockets-evlib-ev installed?)");

	lws_context_creation_info vi;
	memset(&vi, 0, sizeof vi);
	vi.vhost_name = "qryptchatd";
	vi.port = CONTEXT_PORT_NO_LISTEN_SERVER;
	vi.protocols = protocols;
	vi.options = LWS_SERVER_OPTION_VALIDATE_UTF8;
	vi.retry_and_idle_policy = &retry;
	vi.keepalive_timeout = 5;
	if (cfg.permessage_deflate)
		vi.extensions = extensions;
	if (!tls_cert.empty()) {
		vi.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT; // lws reads it per vhost too
		vi.ssl_cert_filepath = tls_cert.c_str();
		vi.ssl_private_key_filepath = tls_key.c_str();
	}
	vhost = lws_create_vhost(lws_ctx, &vi);
	if (!vhost)
		return make_error(Err::ServerError, "cannot create the libwebsockets vhost");
	return ok_status();
}

Status Server::Impl::check_tls_files()
{
	if (tls_cert.empty())
		return ok_status();
	auto slurp = [](const std::string &path, std::string &out) {
		FILE *f = fopen(path.c_str(), "rb");
		if (!f)
			return std::string(strerror(errno));
		char buf[4096];
		size_t n;
		out.clear();
		while ((n = fread(buf, 1, sizeof buf, f)) > 0 && out.size() < (1u << 20))
			out.append(buf, n);
		fclose(f);
		return std::string();
	};
	std::string cert, key;
	if (std::string e = slurp(tls_cert, cert); !e.empty())
		return make_error(Err::ServerError, "tls_cert " + tls_cert + ": " + e);
	if (std::string e = slurp(tls_key, key); !e.empty())
		return make_error(Err::ServerError, "tls_key " + tls_key + ": " + e);
	if (std::string e = tls_pair_check(cert, key); !e.empty())
		return make_error(Err::ServerError, "tls_cert " + tls_cert + ", tls_key " + tls_key + ": " + e);
	return ok_status();
}

// New handshakes use the files' current certificate; open connections keep
// the session they have.
void Server::Impl::reload_tls()
{
	if (tls_cert.empty())
		return;
	if (auto st = check_tls_files(); !st) {
		QC_ERR("tls_reload_failed reason=%s", log_str(st.error().message).c_str());
		return;
	}
	lws_tls_cert_updated(lws_ctx, tls_cert.c_str(), tls_key.c_str(), nullptr, 0, nullptr, 0);
	QC_INFO("tls_reloaded cert=%s", log_str(tls_cert).c_str());
}

Status Server::Impl::init()
{
	started_ms = now_ms();
	apply_runtime_config();
	log_route_lws();

	loop = ev_loop_new(EVBACKEND_EPOLL | EVFLAG_NOENV);
	if (!loop)
		return make_error(Err::ServerError, "cannot create an epoll event loop");
	ev_set_userdata(loop, this);

	if (auto s = open_store(); !s)
		return s;
	store->begin_batch();
	// The web client is a convenience: without its files the chat server
	// still runs, and says why / answers as it does.
	if (!cfg.web_root.empty()) {
		auto root = web_root_resolve(cfg.web_root);
		if (root)
			web_root = *root;
		else
			QC_WARN("web_root_unavailable reason=%s", log_str(root.error().message).c_str());
	}
	open_broker();
	ctx = std::make_unique<Ctx>(Ctx{*store, rooms, *broker, stats, cfg, auth, *this});

	tls_cert = cfg.tls_cert;
	tls_key = cfg.tls_key;
	if (auto s = check_tls_files(); !s)
		return s;
	if (auto s = open_listener(); !s)
		return s;
	if (auto s = create_context(); !s)
		return s;

	ev_io_init(&accept_watcher, &Impl::on_accept, listen_fd, EV_READ);
	ev_io_start(loop, &accept_watcher);
	ev_timer_init(&accept_pause, &Impl::on_accept_resume, 0.1, 0.);

	ev_async_init(&async_stop, &Impl::on_async);
	ev_async_start(loop, &async_stop);
	ev_async_init(&async_reload, &Impl::on_async);
	ev_async_start(loop, &async_reload);
	if (setup.handle_signals) {
		ev_signal_init(&sig_term, &Impl::on_signal, SIGTERM);
		ev_signal_init(&sig_int, &Impl::on_signal, SIGINT);
		ev_signal_init(&sig_hup, &Impl::on_signal, SIGHUP);
		ev_signal_init(&sig_usr1, &Impl::on_signal, SIGUSR1);
		ev_signal_start(loop, &sig_term);
		ev_signal_start(loop, &sig_int);
		ev_signal_start(loop, &sig_hup);
		ev_signal_start(loop, &sig_usr1);
		signal(SIGPIPE, SIG_IGN);
	}
	ev_timer_init(&shutdown_timer, &Impl::on_shutdown_tick, 0.01, 0.01);
	// A user disabled or a member removed by `qryptchatd user|conversation`
	// takes effect within a second.
	ev_timer_init(&change_timer, &Impl::on_change_timer, 1., 1.);
	ev_timer_start(loop, &change_timer);
	store->changed_by_others(); // the baseline
	snapshot = render_stats();
	ev_init(&typing_timer, &Impl::on_typing_timer);
	raw_writes = !cfg.permessage_deflate;
	ev_prepare_init(&flush_watcher, &Impl::on_prepare);
	ev_prepare_start(loop, &flush_watcher);
	lws_tick.owner = this;
	lws_sul_schedule(lws_ctx, 0, &lws_tick.sul, &Impl::on_lws_tick, kLwsTickUs);
	return ok_status();
}

Status Server::Impl::open_store()
{
	if (cfg.store == "postgresql") {
		fibers = std::make_unique<FiberPool>(loop, static_cast<size_t>(cfg.postgres_connections));
		fibers->on_lane_idle = [this](uint64_t lane) { lane_idle(lane); };
		PgOptions po;
		po.dsn = cfg.postgres_dsn;
		po.io = fibers.get(); // blocks until the loop runs: right for start-up
		po.connections = static_cast<size_t>(cfg.postgres_connections);
		auto st = open_postgres_store(po);
		if (!st)
			return st.error();
		store = std::move(*st);
		return ok_status();
	}
	SqliteOptions so;
	so.path = cfg.database;
	so.durability_full = cfg.durability == "full";
	auto st = open_sqlite_store(so);
	if (!st)
		return st.error();
	store = std::move(*st);
	return ok_status();
}

void Server::Impl::open_broker()
{
	if (cfg.broker != "redis") {
		broker = std::make_unique<LocalBroker>(rooms, *this, *this);
		return;
	}
	// Fresh for every start: a node restarted after kill -9 must not be
	// taken for the one that died, whose users the others time out.
	char host[256] = "node";
	gethostname(host, sizeof host - 1);
	RedisOptions ro;
	ro.url = cfg.redis_url;
	ro.node_id = (cfg.node_id.empty() ? std::string(host) : cfg.node_id) + "/" +
		     std::to_string(getpid()) + "/" + std::to_string(now_ms());
	ro.presence_ttl_ms = cfg.presence_ttl_ms;
	auto rb = std::make_unique<RedisBroker>(loop, ro, rooms, *this, *this);
	redis = rb.get();
	broker = std::move(rb);
	QC_INFO("cluster node=%s redis=%s", log_str(ro.node_id).c_str(), log_str(cfg.redis_url).c_str());
}

// A lane drained: a connection that was paused for it reads again.
void Server::Impl::lane_idle(uint64_t lane)
{
	Session *s = find(lane);
	if (s && s->rx_paused && s->wsi) {
		s->rx_paused = false;
		lws_rx_flow_control(s->wsi, 1);
	}
}

// ---------------------------------------------------------------- listener

void Server::Impl::on_accept(struct ev_loop *l, ev_io *w, int) noexcept
{
	auto *self = static_cast<Impl *>(ev_userdata(l));
	// Bounded per wake-up so a connection storm cannot starve the loop.
	for (int i = 0; i < 64; i++) {
		int fd = accept4(w->fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
				QC_WARN("accept_paused reason=%s", strerror(errno));
				ev_io_stop(l, w);
				ev_timer_start(l, &self->accept_pause);
			}
			return; // EAGAIN, or a transient error
		}
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		// On failure lws closes the socket itself.
		lws_sock_file_fd_type desc;
		desc.sockfd = fd;
		lws_adopt_descriptor_vhost(self->vhost,
					   static_cast<lws_adoption_type>(LWS_ADOPT_SOCKET | LWS_ADOPT_HTTP |
									  LWS_ADOPT_ALLOW_SSL),
					   desc, nullptr, nullptr);
	}
}

void Server::Impl::on_accept_resume(struct ev_loop *l, ev_timer *, int) noexcept
{
	auto *self = static_cast<Impl *>(ev_userdata(l));
	if (!self->stopping)
		ev_io_start(l, &self->accept_watcher);
}

// ---------------------------------------------------------------- addresses and limits

std::string Server::Impl::client_ip(lws *wsi)
{
	char buf[128];
	const char *peer = lws_get_peer_simple(wsi, buf, sizeof buf);
	auto ip = parse_ip(peer ? peer : "");
	if (!ip)
		return peer ? peer : "?";
	// Behind a trusted reverse proxy the client is the rightmost
	// X-Forwarded-For entry that is not itself a trusted proxy.
	if (!cfg.trusted_proxies.empty() && cidr_list_contains(cfg.trusted_proxies, *ip)) {
		int len = lws_hdr_total_length(wsi, WSI_TOKEN_X_FORWARDED_FOR);
		if (len > 0 && len < 4096) {
			std::string xff(static_cast<size_t>(len) + 1, '\0');
			if (lws_hdr_copy(wsi, &xff[0], len + 1, WSI_TOKEN_X_FORWARDED_FOR) > 0) {
				xff.resize(static_cast<size_t>(len));
				auto hops = split_list(xff);
				for (auto it = hops.rbegin(); it != hops.rend(); ++it) {
					auto hop = parse_ip(*it);
					if (!hop)
						break;
					*ip = *hop;
					if (!cidr_list_contains(cfg.trusted_proxies, *hop))
						break;
				}
			}
		}
	}
	return format_ip(*ip);
}

bool Server::Impl::admin_allowed(lws *wsi)
{
	auto ip = parse_ip(client_ip(wsi));
	return ip && cidr_list_contains(cfg.admin_allow, *ip);
}

// Forgets the addresses that have nothing to remember: no open connection,
// and a new-connection bucket that has refilled (a new entry starts full).
// Without it the table would keep every address ever seen, refused ones
// included.  Run when the table has doubled since the last sweep, it keeps
// the table within twice the addresses connected or seen within a refill
// time, at an amortised cost of O(1) per upgrade.
void Server::Impl::sweep_per_ip(int64_t now_us)
{
	const auto n = static_cast<double>(cfg.connection_rate_per_ip);
	for (auto it = per_ip.begin(); it != per_ip.end();) {
		const TokenBucket &b = it->second.rate;
		bool full = n <= 0 || b.tokens < 0 ||
			    b.tokens + static_cast<double>(now_us - b.last_us) / 1e6 * n / 60.0 >= n;
		if (it->second.open <= 0 && full)
			it = per_ip.erase(it);
		else
			++it;
	}
	per_ip_sweep_at = std::max(kPerIpSweepMin, 2 * per_ip.size());
}

std::optional<Refusal> Server::Impl::check_limits(const std::string &ip)
{
	if (static_cast<int64_t>(sessions.size()) >= cfg.max_connections) {
		stats.refused_max_connections++;
		return Refusal{503, "server is at max_connections"};
	}
	if (per_ip.size() >= per_ip_sweep_at)
		sweep_per_ip(mono_us());
	PerIp &p = per_ip[ip];
	if (p.open >= cfg.max_connections_per_ip) {
		stats.refused_per_ip++;
		return Refusal{429, "too many connections from this address"};
	}
	if (cfg.connection_rate_per_ip > 0) {
		// N per minute, as a bucket of N refilled at N/60 per second.
		TokenBucket &b = p.rate;
		int64_t now = mono_us();
		if (b.tokens < 0) {
			b.tokens = static_cast<double>(cfg.connection_rate_per_ip);
			b.last_us = now;
		}
		double refill = static_cast<double>(now - b.last_us) / 1e6 *
				static_cast<double>(cfg.connection_rate_per_ip) / 60.0;
		b.last_us = now;
		b.tokens = std::min(b.tokens + refill, static_cast<double>(cfg.connection_rate_per_ip));
		if (b.tokens < 1.0) {
			stats.refused_per_ip++;
			return Refusal{429, "too many new connections from this address"};
		}
		b.tokens -= 1.0;
	}
	return std::nullopt;
}

// ---------------------------------------------------------------- HTTP

int Server::Impl::reply_http(lws *wsi, Pss *pss, unsigned int status, const char *type,
			     std::string body, bool head_only, const HttpMeta &meta)
{
	stats.http_requests++;
	unsigned char hdr[LWS_PRE + 2048];
	unsigned char *start = hdr + LWS_PRE, *p = start, *end = hdr + sizeof hdr - 1;
	auto header = [&](const char *name, const std::string &value) {
		return lws_add_http_header_by_name(wsi, reinterpret_cast<const unsigned char *>(name),
						   reinterpret_cast<const unsigned char *>(value.data()),
						   static_cast<int>(value.size()), &p, end) != 0;
	};
	// A 304 has no body, and says so without a Content-Length of its own.
	if ((status == 304 ? lws_add_http_header_status(wsi, status, &p, end) != 0
			   : lws_add_http_common_headers(wsi, status, type, body.size(), &p, end) != 0) ||
	    header("cache-control:", meta.cache) || header("x-content-type-options:", "nosniff"))
		return 1;
	if (!meta.etag.empty() && header("etag:", meta.etag))
		return 1;
	if (meta.web && (header("content-security-policy:", kWebCsp) ||
			 header("x-frame-options:", "DENY") || header("referrer-policy:", "no-referrer")))
		return 1;
	if (status == 426 &&
	    lws_add_http_header_by_name(wsi, reinterpret_cast<const unsigned char *>("upgrade:"),
					reinterpret_cast<const unsigned char *>("websocket"), 9, &p,
					end))
		return 1;
	if (lws_finalize_write_http_header(wsi, start, &p, end))
		return 1;
	if (head_only || body.empty()) {
		if (lws_http_transaction_completed(wsi))
			return -1;
		return 0;
	}
	auto *r = new HttpReply;
	r->buf.assign(LWS_PRE, '\0');
	r->buf += body;
	delete pss->http;
	pss->http = r;
	lws_callback_on_writable(wsi);
	return 0;
}

int Server::Impl::on_http_writeable(lws *wsi, Pss *pss)
{
	if (!pss->http)
		return 0;
	std::unique_ptr<HttpReply> r(pss->http);
	pss->http = nullptr;
	size_t len = r->buf.size() - LWS_PRE;
	int n = lws_write(wsi, reinterpret_cast<unsigned char *>(&r->buf[LWS_PRE]), len,
			  LWS_WRITE_HTTP_FINAL);
	if (n < 0 || static_cast<size_t>(n) < len)
		return -1;
	if (lws_http_transaction_completed(wsi))
		return -1;
	return 0;
}

std::string Server::Impl::render_stats()
{
	std::string out;
	JsonWriter w(out);
	Gauges g = gauges();
	w.begin_object();
	w.field("totalConnections", static_cast<int64_t>(g.connections));
	w.field("authenticatedConnections", static_cast<int64_t>(g.authenticated));
	w.key("roomStats").begin_object();
	w.field("totalConnections", static_cast<int64_t>(g.room_connections));
	w.field("totalRooms", static_cast<int64_t>(g.rooms));
	w.field("totalUsers", static_cast<int64_t>(g.online_users));
	w.key("onlineUsers").begin_array();
	for (const auto &u : rooms.online_users())
		w.value(u);
	w.end_array().end_object();
	w.field("uptimeSeconds", g.uptime_s);
	w.field("queuedBytes", static_cast<int64_t>(g.queued_bytes));
	stats_write_json(w, stats);
	if (redis) {
		// The cluster as this node sees it (broker redis).
		ClusterStats c = redis->stats();
		w.key("cluster").begin_object();
		w.field("connected", c.connected);
		w.field("onlineUsers", static_cast<int64_t>(c.online_users));
		w.field("subscribedRooms", static_cast<int64_t>(c.subscribed_rooms));
		w.field("published", static_cast<int64_t>(c.published));
		w.field("received", static_cast<int64_t>(c.received));
		w.field("remoteDeliveries", static_cast<int64_t>(c.remote_deliveries));
		w.field("publishFailures", static_cast<int64_t>(c.publish_failures));
		w.field("reconnects", static_cast<int64_t>(c.reconnects));
		w.field("nodesExpired", static_cast<int64_t>(c.nodes_expired));
		w.end_object();
	}
	w.end_object();
	return out;
}

// /metrics: the counters and gauges, and with broker redis the cluster's
// figures of /stats.
std::string Server::Impl::metrics_text()
{
	std::string out = stats_prometheus(stats, gauges());
	if (!redis)
		return out;
	ClusterStats c = redis->stats();
	prometheus_metric(out, "cluster_connected", "gauge", "1 while the Redis connections are up, else 0",
			  c.connected ? 1 : 0);
	prometheus_metric(out, "cluster_online_users", "gauge", "Users online on any node", c.online_users);
	prometheus_metric(out, "cluster_subscribed_rooms", "gauge", "Room channels this node subscribes to",
			  c.subscribed_rooms);
	prometheus_metric(out, "cluster_published_total", "counter", "Events published to Redis", c.published);
	prometheus_metric(out, "cluster_received_total", "counter", "Events of other nodes delivered here",
			  c.received);
	prometheus_metric(out, "cluster_remote_deliveries_total", "counter",
			  "Frames queued here for events of other nodes", c.remote_deliveries);
	prometheus_metric(out, "cluster_publish_failures_total", "counter",
			  "Events not published because Redis was down", c.publish_failures);
	prometheus_metric(out, "cluster_reconnects_total", "counter", "Redis connections re-established",
			  c.reconnects);
	prometheus_metric(out, "cluster_nodes_expired_total", "counter",
			  "Dead nodes whose users this node took offline", c.nodes_expired);
	return out;
}

Gauges Server::Impl::gauges()
{
	Gauges g;
	g.connections = sessions.size();
	g.authenticated = rooms.authenticated_session_count();
	g.room_connections = rooms.joined_session_count();
	g.rooms = rooms.room_count();
	g.online_users = rooms.online_user_count();
	for (const auto &s : sessions)
		g.queued_bytes += s.second->out_bytes;
	g.uptime_s = (now_ms() - started_ms) / 1000;
	g.database_ok = fibers ? database_ok : store->healthy();
	return g;
}

int Server::Impl::on_http(lws *wsi, Pss *pss, const char *path_in)
{
	std::string path = path_in ? path_in : "";
	bool get = lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI) > 0;
	bool head = lws_hdr_total_length(wsi, WSI_TOKEN_HEAD_URI) > 0;
	auto json_error = [](const char *msg) {
		std::string s;
		JsonWriter(s).begin_object().field("error", msg).end_object();
		return s;
	};
	bool known = path == "/health" || path == "/stats" || path == "/metrics" ||
		     path == "/ws" || path == "/";
	if (!known && web_root.empty())
		return reply_http(wsi, pss, 404, "application/json", json_error("not found"), head);
	if (!get && !head)
		return reply_http(wsi, pss, 405, "application/json", json_error("method not allowed"),
				  false);
	if (!web_root.empty() && path != "/health" && path != "/stats" && path != "/metrics" &&
	    path != "/ws")
		return serve_web(wsi, pss, path, head);
	if (path == "/health") {
		Gauges g = gauges();
		std::string body;
		JsonWriter(body)
			.begin_object()
			.field("status", g.database_ok ? "ok" : "degraded")
			.field("uptime_s", g.uptime_s)
			.field("connections", static_cast<int64_t>(g.connections))
			.field("database", g.database_ok ? "ok" : "error")
			.end_object();
		return reply_http(wsi, pss, g.database_ok ? 200 : 503, "application/json", body, head);
	}
	if (path == "/stats" || path == "/metrics") {
		if (!admin_allowed(wsi))
			return reply_http(wsi, pss, 403, "application/json", json_error("forbidden"), head);
		if (path == "/stats")
			return reply_http(wsi, pss, 200, "application/json", render_stats(), head);
		return reply_http(wsi, pss, 200, "text/plain; version=0.0.4",
				  metrics_text(), head);
	}
	// "/ws" and "/" without an Upgrade header.
	return reply_http(wsi, pss, 426, "application/json",
			  json_error("this endpoint speaks WebSocket: send an Upgrade request"), head);
}

// A file of the web client.  Every file is revalidated (no-cache) against
// its ETag, since the files have fixed names and change on upgrade.
int Server::Impl::serve_web(lws *wsi, Pss *pss, const std::string &path, bool head)
{
	auto f = web_read(web_root, path);
	if (!f) {
		std::string body;
		JsonWriter(body).begin_object().field("error", "not found").end_object();
		return reply_http(wsi, pss, 404, "application/json", body, head);
	}
	HttpMeta meta;
	meta.cache = "no-cache";
	meta.etag = f->etag;
	meta.web = true;
	char inm[128];
	if (lws_hdr_copy(wsi, inm, sizeof inm, WSI_TOKEN_HTTP_IF_NONE_MATCH) > 0 && f->etag == inm)
		return reply_http(wsi, pss, 304, f->type, "", true, meta);
	return reply_http(wsi, pss, 200, f->type, std::move(f->body), head, meta);
}

// ---------------------------------------------------------------- WebSocket upgrade

int Server::Impl::refuse(lws *wsi, const Refusal &r)
{
	stats.upgrades_refused++;
	// The connection is switching to the ws role here, so the answer is
	// written raw (lws passes HTTP writes through untouched) and the
	// connection is then dropped.
	std::string body;
	JsonWriter(body).begin_object().field("error", r.message).end_object();
	unsigned char buf[LWS_PRE + 1024];
	unsigned char *start = buf + LWS_PRE, *p = start, *end = buf + sizeof buf - 1;
	if (lws_add_http_header_status(wsi, r.status, &p, end) ||
	    lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_CONTENT_TYPE,
					 reinterpret_cast<const unsigned char *>("application/json"),
					 16, &p, end) ||
	    lws_add_http_header_content_length(wsi, body.size(), &p, end) ||
	    lws_add_http_header_by_token(wsi, WSI_TOKEN_CONNECTION,
					 reinterpret_cast<const unsigned char *>("close"), 5, &p, end))
		return 1;
	if (r.status == 401 &&
	    lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_WWW_AUTHENTICATE,
					 reinterpret_cast<const unsigned char *>("Bearer"), 6, &p, end))
		return 1;
	if (r.status == 429 &&
	    lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_RETRY_AFTER,
					 reinterpret_cast<const unsigned char *>("60"), 2, &p, end))
		return 1;
	if (lws_finalize_http_header(wsi, &p, end) || p + body.size() > end)
		return 1;
	memcpy(p, body.data(), body.size());
	p += body.size();
	lws_write(wsi, start, static_cast<size_t>(p - start), LWS_WRITE_HTTP);
	return 1;
}

int Server::Impl::on_filter(lws *wsi)
{
	pending = Pending{};
	if (stopping)
		return refuse(wsi, Refusal{503, "server is shutting down"});
	char uri[256];
	int ulen = lws_hdr_copy(wsi, uri, sizeof uri, WSI_TOKEN_GET_URI);
	std::string path = ulen > 0 ? std::string(uri, static_cast<size_t>(ulen)) : "";
	if (path != "/ws" && path != "/")
		return refuse(wsi, Refusal{404, "not found"});

	std::string ip = client_ip(wsi);
	// Origin (cross-site WebSocket hijacking).  No Origin: not a browser.
	int olen = lws_hdr_total_length(wsi, WSI_TOKEN_ORIGIN);
	if (olen > 0 && !cfg.allowed_origins.empty()) {
		std::string origin(static_cast<size_t>(olen) + 1, '\0');
		lws_hdr_copy(wsi, &origin[0], olen + 1, WSI_TOKEN_ORIGIN);
		origin.resize(static_cast<size_t>(olen));
		origin = lowercase(origin);
		while (!origin.empty() && origin.back() == '/')
			origin.pop_back();
		bool ok = false;
		for (const auto &o : cfg.allowed_origins)
			if (o == "*" || o == origin)
				ok = true;
		if (!ok) {
			stats.refused_origin++;
			QC_INFO("upgrade_refused peer=%s status=403 origin=%s", ip.c_str(),
				log_str(origin).c_str());
			return refuse(wsi, Refusal{403, "origin not allowed"});
		}
	}
	if (auto r = check_limits(ip)) {
		QC_INFO("upgrade_refused peer=%s status=%u reason=%s", ip.c_str(), r->status,
			log_str(r->message).c_str());
		return refuse(wsi, *r);
	}

	// A token at upgrade: Authorization: Bearer, else ?token=, else the
	// sb-access-token cookie.  An invalid one refuses the upgrade.
	std::string token;
	std::string buf(kMaxTokenBytes + 64, '\0');
	int alen = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_AUTHORIZATION);
	if (alen > 0 && alen < static_cast<int>(buf.size())) {
		int n = lws_hdr_copy(wsi, &buf[0], static_cast<int>(buf.size()),
				     WSI_TOKEN_HTTP_AUTHORIZATION);
		std::string v = trim(std::string(buf.data(), n > 0 ? static_cast<size_t>(n) : 0));
		if (v.size() > 6 && lowercase(v.substr(0, 6)) == "bearer" &&
		    (v[6] == ' ' || v[6] == '\t'))
			token = trim(v.substr(7));
	}
	if (token.empty()) {
		const char *q = lws_get_urlarg_by_name(wsi, "token=", &buf[0],
						       static_cast<int>(buf.size()));
		if (q)
			token = q;
	}
	if (token.empty()) {
		size_t max = buf.size();
		if (!lws_http_cookie_get(wsi, "sb-access-token", &buf[0], &max))
			token = std::string(buf.data(), max);
	}
	pending.wsi = wsi;
	pending.ip = ip;
	if (!token.empty()) {
		auto claims = verify_jwt(token, auth, now_ms() / 1000);
		if (!claims) {
			stats.refused_token++;
			stats.auth_failures++;
			QC_INFO("upgrade_refused peer=%s status=401 code=%s", ip.c_str(),
				err_code(claims.error().code));
			pending = Pending{};
			return refuse(wsi, Refusal{401, "invalid or expired token"});
		}
		pending.claims = std::move(*claims);
	}
	return 0;
}

int Server::Impl::on_established(lws *wsi, Pss *pss)
{
	auto s = std::make_unique<Session>();
	SessionId id = next_id++;
	s->wsi = wsi;
	// Frames go straight to the socket, except on TLS (see send_wire).
	s->fd = lws_is_ssl(wsi) ? -1 : lws_get_socket_fd(wsi);
	s->caller.id = id;
	if (pending.wsi == wsi) {
		s->ip = pending.ip;
	} else {
		s->ip = client_ip(wsi);
		pending.claims.reset();
	}
	s->caller.peer = s->ip;
	pss->id = id;
	per_ip[s->ip].open++;
	s->auth_timer.id = s->token_timer.id = id;
	s->auth_timer.owner = s->token_timer.owner = this;
	Session *sp = s.get();
	sessions.emplace(id, std::move(s));
	stats.connections_accepted++;
	QC_DEBUG("ws_open session=%llu peer=%s", static_cast<unsigned long long>(id), sp->ip.c_str());

	std::optional<Claims> claims = std::move(pending.claims);
	pending = Pending{};
	if (claims) {
		run_task(id, [this, id, c = std::move(*claims)] {
			if (Session *t = find(id))
				handle_upgrade_auth(*ctx, t->caller, c);
		});
		if (!fibers)
			batch_requests.emplace_back(sp->caller.id, std::nullopt);
	}
	if (!sp->caller.authenticated) {
		ev_timer_init(&sp->auth_timer.w, &Impl::on_auth_timeout,
			      static_cast<ev_tstamp>(cfg.auth_timeout_ms) / 1000.0, 0.);
		ev_timer_start(loop, &sp->auth_timer.w);
	}
	return 0;
}

// ---------------------------------------------------------------- WebSocket traffic

int Server::Impl::on_receive(lws *wsi, Pss *pss, const void *in, size_t len)
{
	Session *s = find(pss->id);
	if (!s)
		return -1;
	// Traffic proves the connection alive.  lws_validity_confirmed()
	// inserts into a sorted timer list of every connection, a walk of
	// O(connections) per call, so it is called at most once per quarter
	// ping interval per connection.  A live client loses nothing by it (it
	// answers the pings, and lws counts a pong as proof); for a dead one
	// the idle timeout may come up to that quarter interval early.
	ev_tstamp now = ev_now(loop);
	if (now - s->validity_confirmed >= validity_step) {
		s->validity_confirmed = now;
		lws_validity_confirmed(wsi);
	}
	if (s->close_code || s->caller.closing)
		return 0; // closing: input is ignored
	bool final = lws_is_final_fragment(wsi) && lws_remaining_packet_payload(wsi) == 0;
	switch (s->receive(in, len, lws_frame_is_binary(wsi) != 0, final,
			   static_cast<size_t>(cfg.max_message_bytes))) {
	case Session::Rx::Partial:
		return 0;
	case Session::Rx::TooBig: {
		stats.closed_too_big++;
		QC_INFO("close_too_big session=%llu peer=%s", static_cast<unsigned long long>(s->caller.id),
			s->ip.c_str());
		static const char reason[] = "message too big";
		lws_close_reason(wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE,
				 reinterpret_cast<unsigned char *>(const_cast<char *>(reason)),
				 sizeof reason - 1);
		return -1;
	}
	case Session::Rx::Text:
		if (!fibers) {
			batch_requests.emplace_back(pss->id, handle_text(*ctx, s->caller, s->rx));
			break;
		}
		fibers->run(pss->id, [this, id = pss->id, text = std::move(s->rx)] {
			// Also after the socket closed: what it sent before is handled.
			if (Session *t = find(id))
				handle_text(*ctx, t->caller, text);
		});
		if (fibers->pending(pss->id) > kMaxQueuedRequests && !s->rx_paused) {
			s->rx_paused = true;
			lws_rx_flow_control(wsi, 0);
		}
		break;
	case Session::Rx::Binary:
		handle_binary(*ctx, s->caller);
		break;
	}
	s->rx_done();
	return 0;
}

// Writes the queued frames, framed here, up to kMaxWriteBytes per send(),
// while the socket takes them.  What the kernel does not take, lws keeps
// and writes first when the socket drains (lws_write with LWS_WRITE_RAW
// appends to lws's own pending output, so nothing is reordered, pings and
// close frames included); until then nothing more is handed to it, so lws
// holds at most one write and the rest stays in the bounded queue.
// Returns false when the connection failed.
// With permessage-deflate: lws frames and compresses each message.
bool Server::Impl::write_each_by_lws(Session *s)
{
	for (int n = 0; n < kMaxFramesPerWriteable && !s->outq.empty(); n++) {
		if (n > 0 && lws_send_pipe_choked(s->wsi))
			break;
		FramePtr f = std::move(s->outq.front());
		s->outq.pop_front();
		s->out_bytes -= f->size();
		int w = lws_write(s->wsi, reinterpret_cast<unsigned char *>(f->head() + kFrameHeadroom),
				  f->size(), LWS_WRITE_TEXT);
		if (w < static_cast<int>(f->size()))
			return false;
		stats.frames_out++;
		stats.bytes_out += f->size();
	}
	return true;
}

bool Server::Impl::write_queued(Session *s)
{
	lws *wsi = s->wsi;
	while (!s->outq.empty()) {
		if (lws_partial_buffered(wsi)) {
			lws_callback_on_writable(wsi);
			return true;
		}
		wire.clear();
		uint64_t frames = 0, bytes = 0;
		while (!s->outq.empty()) {
			const Frame &f = *s->outq.front();
			if (frames > 0 && wire.size() + kMaxFrameHeader + f.size() > kMaxWriteBytes)
				break;
			unsigned char head[kMaxFrameHeader];
			wire.append(reinterpret_cast<char *>(head), ws_text_header(f.size(), head));
			wire.append(f.data(), f.size());
			frames++;
			bytes += f.size();
			s->out_bytes -= f.size();
			s->outq.pop_front();
		}
		if (!send_wire(s))
			return false;
		stats.frames_out += frames;
		stats.bytes_out += bytes;
	}
	// Give back the memory of an unusually large write.
	if (wire.capacity() > 4 * kMaxWriteBytes)
		std::string().swap(wire);
	return true;
}

void Server::Impl::commit_batch()
{
	if (store->batch_has_writes() && !store->end_batch()) {
		stats.database_errors++;
		QC_WARN("batch_failed requests=%zu", batch_requests.size());
		for (SessionId id : batch_sessions) {
			Session *s = find(id);
			if (!s || s->batch_epoch != batch_epoch)
				continue;
			while (s->outq.size() > s->batch_mark) { // a slow-reader close may have emptied it
				s->out_bytes -= s->outq.back()->size();
				s->outq.pop_back();
			}
		}
		batch_epoch++; // the errors below belong to no batch
		Error e = make_error(Err::DatabaseError, "Database error");
		for (const auto &r : batch_requests) {
			stats.errors[static_cast<int>(Err::DatabaseError)]++;
			deliver(r.first, build_error(e, r.second));
		}
	}
	batch_epoch++;
	batch_sessions.clear();
	batch_requests.clear();
}

// Sends `wire` on a connection that lws holds no output for.  The common
// case is one send() that the kernel takes whole.  Whatever it does not
// take goes to lws (LWS_WRITE_RAW), which keeps it and writes it before
// anything else once the socket drains.  TLS connections go through lws.
bool Server::Impl::send_wire(Session *s)
{
	size_t done = 0;
	if (s->fd >= 0) {
		ssize_t n = ::send(s->fd, wire.data(), wire.size(),
				   MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
			return false;
		done = n > 0 ? static_cast<size_t>(n) : 0;
		if (done == wire.size())
			return true;
	}
	size_t rest = wire.size() - done;
	return lws_write(s->wsi, reinterpret_cast<unsigned char *>(&wire[done]), rest, LWS_WRITE_RAW) >=
	       static_cast<int>(rest);
}

void Server::Impl::on_prepare(struct ev_loop *l, ev_prepare *, int) noexcept
{
	auto *self = static_cast<Impl *>(ev_userdata(l));
	try {
		self->commit_batch();
	} catch (const std::exception &e) {
		QC_ERR("commit_exception what=%s", log_str(e.what()).c_str());
	}
	if (self->to_flush.empty())
		return;
	self->flushing.swap(self->to_flush);
	for (Session *s : self->flushing) {
		if (!s || !s->wsi)
			continue;
		s->flush_pending = false;
		bool ok;
		try {
			ok = self->write_queued(s);
		} catch (const std::exception &e) {
			QC_ERR("write_exception session=%llu what=%s",
			       static_cast<unsigned long long>(s->caller.id), log_str(e.what()).c_str());
			ok = false;
		}
		if (!ok) // lws closes it on its next turn
			lws_set_timeout(s->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
	}
	self->flushing.clear();
}

int Server::Impl::on_writeable(lws *wsi, Pss *pss)
{
	Session *s = find(pss->id);
	if (!s)
		return -1;
	commit_batch(); // nothing leaves before it is committed
	if (!(raw_writes ? write_queued(s) : write_each_by_lws(s)))
		return -1;
	if (!s->outq.empty()) {
		lws_callback_on_writable(wsi);
		return 0;
	}
	if (s->close_code) {
		lws_close_reason(wsi, static_cast<lws_close_status>(s->close_code),
				 reinterpret_cast<unsigned char *>(&s->close_reason[0]),
				 s->close_reason.size());
		return -1;
	}
	return 0;
}

void Server::Impl::on_closed(Pss *pss)
{
	auto it = sessions.find(pss->id);
	if (it == sessions.end())
		return;
	Session *s = it->second.get();
	ev_timer_stop(loop, &s->auth_timer.w);
	ev_timer_stop(loop, &s->token_timer.w);
	auto ip = per_ip.find(s->ip);
	if (ip != per_ip.end() && --ip->second.open <= 0 && cfg.connection_rate_per_ip == 0)
		per_ip.erase(ip);
	QC_DEBUG("ws_close session=%llu peer=%s", static_cast<unsigned long long>(pss->id),
		 s->ip.c_str());
	if (s->flush_pending) { // forget it in the write lists (rare: it had frames this turn)
		std::replace(to_flush.begin(), to_flush.end(), s, static_cast<Session *>(nullptr));
		std::replace(flushing.begin(), flushing.end(), s, static_cast<Session *>(nullptr));
		s->flush_pending = false;
	}
	s->wsi = nullptr; // detached: nothing more is queued or written
	s->fd = -1;
	SessionId id = pss->id;
	pss->id = 0;
	// Its chat state goes after its requests still in flight.
	run_task(id, [this, id] { forget(id); });
}

void Server::Impl::forget(SessionId id)
{
	auto it = sessions.find(id);
	if (it == sessions.end())
		return;
	handle_close(*ctx, it->second->caller);
	sessions.erase(it);
	if (stopping)
		maybe_finish_shutdown();
}

void Server::Impl::on_destroy(Pss *pss)
{
	if (!pss)
		return;
	delete pss->http;
	pss->http = nullptr;
	if (pss->id)
		on_closed(pss);
}

// ---------------------------------------------------------------- Host / DeliverySink

void Server::Impl::deliver(SessionId id, const FramePtr &f)
{
	Session *s = find(id);
	if (!s || !s->wsi)
		return;
	if (s->batch_epoch != batch_epoch) {
		s->batch_epoch = batch_epoch;
		s->batch_mark = s->outq.size();
		batch_sessions.push_back(id);
	}
	switch (s->enqueue(f, static_cast<size_t>(cfg.max_queue_bytes))) {
	case Session::Enq::Queued:
		if (!raw_writes) {
			lws_callback_on_writable(s->wsi);
		} else if (!s->flush_pending) {
			s->flush_pending = true;
			to_flush.push_back(s);
		}
		return;
	case Session::Enq::Dropped:
		return;
	case Session::Enq::Overflow:
		stats.slow_consumers_closed++;
		QC_INFO("close_slow_consumer session=%llu peer=%s",
			static_cast<unsigned long long>(id), s->ip.c_str());
		s->caller.closing = true;
		s->set_close(kClosePolicy, "slow consumer", true);
		lws_callback_on_writable(s->wsi);
		// A reader that takes nothing will not become writeable for the
		// close frame either: it is cut after a second.
		lws_set_timeout(s->wsi, PENDING_TIMEOUT_USER_OK, 1);
		return;
	}
}

void Server::Impl::close(SessionId id, int code, const std::string &reason)
{
	Session *s = find(id);
	if (!s || !s->wsi)
		return;
	s->caller.closing = true;
	s->set_close(code, reason, false);
	lws_callback_on_writable(s->wsi);
	lws_set_timeout(s->wsi, PENDING_TIMEOUT_USER_OK, 5);
}

void Server::Impl::token_changed(SessionId id)
{
	Session *s = find(id);
	if (!s)
		return;
	ev_timer_stop(loop, &s->auth_timer.w); // authenticated: no auth timeout
	ev_timer_stop(loop, &s->token_timer.w);
	if (!s->caller.token_exp_s)
		return;
	int64_t deadline_ms = (*s->caller.token_exp_s + auth.leeway_s) * 1000;
	int64_t delay_ms = deadline_ms - now_ms();
	if (delay_ms < 0)
		delay_ms = 0;
	ev_timer_init(&s->token_timer.w, &Impl::on_token_timeout,
		      static_cast<ev_tstamp>(delay_ms) / 1000.0, 0.);
	ev_timer_start(loop, &s->token_timer.w);
}

// A cluster broker confirms subscriptions and presence changes through
// Redis: the request waits for that (on its fiber), at most a couple of
// seconds; with Redis down there is nothing to wait for.
void Server::Impl::await_broker()
{
	if (!redis || !fibers)
		return;
	fibers->park([this](std::function<void()> wake) { redis->when_settled(std::move(wake)); },
		     kBrokerWaitMs);
}

void Server::Impl::typing_changed()
{
	auto next = rooms.typing_next_deadline();
	ev_timer_stop(loop, &typing_timer);
	if (!next)
		return;
	int64_t delay = *next - mono_us();
	ev_timer_set(&typing_timer, delay > 0 ? static_cast<ev_tstamp>(delay) / 1e6 : 0., 0.);
	ev_timer_start(loop, &typing_timer);
}

// ---------------------------------------------------------------- timers

void Server::Impl::on_auth_timeout(struct ev_loop *, ev_timer *w, int) noexcept
{
	auto *t = reinterpret_cast<SessionTimer *>(w);
	auto *self = static_cast<Impl *>(t->owner);
	Session *s = self->find(t->id);
	if (!s || s->caller.authenticated || s->caller.closing)
		return;
	self->stats.closed_auth_timeout++;
	QC_INFO("close_auth_timeout session=%llu peer=%s", static_cast<unsigned long long>(t->id),
		s->ip.c_str());
	self->close(t->id, kClosePolicy, "authentication timeout");
}

void Server::Impl::on_token_timeout(struct ev_loop *, ev_timer *w, int) noexcept
{
	auto *t = reinterpret_cast<SessionTimer *>(w);
	auto *self = static_cast<Impl *>(t->owner);
	Session *s = self->find(t->id);
	if (!s)
		return;
	// A re-authentication may have moved the expiry since this was armed.
	if (s->caller.token_exp_s &&
	    (*s->caller.token_exp_s + self->auth.leeway_s) * 1000 > now_ms()) {
		self->token_changed(t->id);
		return;
	}
	handle_token_expiry(*self->ctx, s->caller);
}

void Server::Impl::on_typing_timer(struct ev_loop *l, ev_timer *, int) noexcept
{
	auto *self = static_cast<Impl *>(ev_userdata(l));
	handle_typing_expiry(*self->ctx, mono_us());
	self->typing_changed();
}

void Server::Impl::on_change_timer(struct ev_loop *l, ev_timer *, int) noexcept
{
	auto *self = static_cast<Impl *>(ev_userdata(l));
	if (self->fibers) {
		// PostgreSQL: the probe is a query, so it runs on a fiber, and
		// /health reports its last answer.
		if (!self->probe_running) {
			self->probe_running = true;
			self->run_task(kServerLane, [self] {
				self->database_ok = self->store->healthy();
				self->probe_running = false;
			});
		}
	} else {
		if (self->store->changed_by_others())
			handle_external_change(*self->ctx);
		// A degraded store tries its probe write (Store::healthy).
		self->store->healthy();
	}
	// The /stats snapshot costs O(online users), so it is kept only for an
	// embedder that has asked for it.
	if (!self->snapshot_wanted.load(std::memory_order_relaxed))
		return;
	std::string s = self->render_stats();
	std::lock_guard<std::mutex> lock(self->snapshot_mu);
	self->snapshot.swap(s);
}

void Server::Impl::on_lws_tick(lws_sorted_usec_list_t *sul) noexcept
{
	Impl *self = reinterpret_cast<LwsTick *>(sul)->owner;
	lws_sul_schedule(self->lws_ctx, 0, &self->lws_tick.sul, &Impl::on_lws_tick, kLwsTickUs);
}

// ---------------------------------------------------------------- signals, stop, reload

void Server::Impl::on_signal(struct ev_loop *l, ev_signal *w, int) noexcept
{
	auto *self = static_cast<Impl *>(ev_userdata(l));
	if (w->signum == SIGHUP) {
		self->reload();
	} else if (w->signum == SIGUSR1) {
		// logrotate moved the file: write to a new one of the same name.
		std::string err = log_reopen();
		if (err.empty())
			QC_INFO("log_reopened");
		else
			QC_ERR("log_reopen_failed reason=%s", log_str(err).c_str());
	} else {
		self->begin_shutdown();
	}
}

void Server::Impl::on_async(struct ev_loop *l, ev_async *w, int) noexcept
{
	auto *self = static_cast<Impl *>(ev_userdata(l));
	if (w == &self->async_reload)
		self->reload();
	else
		self->begin_shutdown();
}

void Server::Impl::begin_shutdown()
{
	if (stopping)
		return;
	stopping = true;
	QC_INFO("shutdown connections=%zu", sessions.size());
	ev_io_stop(loop, &accept_watcher);
	ev_timer_stop(loop, &accept_pause);
	::close(listen_fd);
	listen_fd = -1;
	for (auto &kv : sessions) {
		Session *s = kv.second.get();
		if (!s->wsi)
			continue; // closed already, its last requests in flight
		s->caller.closing = true;
		s->set_close(kCloseGoingAway, "server shutting down", true);
		lws_callback_on_writable(s->wsi);
	}
	shutdown_deadline = ev_now(loop) + kShutdownGraceS;
	ev_timer_start(loop, &shutdown_timer);
	maybe_finish_shutdown();
}

void Server::Impl::maybe_finish_shutdown()
{
	ev_tstamp now = ev_now(loop);
	if ((!sessions.empty() || (fibers && fibers->running())) && now < shutdown_deadline)
		return;
	// Then the cluster hears that this node's users left it (rather than
	// waiting for its lease to run out), if Redis answers in time.
	if (redis && !cluster_left) {
		cluster_left = true;
		redis->shutdown();
	}
	if (redis && !redis->idle() && now < shutdown_deadline + kShutdownGraceS)
		return;
	ev_timer_stop(loop, &shutdown_timer);
	ev_break(loop, EVBREAK_ALL);
}

void Server::Impl::on_shutdown_tick(struct ev_loop *l, ev_timer *, int) noexcept
{
	auto *self = static_cast<Impl *>(ev_userdata(l));
	ev_now_update(l);
	self->maybe_finish_shutdown();
}

void Server::Impl::reload()
{
	Config next;
	if (auto e = config_load(next, setup.sources, environ)) {
		QC_ERR("reload_failed error=%s", log_str(e->text()).c_str());
		return;
	}
	std::string secret = setup.secret;
	if (next.jwt_secret_file != cfg.jwt_secret_file || !next.jwt_secret_file.empty()) {
		auto s = load_jwt_secret(next, environ);
		if (!s) {
			QC_ERR("reload_failed error=%s", log_str(s.error().message).c_str());
			return;
		}
		secret = *s;
	}
	ConfigDiff diff = config_diff(cfg, next);
	for (const auto &name : diff.need_restart) {
		const Directive *d = find_directive(name);
		QC_WARN("reload_ignored directive=%s reason=%s", name.c_str(),
			"needs a restart");
		// Keep the running value of what cannot change live.
		config_set(next, name, config_value_text(cfg, *d), "reload");
	}
	for (const auto &name : diff.applied) {
		const Directive *d = find_directive(name);
		QC_INFO("reload directive=%s old=%s new=%s", name.c_str(),
			log_str(config_value_text(cfg, *d)).c_str(),
			log_str(config_value_text(next, *d)).c_str());
	}
	bool secret_changed = secret != setup.secret;
	next.config_file = cfg.config_file;
	cfg = next;
	setup.secret = secret;
	apply_runtime_config();
	reload_tls();
	QC_INFO("reloaded changed=%zu restart_needed=%zu secret_changed=%s", diff.applied.size(),
		diff.need_restart.size(), secret_changed ? "yes" : "no");
}

// ---------------------------------------------------------------- the lws callback

int Server::Impl::callback(lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
			   size_t len) noexcept
{
	lws_context *lc = lws_get_context(wsi);
	auto *self = lc ? static_cast<Impl *>(lws_context_user(lc)) : nullptr;
	auto *pss = static_cast<Pss *>(user);
	if (!self)
		return lws_callback_http_dummy(wsi, reason, user, in, len);
	try {
		switch (reason) {
		case LWS_CALLBACK_HTTP:
			return self->on_http(wsi, pss, static_cast<const char *>(in));
		case LWS_CALLBACK_HTTP_WRITEABLE:
			return self->on_http_writeable(wsi, pss);
		case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
			return self->on_filter(wsi);
		case LWS_CALLBACK_ESTABLISHED:
			return self->on_established(wsi, pss);
		case LWS_CALLBACK_RECEIVE:
			return self->on_receive(wsi, pss, in, len);
		case LWS_CALLBACK_SERVER_WRITEABLE:
			return self->on_writeable(wsi, pss);
		case LWS_CALLBACK_CLOSED:
			self->on_closed(pss);
			return 0;
		case LWS_CALLBACK_WSI_DESTROY:
			self->on_destroy(pss);
			return 0;
		default:
			break;
		}
	} catch (const std::exception &e) {
		// Nothing may unwind through lws; an allocation failure or a bug
		// costs this connection, not the process.
		QC_ERR("callback_exception reason=%d what=%s", static_cast<int>(reason),
		       log_str(e.what()).c_str());
		return -1;
	}
	return lws_callback_http_dummy(wsi, reason, user, in, len);
}

// ---------------------------------------------------------------- Server

Server::Server() : impl_(std::make_unique<Impl>()) {}
Server::~Server() = default;

Result<std::unique_ptr<Server>> Server::create(ServerSetup setup)
{
	std::unique_ptr<Server> s(new Server());
	s->impl_->setup = std::move(setup);
	if (auto st = s->impl_->init(); !st)
		return st.error();
	return s;
}

int Server::run()
{
	Impl &m = *impl_;
	QC_INFO("listening address=%s port=%d tls=%s store=%s database=%s broker=%s web_root=%s "
		"loop=libev backend=epoll",
		m.cfg.listen_host.c_str(), m.bound_port, m.tls_cert.empty() ? "no" : "yes",
		m.cfg.store.c_str(),
		log_str(m.cfg.store == "sqlite" ? m.cfg.database : std::string("postgresql")).c_str(),
		m.cfg.broker.c_str(), log_str(m.web_root).c_str());
	if (!m.setup.ready_file.empty() && !write_ready_file(m.setup.ready_file, m.bound_port)) {
		QC_ERR("ready_file path=%s error=%s", log_str(m.setup.ready_file).c_str(),
		       strerror(errno));
		return 1;
	}
	ev_run(m.loop, 0);
	QC_INFO("stopped status=%d", m.exit_status);
	lws_context_destroy(m.lws_ctx);
	m.lws_ctx = nullptr;
	return m.exit_status;
}

void Server::request_stop() { ev_async_send(impl_->loop, &impl_->async_stop); }
void Server::request_reload() { ev_async_send(impl_->loop, &impl_->async_reload); }
int Server::port() const { return impl_->bound_port; }

std::string Server::stats_json() const
{
	impl_->snapshot_wanted.store(true, std::memory_order_relaxed);
	std::lock_guard<std::mutex> lock(impl_->snapshot_mu);
	return impl_->snapshot;
}

} // namespace qc
