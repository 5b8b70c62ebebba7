// main: the composition root.  Command line → configuration → secret →
// server (or a subcommand) → exit status.
//
// Exit status: 0 clean stop, 1 runtime failure, 2 bad usage or bad
// configuration (with a one-line message naming the file, line and
// directive).
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "qryptchat/admin.hpp"
#include "qryptchat/auth.hpp"
#include "qryptchat/config.hpp"
#include "qryptchat/json.hpp"
#include "qryptchat/log.hpp"
#include "qryptchat/server.hpp"

#ifndef QC_VERSION
#define QC_VERSION "0.0.0"
#endif
#ifndef QC_DEFAULT_CONFIG
#define QC_DEFAULT_CONFIG "/etc/qryptchatd/qryptchatd.conf"
#endif

namespace {

constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

const char kUsage[] =
	"usage: qryptchatd [-c FILE] [-D name=value]... [-p PORT] [--ready-file FILE]\n"
	"                  [--check-config] [--print-config] [-v | -q] [--version] [--help]\n"
	"       qryptchatd [-c FILE] [-D name=value]... token SUB [--ttl DURATION]\n"
	"                  [--name NAME] [--username U]\n"
	"       qryptchatd [-c FILE] [-D name=value]... user|conversation|backup|restore|\n"
	"                  check|prune ... [--json]\n";

const char kHelp[] =
	"qryptchatd: a self-hosted QryptChat WebSocket chat server.\n"
	"\n"
	"Options:\n"
	"  -c FILE            read the configuration from FILE (default: " QC_DEFAULT_CONFIG
	" if it exists)\n"
	"  -D name=value      set a directive, overriding the file and the environment\n"
	"  -p PORT            listen on PORT (the address of `listen` is kept; 0 = any free port)\n"
	"  --ready-file FILE  once listening, write the bound port and a newline to FILE\n"
	"  --check-config     check the configuration and the JWT secret, then exit\n"
	"  --print-config     print the effective configuration, then exit\n"
	"  -v                 log everything (log_level debug)\n"
	"  -q                 log errors only (log_level error)\n"
	"  --version          print the version and exit\n"
	"  --help             print this help and exit\n"
	"\n"
	"Subcommands:\n"
	"  token SUB          print an HS256 token for user id SUB, signed with the\n"
	"                     configured secret\n"
	"      --ttl DURATION     lifetime (default 1h; e.g. 30m, 24h)\n"
	"      --name NAME        display name hint (user_metadata.display_name)\n"
	"      --username U       username hint (user_metadata.username)\n"
	"  user list|show ID|add ID [--username U] [--name N] [--email E]|disable ID|enable ID\n"
	"                     the users of the database; a disabled user's tokens are\n"
	"                     refused and a running server closes its connections\n"
	"  conversation list [--user ID]|show ID|add-member CONV USER|remove-member CONV USER\n"
	"  backup FILE        write a consistent copy of the database to a new FILE\n"
	"  restore FILE       replace the database by a backup (the server must be stopped)\n"
	"  check              integrity check, schema version and counts\n"
	"  prune --older-than DURATION\n"
	"                     delete messages older than DURATION (e.g. 365d)\n"
	"  --json             machine-readable output of list, show, check and prune\n"
	"  These work on the configured database while the server runs or is stopped;\n"
	"  exit status 0 done, 1 failed, 2 bad usage, 3 no such user or conversation.\n"
	"\n"
	"Environment: QRYPTCHAT_<DIRECTIVE> sets any directive (e.g. QRYPTCHAT_LOG_LEVEL);\n"
	"QRYPTCHAT_JWT_SECRET holds the secret when jwt_secret_file is not set;\n"
	"WEBSOCKET_PORT sets the port of `listen`.\n"
	"Signals: TERM and INT stop (connections are closed with 1001), HUP reloads,\n"
	"USR1 reopens the log file.\n"
	"Exit status: 0 clean stop, 1 runtime failure, 2 bad usage or configuration.\n"
	"See qryptchatd(8) and qryptchatd.conf(5).\n";

int usage_error(const std::string &msg)
{
	fprintf(stderr, "qryptchatd: %s\n%s", msg.c_str(), kUsage);
	return kExitUsage;
}

// The account named by the `user` directive.
struct Account {
	std::string name;
	uid_t uid = 0;
	gid_t gid = 0;
};

// Resolves `user` before anything starts: "" when it is not set, else the
// account, or an error message for an unknown user or one this process
// cannot become.
std::string resolve_user(const qc::Config &cfg, std::optional<Account> &out)
{
	if (cfg.user.empty())
		return "";
	errno = 0;
	const passwd *pw = getpwnam(cfg.user.c_str());
	if (!pw)
		return "user " + cfg.user + ": " + (errno ? strerror(errno) : "no such user");
	if (geteuid() != 0 && pw->pw_uid != geteuid())
		return "user " + cfg.user + ": only root can switch to it (running as uid " +
		       std::to_string(geteuid()) + ")";
	out = Account{pw->pw_name, pw->pw_uid, pw->pw_gid};
	return "";
}

// The database files that root created at this start become the
// account's, so that it can go on using them and tools run as it can
// open them.  A symbolic link is not followed, and a file owned by anyone
// but root is left alone.
std::string give_database(const std::string &db, const Account &a)
{
	for (const char *suffix : {"", "-wal", "-shm"}) {
		std::string path = db + suffix;
		int fd = open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
		if (fd < 0) {
			if (errno == ENOENT)
				continue;
			return path + ": " + strerror(errno);
		}
		struct stat st;
		int rc = fstat(fd, &st);
		if (rc == 0 && S_ISREG(st.st_mode) && st.st_uid == 0)
			rc = fchown(fd, a.uid, a.gid);
		int err = errno;
		close(fd);
		if (rc != 0)
			return path + ": " + strerror(err);
	}
	return "";
}

// Started as root: becomes the account (its groups, then its gid, then its
// uid), for good.  Without an account, warns once.
std::string drop_privileges(const qc::Config &cfg, const std::optional<Account> &a)
{
	if (geteuid() != 0)
		return "";
	if (!a) {
		QC_WARN("running_as_root hint=%s",
			qc::log_str("set the user directive to serve as an unprivileged user").c_str());
		return "";
	}
	if (cfg.store == "sqlite")
		if (auto e = give_database(cfg.database, *a); !e.empty())
			return e;
	if (initgroups(a->name.c_str(), a->gid) != 0 || setgid(a->gid) != 0 || setuid(a->uid) != 0)
		return "cannot become user " + a->name + ": " + strerror(errno);
	if (a->uid != 0 && (setuid(0) == 0 || seteuid(0) == 0))
		return "user " + a->name + ": root could be regained after switching";
	QC_INFO("privileges_dropped user=%s uid=%u gid=%u", qc::log_str(a->name).c_str(),
		static_cast<unsigned>(a->uid), static_cast<unsigned>(a->gid));
	return "";
}

int config_error(const std::string &msg)
{
	fprintf(stderr, "qryptchatd: %s\n", msg.c_str());
	return kExitUsage;
}

struct Args {
	qc::ConfigSources sources;
	std::string ready_file;
	bool check = false;
	bool print = false;
	int verbosity = 0; // -1 quiet, +1 verbose
	std::vector<std::string> sub; // subcommand and its arguments
};

// Parses the global options; stops at the first non-option (a subcommand).
// Returns -1 to go on, or an exit status.
int parse_args(int argc, char **argv, Args &a)
{
	for (int i = 1; i < argc; i++) {
		std::string arg = argv[i];
		auto need = [&](const char *what) -> const char * {
			if (i + 1 >= argc)
				return nullptr;
			(void)what;
			return argv[++i];
		};
		if (arg == "--help" || arg == "-h") {
			fputs(kUsage, stdout);
			fputs("\n", stdout);
			fputs(kHelp, stdout);
			return kExitOk;
		} else if (arg == "--version" || arg == "-V") {
			printf("qryptchatd %s\n", QC_VERSION);
			return kExitOk;
		} else if (arg == "-c") {
			const char *v = need("FILE");
			if (!v)
				return usage_error("-c needs a file");
			a.sources.file = v;
		} else if (arg == "-D") {
			const char *v = need("name=value");
			std::string kv = v ? v : "";
			auto eq = kv.find('=');
			if (!v || eq == std::string::npos || eq == 0)
				return usage_error("-D needs name=value");
			a.sources.defines.emplace_back(kv.substr(0, eq), kv.substr(eq + 1));
		} else if (arg == "-p") {
			const char *v = need("PORT");
			std::string host;
			int port;
			if (!v || !qc::parse_listen(v, host, port) || std::string(v).find(':') != std::string::npos)
				return usage_error("-p needs a port number (0-65535)");
			a.sources.port = port;
		} else if (arg == "--ready-file") {
			const char *v = need("FILE");
			if (!v)
				return usage_error("--ready-file needs a file");
			a.ready_file = v;
		} else if (arg == "--check-config") {
			a.check = true;
		} else if (arg == "--print-config") {
			a.print = true;
		} else if (arg == "-v") {
			a.verbosity = 1;
		} else if (arg == "-q") {
			a.verbosity = -1;
		} else if (!arg.empty() && arg[0] == '-') {
			return usage_error("unknown option " + arg);
		} else {
			for (; i < argc; i++)
				a.sub.emplace_back(argv[i]);
		}
	}
	return -1;
}

int cmd_token(const qc::Config &cfg, const std::string &secret, const std::vector<std::string> &args)
{
	if (args.size() < 2 || args[1].empty() || args[1][0] == '-')
		return usage_error("token needs a user id (SUB)");
	std::string sub = args[1];
	if (sub.size() > qc::kMaxSubBytes)
		return usage_error("SUB is longer than 128 bytes");
	int64_t ttl_ms = 3600 * 1000;
	std::optional<std::string> name, username;
	for (size_t i = 2; i < args.size(); i++) {
		const std::string &o = args[i];
		if (i + 1 >= args.size())
			return usage_error(o + " needs a value");
		const std::string &v = args[++i];
		if (o == "--ttl") {
			auto d = qc::parse_duration_ms(v);
			if (!d || *d < 1000)
				return usage_error("--ttl needs a duration of at least 1s (e.g. 30m, 24h)");
			ttl_ms = *d;
		} else if (o == "--name") {
			name = v;
		} else if (o == "--username") {
			username = v;
		} else {
			return usage_error("unknown token option " + o);
		}
	}
	int64_t now = qc::now_ms() / 1000;
	std::string claims;
	qc::JsonWriter w(claims);
	w.begin_object().field("sub", sub).field("iat", now).field("exp", now + ttl_ms / 1000);
	if (!cfg.jwt_audience.empty())
		w.field("aud", cfg.jwt_audience);
	if (!cfg.jwt_issuer.empty())
		w.field("iss", cfg.jwt_issuer);
	if (name || username) {
		w.key("user_metadata").begin_object();
		if (username)
			w.field("username", *username);
		if (name)
			w.field("display_name", *name);
		w.end_object();
	}
	w.end_object();
	std::string token = qc::sign_jwt_hs256(claims, secret);
	if (token.empty()) {
		fprintf(stderr, "qryptchatd: token: signing failed\n");
		return kExitFailure;
	}
	printf("%s\n", token.c_str());
	return kExitOk;
}

} // namespace

int main(int argc, char **argv)
{
	Args a;
	if (int st = parse_args(argc, argv, a); st >= 0)
		return st;
	if (a.sources.file.empty() && access(QC_DEFAULT_CONFIG, F_OK) == 0)
		a.sources.file = QC_DEFAULT_CONFIG;
	if (a.verbosity > 0)
		a.sources.defines.emplace_back("log_level", "debug");
	else if (a.verbosity < 0)
		a.sources.defines.emplace_back("log_level", "error");

	qc::Config cfg;
	if (auto e = qc::config_load(cfg, a.sources, environ))
		return config_error(e->text());
	qc::LogLevel level;
	if (qc::parse_log_level(cfg.log_level, level))
		qc::g_log_level = level;

	if (a.print) {
		fputs(qc::config_dump(cfg).c_str(), stdout);
		return kExitOk;
	}
	// The operator's subcommands need the database, not the secret.
	if (!a.sub.empty() && qc::is_admin_command(a.sub[0]))
		return qc::admin_main(cfg, a.sub);
	auto secret = qc::load_jwt_secret(cfg, environ);
	if (!secret)
		return config_error(secret.error().message);
	if (a.check) {
		printf("qryptchatd: configuration OK%s%s\n", cfg.config_file.empty() ? "" : ": ",
		       cfg.config_file.c_str());
		return kExitOk;
	}
	if (!a.sub.empty()) {
		if (a.sub[0] == "token")
			return cmd_token(cfg, *secret, a.sub);
		return usage_error("unknown subcommand " + a.sub[0]);
	}

	std::optional<Account> account;
	if (auto e = resolve_user(cfg, account); !e.empty())
		return config_error(e);

	qc::ServerSetup setup;
	setup.cfg = cfg;
	setup.sources = a.sources;
	setup.secret = *secret;
	setup.ready_file = a.ready_file;
	auto server = qc::Server::create(std::move(setup));
	if (!server) {
		fprintf(stderr, "qryptchatd: %s\n", server.error().message.c_str());
		return kExitFailure;
	}
	// Bound and with the database open: nothing left that needs root.
	if (auto e = drop_privileges(cfg, account); !e.empty()) {
		fprintf(stderr, "qryptchatd: %s\n", e.c_str());
		return kExitFailure;
	}
	return (*server)->run();
}
