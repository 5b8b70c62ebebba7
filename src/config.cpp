#include "qryptchat/config.hpp"

// Where `make install` puts the web client (DATADIR/qryptchatd/web).
#ifndef QC_DEFAULT_WEB_ROOT
#define QC_DEFAULT_WEB_ROOT "/usr/local/share/qryptchatd/web"
#endif

#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace qc {

namespace {

constexpr int64_t K = 1024;
constexpr int64_t M = 1024 * 1024;
constexpr int64_t SEC = 1000;
constexpr int64_t MIN = 60 * SEC;
constexpr int64_t HOUR = 60 * MIN;

// clang-format off
const std::vector<Directive> kTable = {
	// network
	{"listen", DirType::Listen, "127.0.0.1:8080", 0, 0, nullptr, false,
	 "Address and port of the one HTTP and WebSocket listener (host:port, [v6]:port, *:port; port 0 lets the kernel choose).",
	 &Config::listen},
	{"allowed_origins", DirType::OriginList, "", 0, 0, nullptr, true,
	 "Origins allowed to open a WebSocket (space or comma separated, e.g. https://chat.example.org); empty allows any. An upgrade without Origin always passes.",
	 &Config::allowed_origins},
	{"admin_allow", DirType::AddrList, "127.0.0.1 ::1", 0, 0, nullptr, true,
	 "Addresses or CIDR ranges allowed to read /stats and /metrics.",
	 &Config::admin_allow},
	{"trusted_proxies", DirType::AddrList, "", 0, 0, nullptr, true,
	 "Reverse proxies whose X-Forwarded-For header gives the client address.",
	 &Config::trusted_proxies},
	{"permessage_deflate", DirType::Bool, "no", 0, 0, nullptr, false,
	 "Negotiate permessage-deflate compression (costs CPU and about 300 KB per connection).",
	 &Config::permessage_deflate},
	{"web_root", DirType::Path, QC_DEFAULT_WEB_ROOT, 0, 0, nullptr, false,
	 "Directory of the web client served at /; empty serves none.",
	 &Config::web_root},
	{"tls_cert", DirType::Path, "", 0, 0, nullptr, false,
	 "PEM certificate chain: serve https:// and wss:// on the listening port; empty serves plain HTTP. Re-read on SIGHUP.",
	 &Config::tls_cert},
	{"tls_key", DirType::Path, "", 0, 0, nullptr, false,
	 "PEM private key of tls_cert. Re-read on SIGHUP.",
	 &Config::tls_key},
	// storage
	{"store", DirType::Enum, "sqlite", 0, 0, "sqlite postgresql", false,
	 "Where the chat is kept: sqlite (the database file, one node) or postgresql (postgres_dsn, shared by every node of a cluster).",
	 &Config::store},
	{"database", DirType::Path, "/var/lib/qryptchatd/qryptchatd.db", 0, 0, nullptr, false,
	 "Path of the SQLite database (created if absent).",
	 &Config::database},
	{"durability", DirType::Enum, "normal", 0, 0, "normal full", false,
	 "SQLite synchronous mode: normal survives a process crash, full also a power loss.",
	 &Config::durability},
	{"postgres_dsn", DirType::String, "", 0, 0, nullptr, false,
	 "libpq connection string or URI of the PostgreSQL database (store postgresql), e.g. host=/run/postgresql dbname=qryptchat; keep a password in a passfile, not here.",
	 &Config::postgres_dsn},
	{"postgres_connections", DirType::Int, "4", 1, 64, nullptr, false,
	 "PostgreSQL connections of this node: the most queries in flight at once.",
	 &Config::postgres_connections},
	// cluster
	{"broker", DirType::Enum, "local", 0, 0, "local redis", false,
	 "How pushes reach sockets: local (this process only) or redis (every node of a cluster, through redis_url; needs store postgresql).",
	 &Config::broker},
	{"redis_url", DirType::String, "redis://127.0.0.1:6379", 0, 0, nullptr, false,
	 "Redis server of the cluster broker: redis://host:port or unix:/path/to/socket.",
	 &Config::redis_url},
	{"node_id", DirType::String, "", 0, 0, nullptr, false,
	 "This node's name in the cluster, unique per node; empty uses the host name and process id.",
	 &Config::node_id},
	{"presence_ttl", DirType::Duration, "15s", 1 * SEC, 10 * MIN, nullptr, false,
	 "How soon the users of a node that stopped (killed, cut off) are shown offline by the other nodes.",
	 &Config::presence_ttl_ms},
	// authentication
	{"jwt_secret_file", DirType::Path, "", 0, 0, nullptr, true,
	 "File holding the HS256 secret (at least 32 bytes); without it QRYPTCHAT_JWT_SECRET is used.",
	 &Config::jwt_secret_file},
	{"jwt_leeway", DirType::Duration, "30s", 0, HOUR, nullptr, true,
	 "Clock skew allowed when checking exp, nbf and iat.",
	 &Config::jwt_leeway_ms},
	{"jwt_audience", DirType::String, "", 0, 0, nullptr, true,
	 "Required aud claim; empty does not check aud.",
	 &Config::jwt_audience},
	{"jwt_issuer", DirType::String, "", 0, 0, nullptr, true,
	 "Required iss claim; empty does not check iss.",
	 &Config::jwt_issuer},
	{"jwt_require_exp", DirType::Bool, "yes", 0, 0, nullptr, true,
	 "Refuse tokens without an exp claim.",
	 &Config::jwt_require_exp},
	{"jwt_expiry_action", DirType::Enum, "close", 0, 0, "close refuse", true,
	 "When a connection's token expires: close it with 4001, or keep it and refuse its requests with TOKEN_EXPIRED.",
	 &Config::jwt_expiry_action},
	{"auth_timeout", DirType::Duration, "10s", 100, HOUR, nullptr, true,
	 "A connection not authenticated within this time is closed with 1008.",
	 &Config::auth_timeout_ms},
	{"max_auth_failures", DirType::Int, "5", 1, 1000, nullptr, true,
	 "Consecutive failed auth requests after which a connection is closed with 1008.",
	 &Config::max_auth_failures},
	// liveness
	{"ping_interval", DirType::Duration, "30s", SEC, HOUR, nullptr, true,
	 "Send a WebSocket ping after this long without traffic from the client (whole seconds).",
	 &Config::ping_interval_ms},
	{"idle_timeout", DirType::Duration, "60s", 2 * SEC, 2 * HOUR, nullptr, true,
	 "Close a connection that has sent nothing, not even a pong, for this long (whole seconds).",
	 &Config::idle_timeout_ms},
	// limits
	{"max_connections", DirType::Int, "10000", 1, 1000000, nullptr, true,
	 "Open WebSocket connections; an upgrade beyond it gets HTTP 503.",
	 &Config::max_connections},
	{"max_connections_per_ip", DirType::Int, "256", 1, 1000000, nullptr, true,
	 "Open WebSocket connections from one client address; beyond it HTTP 429.",
	 &Config::max_connections_per_ip},
	{"connection_rate_per_ip", DirType::Int, "60", 0, 1000000, nullptr, true,
	 "New WebSocket connections per minute from one client address (0: no limit); beyond it HTTP 429.",
	 &Config::connection_rate_per_ip},
	{"max_message_bytes", DirType::Size, "256K", 1 * K, 16 * M, nullptr, true,
	 "Largest inbound WebSocket message; a larger one closes the connection with 1009.",
	 &Config::max_message_bytes},
	{"max_queue_bytes", DirType::Size, "4M", 64 * K, 1024 * M, nullptr, true,
	 "Outbound bytes queued for one connection; a slower reader is closed with 1008.",
	 &Config::max_queue_bytes},
	{"rate_limit", DirType::Int, "20", 1, 1000000, nullptr, true,
	 "Requests per second per connection (token bucket), typing requests excluded.",
	 &Config::rate_limit},
	{"rate_burst", DirType::Int, "50", 1, 1000000, nullptr, true,
	 "Bucket size of rate_limit: requests accepted in a burst.",
	 &Config::rate_burst},
	{"typing_rate", DirType::Int, "40", 1, 1000000, nullptr, true,
	 "typing_start and typing_stop requests per second per connection.",
	 &Config::typing_rate},
	{"typing_burst", DirType::Int, "80", 1, 1000000, nullptr, true,
	 "Bucket size of typing_rate.",
	 &Config::typing_burst},
	{"typing_timeout", DirType::Duration, "5s", 100, 10 * MIN, nullptr, true,
	 "A typing_start not refreshed within this time expires.",
	 &Config::typing_timeout_ms},
	{"max_content_bytes", DirType::Size, "64K", 1, 16 * M, nullptr, true,
	 "Largest message content (and each per-recipient copy).",
	 &Config::max_content_bytes},
	{"max_metadata_bytes", DirType::Size, "4K", 2, 1 * M, nullptr, true,
	 "Largest message metadata, as compact JSON.",
	 &Config::max_metadata_bytes},
	{"max_group_size", DirType::Int, "256", 2, 100000, nullptr, true,
	 "Participants of a group conversation, creator included.",
	 &Config::max_group_size},
	{"max_page_size", DirType::Int, "200", 1, 1000, nullptr, true,
	 "Largest limit of one history page (load_messages).",
	 &Config::max_page_size},
	// logging
	{"log_level", DirType::Enum, "info", 0, 0, "error warn info debug", true,
	 "Least severe level written to the log.",
	 &Config::log_level},
	{"log_format", DirType::Enum, "text", 0, 0, "text json", true,
	 "Log lines as text (time level event key=value...) or as one JSON object each.",
	 &Config::log_format},
	{"log_file", DirType::Path, "", 0, 0, nullptr, true,
	 "File the log is appended to (reopened on SIGUSR1, for logrotate); empty logs to stderr.",
	 &Config::log_file},
	// process
	{"user", DirType::String, "", 0, 0, nullptr, false,
	 "Started as root, serve as this user (and its groups) once listening with the database open; empty stays root.",
	 &Config::user},
};
// clang-format on

std::string bound_text(const Directive &d, int64_t v)
{
	if (d.type == DirType::Duration)
		return format_duration_ms(v);
	if (d.type == DirType::Size)
		return format_size(v);
	return std::to_string(v);
}

std::optional<std::string> parse_bool(const std::string &v, bool &out)
{
	std::string l = lowercase(v);
	if (l == "yes" || l == "true" || l == "on" || l == "1") {
		out = true;
		return std::nullopt;
	}
	if (l == "no" || l == "false" || l == "off" || l == "0") {
		out = false;
		return std::nullopt;
	}
	return "expected yes or no, got '" + escape_text(v, 64) + "'";
}

bool valid_origin(const std::string &o)
{
	if (o == "*")
		return true;
	auto p = o.find("://");
	if (p == std::string::npos || p == 0 || p + 3 >= o.size())
		return false;
	// scheme://host[:port] with no path
	return o.find('/', p + 3) == std::string::npos;
}

// Durations and sizes of the liveness policy are whole seconds in lws.
bool whole_seconds(const Directive &d)
{
	return d.member.index() == 1 &&
	       (std::get<1>(d.member) == &Config::ping_interval_ms ||
		std::get<1>(d.member) == &Config::idle_timeout_ms);
}

} // namespace

const std::vector<Directive> &directives() { return kTable; }

const Directive *find_directive(const std::string &name)
{
	for (const auto &d : kTable)
		if (name == d.name)
			return &d;
	return nullptr;
}

std::string ConfigError::text() const
{
	std::string s = where;
	if (!directive.empty())
		s += (s.empty() ? "" : ": ") + directive;
	if (!message.empty())
		s += (s.empty() ? "" : ": ") + message;
	return s;
}

bool parse_listen(const std::string &text, std::string &host, int &port)
{
	std::string t = trim(text);
	std::string h, p;
	if (!t.empty() && t[0] == '[') {
		auto close = t.find(']');
		if (close == std::string::npos || close + 1 >= t.size() || t[close + 1] != ':')
			return false;
		h = t.substr(1, close - 1);
		p = t.substr(close + 2);
		if (!parse_ip(h) || parse_ip(h)->family != AF_INET6)
			return false;
	} else {
		auto colon = t.rfind(':');
		if (colon == std::string::npos) {
			h = "127.0.0.1";
			p = t;
		} else {
			h = t.substr(0, colon);
			p = t.substr(colon + 1);
			if (h.find(':') != std::string::npos)
				return false; // IPv6 needs brackets
			if (h.empty())
				h = "127.0.0.1";
			if (h != "*" && !parse_ip(h))
				return false;
		}
	}
	if (p.empty() || p.size() > 5)
		return false;
	int n = 0;
	for (char c : p) {
		if (c < '0' || c > '9')
			return false;
		n = n * 10 + (c - '0');
	}
	if (n > 65535)
		return false;
	host = h;
	port = n;
	return true;
}

std::optional<ConfigError> config_set(Config &cfg, const std::string &name,
				      const std::string &value_in, const std::string &where)
{
	const Directive *d = find_directive(name);
	if (!d)
		return ConfigError{where, "", "unknown directive '" + escape_text(name, 64) + "'"};
	std::string value = trim(value_in);
	// Optional double quotes around a value.
	if (value.size() >= 2 && value.front() == '"' && value.back() == '"')
		value = value.substr(1, value.size() - 2);
	auto fail = [&](const std::string &msg) {
		return std::optional<ConfigError>(ConfigError{where, d->name, msg});
	};

	switch (d->type) {
	case DirType::String:
	case DirType::Path:
		// Refused so that every accepted value prints back as a line
		// that reads the same (--print-config).
		for (char ch : value)
			if (ch == '"' || static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f)
				return fail("a value cannot contain a double quote or a control "
					    "character, got '" +
					    escape_text(value, 64) + "'");
		cfg.*std::get<0>(d->member) = value;
		return std::nullopt;
	case DirType::Enum: {
		std::string l = lowercase(value);
		for (const auto &c : split_list(d->choices))
			if (c == l) {
				cfg.*std::get<0>(d->member) = l;
				return std::nullopt;
			}
		return fail("expected one of " + std::string(d->choices) + ", got '" +
			    escape_text(value, 64) + "'");
	}
	case DirType::Listen: {
		std::string host;
		int port;
		if (!parse_listen(value, host, port))
			return fail("expected host:port, [v6]:port, *:port or port, got '" +
				    escape_text(value, 64) + "'");
		cfg.listen = value;
		cfg.listen_host = host;
		cfg.listen_port = port;
		return std::nullopt;
	}
	case DirType::Bool: {
		bool b = false;
		if (auto e = parse_bool(value, b))
			return fail(*e);
		cfg.*std::get<2>(d->member) = b;
		return std::nullopt;
	}
	case DirType::Int:
	case DirType::Duration:
	case DirType::Size: {
		std::optional<int64_t> v;
		std::string expect;
		if (d->type == DirType::Int) {
			if (value.find_first_not_of("0123456789") == std::string::npos)
				v = parse_size(value); // plain digits: the count itself
			expect = "an integer";
		} else if (d->type == DirType::Duration) {
			v = parse_duration_ms(value);
			expect = "a duration (e.g. 500ms, 10s, 5m, 1h; a bare number is seconds)";
		} else {
			v = parse_size(value);
			expect = "a size (e.g. 4096, 64K, 4M)";
		}
		if (!v)
			return fail("expected " + expect + ", got '" + escape_text(value, 64) + "'");
		if (*v < d->min || *v > d->max)
			return fail("value " + escape_text(value, 64) + " out of range " +
				    bound_text(*d, d->min) + ".." + bound_text(*d, d->max));
		if (whole_seconds(*d) && *v % 1000 != 0)
			return fail("must be a whole number of seconds, got '" +
				    escape_text(value, 64) + "'");
		cfg.*std::get<1>(d->member) = *v;
		return std::nullopt;
	}
	case DirType::AddrList: {
		std::vector<Cidr> list;
		for (const auto &item : split_list(value)) {
			auto c = parse_cidr(item);
			if (!c)
				return fail("not an address or CIDR range: '" +
					    escape_text(item, 64) + "'");
			list.push_back(*c);
		}
		cfg.*std::get<3>(d->member) = list;
		return std::nullopt;
	}
	case DirType::OriginList: {
		std::vector<std::string> list;
		for (const auto &item : split_list(value)) {
			if (!valid_origin(item))
				return fail("not an origin (scheme://host[:port]): '" +
					    escape_text(item, 64) + "'");
			// Origins compare case-insensitively (RFC 6454 serialisation
			// is lowercase), without a trailing slash.
			list.push_back(lowercase(item));
		}
		cfg.*std::get<4>(d->member) = list;
		return std::nullopt;
	}
	}
	return fail("unsupported type");
}

Config config_defaults()
{
	Config cfg;
	for (const auto &d : kTable) {
		auto e = config_set(cfg, d.name, d.def, "default");
		(void)e; // the table's defaults are checked by the unit tests
	}
	return cfg;
}

std::optional<ConfigError> config_apply_text(Config &cfg, const std::string &text,
					     const std::string &path)
{
	std::istringstream in(text);
	std::string line;
	int lineno = 0;
	while (std::getline(in, line)) {
		lineno++;
		std::string where = path + ":" + std::to_string(lineno);
		// A '#' starts a comment unless inside double quotes.
		bool quoted = false;
		for (size_t i = 0; i < line.size(); i++) {
			if (line[i] == '"')
				quoted = !quoted;
			else if (line[i] == '#' && !quoted) {
				line.resize(i);
				break;
			}
		}
		std::string t = trim(line);
		if (t.empty())
			continue;
		size_t sp = t.find_first_of(" \t");
		std::string name = t.substr(0, sp);
		std::string value = sp == std::string::npos ? "" : trim(t.substr(sp));
		const Directive *d = find_directive(name);
		if (value.empty() && d) {
			// An empty value is allowed only for lists and strings.
			if (d->type != DirType::String && d->type != DirType::Path &&
			    d->type != DirType::AddrList && d->type != DirType::OriginList)
				return ConfigError{where, name, "missing value"};
		}
		if (auto e = config_set(cfg, name, value, where))
			return e;
	}
	return std::nullopt;
}

std::optional<ConfigError> config_apply_file(Config &cfg, const std::string &path)
{
	std::ifstream f(path);
	if (!f)
		return ConfigError{path, "", std::string("cannot open: ") + strerror(errno)};
	std::stringstream ss;
	ss << f.rdbuf();
	cfg.config_file = path;
	return config_apply_text(cfg, ss.str(), path);
}

std::optional<ConfigError> config_apply_env(Config &cfg, char *const *env)
{
	if (!env)
		return std::nullopt;
	// WEBSOCKET_PORT first, so that QRYPTCHAT_LISTEN can override it.
	for (char *const *e = env; *e; e++) {
		std::string kv = *e;
		if (kv.rfind("WEBSOCKET_PORT=", 0) == 0) {
			std::string v = kv.substr(15);
			std::string host;
			int port;
			if (!parse_listen(v, host, port) || v.find(':') != std::string::npos)
				return ConfigError{"environment WEBSOCKET_PORT", "listen",
						   "expected a port number, got '" +
							   escape_text(v, 64) + "'"};
			auto e2 = config_set(cfg, "listen",
					     (cfg.listen_host.find(':') != std::string::npos
						      ? "[" + cfg.listen_host + "]"
						      : cfg.listen_host) +
						     ":" + v,
					     "environment WEBSOCKET_PORT");
			if (e2)
				return e2;
		}
	}
	for (char *const *e = env; *e; e++) {
		std::string kv = *e;
		const std::string prefix = "QRYPTCHAT_";
		if (kv.rfind(prefix, 0) != 0)
			continue;
		auto eq = kv.find('=');
		if (eq == std::string::npos)
			continue;
		std::string name = lowercase(kv.substr(prefix.size(), eq - prefix.size()));
		if (name == "jwt_secret")
			continue; // the secret itself, read by load_jwt_secret
		std::string where = "environment " + kv.substr(0, eq);
		if (!find_directive(name))
			return ConfigError{where, "", "no such directive '" + escape_text(name, 64) + "'"};
		if (auto err = config_set(cfg, name, kv.substr(eq + 1), where))
			return err;
	}
	return std::nullopt;
}

std::optional<ConfigError> config_validate(const Config &cfg)
{
	std::string where = cfg.config_file.empty() ? "configuration" : cfg.config_file;
	if (cfg.idle_timeout_ms <= cfg.ping_interval_ms)
		return ConfigError{where, "idle_timeout",
				   format_duration_ms(cfg.idle_timeout_ms) +
					   " must be longer than ping_interval (" +
					   format_duration_ms(cfg.ping_interval_ms) + ")"};
	if (cfg.store == "sqlite" && cfg.database.empty())
		return ConfigError{where, "database", "must not be empty"};
	if (cfg.store == "postgresql" && cfg.postgres_dsn.empty())
		return ConfigError{where, "postgres_dsn", "store postgresql needs a connection string"};
	if (cfg.broker == "redis" && cfg.store != "postgresql")
		return ConfigError{where, "broker",
				   "redis joins several nodes, which need a shared store: set store postgresql"};
	if (cfg.broker == "redis" && cfg.redis_url.empty())
		return ConfigError{where, "redis_url", "must not be empty with broker redis"};
	if (cfg.tls_cert.empty() != cfg.tls_key.empty())
		return ConfigError{where, cfg.tls_cert.empty() ? "tls_cert" : "tls_key",
				   "tls_cert and tls_key go together"};
	return std::nullopt;
}

std::string config_value_text(const Config &cfg, const Directive &d)
{
	switch (d.type) {
	case DirType::String:
	case DirType::Path: {
		// Quoted when a '#' or white space at either end would otherwise
		// be lost on reading.
		const std::string &v = cfg.*std::get<0>(d.member);
		bool quote = v.find('#') != std::string::npos ||
			     (!v.empty() && (isspace(static_cast<unsigned char>(v.front())) ||
					     isspace(static_cast<unsigned char>(v.back()))));
		return quote ? "\"" + v + "\"" : v;
	}
	case DirType::Enum:
	case DirType::Listen:
		return cfg.*std::get<0>(d.member);
	case DirType::Bool:
		return cfg.*std::get<2>(d.member) ? "yes" : "no";
	case DirType::Int:
		return std::to_string(cfg.*std::get<1>(d.member));
	case DirType::Duration:
		return format_duration_ms(cfg.*std::get<1>(d.member));
	case DirType::Size:
		return format_size(cfg.*std::get<1>(d.member));
	case DirType::AddrList: {
		std::string s;
		for (const auto &c : cfg.*std::get<3>(d.member))
			s += (s.empty() ? "" : " ") + format_cidr(c);
		return s;
	}
	case DirType::OriginList: {
		std::string s;
		for (const auto &o : cfg.*std::get<4>(d.member))
			s += (s.empty() ? "" : " ") + o;
		return s;
	}
	}
	return "";
}

std::string config_dump(const Config &cfg)
{
	Config defaults = config_defaults();
	std::string out;
	for (const auto &d : kTable) {
		std::string v = config_value_text(cfg, d);
		if (v != config_value_text(defaults, d))
			out += "# default: " + std::string(d.def) + "\n";
		out += std::string(d.name);
		if (!v.empty())
			out += " " + v;
		out += "\n";
	}
	return out;
}

Result<std::string> load_jwt_secret(const Config &cfg, char *const *env)
{
	std::string secret, source;
	if (!cfg.jwt_secret_file.empty()) {
		std::ifstream f(cfg.jwt_secret_file, std::ios::binary);
		if (!f)
			return make_error(Err::ServerError, "jwt_secret_file " + cfg.jwt_secret_file +
							       ": cannot open: " + strerror(errno));
		std::stringstream ss;
		ss << f.rdbuf();
		secret = ss.str();
		while (!secret.empty() && (secret.back() == '\n' || secret.back() == '\r'))
			secret.pop_back();
		source = "jwt_secret_file " + cfg.jwt_secret_file;
	} else {
		for (char *const *e = env; e && *e; e++)
			if (strncmp(*e, "QRYPTCHAT_JWT_SECRET=", 21) == 0)
				secret = *e + 21;
		source = "QRYPTCHAT_JWT_SECRET";
		if (secret.empty())
			return make_error(Err::ServerError,
					  "no JWT secret: set jwt_secret_file or QRYPTCHAT_JWT_SECRET");
	}
	if (secret.size() < 32)
		return make_error(Err::ServerError, source + ": the JWT secret has " +
							    std::to_string(secret.size()) +
							    " bytes; at least 32 are required");
	return secret;
}

std::optional<ConfigError> config_load(Config &out, const ConfigSources &src, char *const *env)
{
	Config cfg = config_defaults();
	if (!src.file.empty())
		if (auto e = config_apply_file(cfg, src.file))
			return e;
	if (auto e = config_apply_env(cfg, env))
		return e;
	for (const auto &kv : src.defines)
		if (auto e = config_set(cfg, kv.first, kv.second, "-D " + kv.first))
			return e;
	if (src.port) {
		std::string host = cfg.listen_host.find(':') != std::string::npos
					   ? "[" + cfg.listen_host + "]"
					   : cfg.listen_host;
		if (auto e = config_set(cfg, "listen", host + ":" + std::to_string(*src.port), "-p"))
			return e;
	}
	if (auto e = config_validate(cfg))
		return e;
	out = std::move(cfg);
	return std::nullopt;
}

ConfigDiff config_diff(const Config &before, const Config &after)
{
	ConfigDiff diff;
	for (const auto &d : kTable) {
		if (config_value_text(before, d) == config_value_text(after, d))
			continue;
		(d.reloadable ? diff.applied : diff.need_restart).push_back(d.name);
	}
	return diff;
}

} // namespace qc
