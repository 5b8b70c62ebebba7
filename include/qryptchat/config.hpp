// config: one table of directives drives parsing, validation, the
// environment, -D overrides, --check-config, --print-config and reload.
//
// Precedence: built-in default < file (-c) < environment (QRYPTCHAT_<NAME>,
// and WEBSOCKET_PORT for the port of `listen`) < command-line flags (-D,
// -p).  The JWT secret is never a directive value: it comes from the file
// named by jwt_secret_file or from QRYPTCHAT_JWT_SECRET.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "qryptchat/util.hpp"

namespace qc {

// The effective configuration.  Durations are milliseconds, sizes bytes.
struct Config {
	// network
	std::string listen;                 // "host:port" as configured
	std::string listen_host;            // parsed: address literal, "*" for all
	int listen_port = 8080;             // parsed: 0 lets the kernel choose
	std::vector<Cidr> admin_allow;      // who may read /stats and /metrics
	std::vector<Cidr> trusted_proxies;  // whose X-Forwarded-For is believed
	std::vector<std::string> allowed_origins; // empty: any Origin
	bool permessage_deflate = false;    // negotiate RFC 7692 compression
	std::string web_root;               // directory served at / ("" = none)
	std::string tls_cert;               // PEM certificate chain: serve https/wss ("" = plain)
	std::string tls_key;                // PEM private key of tls_cert

	// storage
	std::string store;                  // "sqlite" or "postgresql"
	std::string database;               // SQLite file path
	std::string durability;             // "normal" or "full" (synchronous=)
	std::string postgres_dsn;           // libpq connection string (store postgresql)
	int64_t postgres_connections = 4;   // pool size: the most overlapping queries

	// cluster
	std::string broker;                 // "local" or "redis"
	std::string redis_url;              // redis://host:port[/db] or unix:/path
	std::string node_id;                // "" = host name and process id
	int64_t presence_ttl_ms = 15000;    // a silent node's users go offline after this

	// authentication
	std::string jwt_secret_file;        // "" = use QRYPTCHAT_JWT_SECRET
	int64_t jwt_leeway_ms = 30000;      // clock skew allowed on exp/nbf/iat
	std::string jwt_audience;           // "" = aud not checked
	std::string jwt_issuer;             // "" = iss not checked
	bool jwt_require_exp = true;        // a token without exp is refused
	std::string jwt_expiry_action;      // "close" (4001) or "refuse"
	int64_t auth_timeout_ms = 10000;    // unauthenticated socket lifetime
	int64_t max_auth_failures = 5;      // consecutive failed auth → 1008

	// liveness
	int64_t ping_interval_ms = 30000;   // WebSocket ping after this silence
	int64_t idle_timeout_ms = 60000;    // close after this much silence

	// limits
	int64_t max_connections = 10000;
	int64_t max_connections_per_ip = 256;
	int64_t connection_rate_per_ip = 60; // new upgrades per minute per IP; 0 = off
	int64_t max_message_bytes = 256 * 1024;
	int64_t max_queue_bytes = 4 * 1024 * 1024;
	int64_t rate_limit = 20;            // requests per second per connection
	int64_t rate_burst = 50;
	int64_t typing_rate = 40;           // typing requests per second
	int64_t typing_burst = 80;
	int64_t typing_timeout_ms = 5000;   // a typing_start expires after this
	int64_t max_content_bytes = 64 * 1024;
	int64_t max_metadata_bytes = 4 * 1024;
	int64_t max_group_size = 256;       // participants, creator included
	int64_t max_page_size = 200;        // largest load_messages limit

	// logging
	std::string log_level;              // error, warn, info, debug
	std::string log_format;             // text, json
	std::string log_file;               // "" = stderr

	// process
	std::string user;                   // started as root: serve as this user ("" = stay)

	// Not directives: where values came from, for messages.
	std::string config_file;            // "" when no -c was given
};

enum class DirType { String, Path, Bool, Int, Duration, Size, Enum, Listen, AddrList, OriginList };

// One row of the directive table.
struct Directive {
	const char *name;
	DirType type;
	const char *def;        // default, in config-file syntax
	int64_t min, max;       // bounds for Int (count), Duration (ms), Size (bytes)
	const char *choices;    // Enum: space-separated allowed values
	bool reloadable;        // applied by SIGHUP without a restart
	const char *help;       // one sentence for --print-config and the docs
	std::variant<std::string Config::*, int64_t Config::*, bool Config::*,
		     std::vector<Cidr> Config::*, std::vector<std::string> Config::*>
		member;
};

// The table, in documentation order.
const std::vector<Directive> &directives();
const Directive *find_directive(const std::string &name);

// A configuration problem: "where: directive: what".
struct ConfigError {
	std::string where;      // "file:line", "environment QRYPTCHAT_X", "-D"
	std::string directive;  // may be empty
	std::string message;
	std::string text() const;
};

// Built-in defaults.
Config config_defaults();

// Sets one directive from its textual value (validation included).
std::optional<ConfigError> config_set(Config &cfg, const std::string &name,
				      const std::string &value, const std::string &where);

// Applies a config file's text; `path` is used in messages.
std::optional<ConfigError> config_apply_text(Config &cfg, const std::string &text,
					     const std::string &path);
std::optional<ConfigError> config_apply_file(Config &cfg, const std::string &path);

// Applies QRYPTCHAT_<NAME> and WEBSOCKET_PORT from `env` (name=value).
std::optional<ConfigError> config_apply_env(Config &cfg, char *const *env);

// Checks rules between directives (idle_timeout > ping_interval, ...).
std::optional<ConfigError> config_validate(const Config &cfg);

// The value of one directive in config-file syntax.
std::string config_value_text(const Config &cfg, const Directive &d);

// Every directive as "name value" lines, with a comment for each that
// differs from its default.
std::string config_dump(const Config &cfg);

// The loaded JWT secret, or an error message.  At least 32 bytes
// (RFC 8725 §3.5); trailing newlines of a secret file are dropped.
Result<std::string> load_jwt_secret(const Config &cfg, char *const *env);

// Everything needed to build the effective config: -c, env, -D/-p.
struct ConfigSources {
	std::string file;                                        // "" = none
	std::vector<std::pair<std::string, std::string>> defines; // -D name=value
	std::optional<int> port;                                 // -p
};
// defaults < file < env < flags; then validate.
std::optional<ConfigError> config_load(Config &out, const ConfigSources &src, char *const *env);

// Names of reloadable directives whose values differ, and of the others
// that differ (which need a restart).
struct ConfigDiff {
	std::vector<std::string> applied;
	std::vector<std::string> need_restart;
};
ConfigDiff config_diff(const Config &before, const Config &after);

// Parses "host:port", "[v6]:port", "*:port" or "port" (host 127.0.0.1).
bool parse_listen(const std::string &text, std::string &host, int &port);

} // namespace qc
