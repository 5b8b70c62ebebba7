// The command line (qryptchatd(8)): usage and exit statuses, config
// errors naming file, line and directive, --check-config, --print-config,
// the environment, the token subcommand, runtime failures.
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <algorithm>

#include "common.hpp"

using namespace qc::test;

namespace {

struct TempDir {
	std::string path = make_temp_dir();
	~TempDir() { remove_tree(path); }
	std::string file(const std::string &name, const std::string &text) const
	{
		std::string p = path + "/" + name;
		write_file(p, text);
		return p;
	}
};

std::string secret_conf(const TempDir &d, const std::string &extra = "")
{
	std::string secret = d.file("secret", kTestSecret);
	return d.file("q.conf", "jwt_secret_file " + secret + "\ndatabase " + d.path + "/db\n" + extra);
}

} // namespace

static void test_help_version_usage(void **)
{
	RunResult r = run_binary({"--help"});
	assert_int_equal(r.status, 0);
	assert_contains(r.out, "usage: qryptchatd");
	assert_contains(r.out, "--ready-file");
	assert_contains(r.out, "token SUB");
	r = run_binary({"--version"});
	assert_int_equal(r.status, 0);
	assert_contains(r.out, "qryptchatd ");
	r = run_binary({"--bogus"});
	assert_int_equal(r.status, 2);
	assert_contains(r.err, "unknown option --bogus");
	r = run_binary({"-c"});
	assert_int_equal(r.status, 2);
	r = run_binary({"-p", "99999"});
	assert_int_equal(r.status, 2);
	r = run_binary({"-D", "nonsense"});
	assert_int_equal(r.status, 2);
}

static void test_config_errors_exit_2(void **)
{
	TempDir d;
	std::string conf = d.file("bad.conf", "# ok\nmax_connections 10\n\nidle_timeout whenever\n");
	RunResult r = run_binary({"-c", conf, "--check-config"});
	assert_int_equal(r.status, 2);
	// one line naming file, line and directive
	assert_str_eq(r.err, "qryptchatd: " + conf + ":4: idle_timeout: expected a duration (e.g. "
				 "500ms, 10s, 5m, 1h; a bare number is seconds), got 'whenever'\n");
	conf = d.file("unknown.conf", "max_connectionz 5\n");
	r = run_binary({"-c", conf});
	assert_int_equal(r.status, 2);
	assert_contains(r.err, conf + ":1: unknown directive 'max_connectionz'");
	conf = d.file("range.conf", "max_connections 0\n");
	r = run_binary({"-c", conf, "--check-config"});
	assert_int_equal(r.status, 2);
	assert_contains(r.err, ":1: max_connections: value 0 out of range 1..1000000");
	r = run_binary({"-c", d.path + "/missing.conf"});
	assert_int_equal(r.status, 2);
	assert_contains(r.err, "cannot open");
	r = run_binary({"-D", "rate_limit=fast", "--check-config"});
	assert_int_equal(r.status, 2);
	assert_contains(r.err, "-D rate_limit: rate_limit: expected an integer");
	r = run_binary({"--check-config"}, {{"QRYPTCHAT_MAX_QUEUE_BYTES", "1T"}});
	assert_int_equal(r.status, 2);
	assert_contains(r.err, "environment QRYPTCHAT_MAX_QUEUE_BYTES: max_queue_bytes");
}

static void test_secret_required(void **)
{
	TempDir d;
	std::string conf = d.file("q.conf", "database " + d.path + "/db\n");
	RunResult r = run_binary({"-c", conf});
	assert_int_equal(r.status, 2);
	assert_contains(r.err, "no JWT secret");
	r = run_binary({"-c", conf}, {{"QRYPTCHAT_JWT_SECRET", "too-short"}});
	assert_int_equal(r.status, 2);
	assert_contains(r.err, "at least 32 are required");
	r = run_binary({"-c", conf, "--check-config"}, {{"QRYPTCHAT_JWT_SECRET", kTestSecret}});
	assert_int_equal(r.status, 0);
	assert_contains(r.out, "configuration OK");
	// a secret file that cannot be read
	conf = d.file("q2.conf", "jwt_secret_file " + d.path + "/nope\n");
	r = run_binary({"-c", conf, "--check-config"});
	assert_int_equal(r.status, 2);
	assert_contains(r.err, d.path + "/nope");
}

static void test_print_config_and_precedence(void **)
{
	TempDir d;
	std::string conf = secret_conf(d, "max_connections 100\nrate_limit 10\nauth_timeout 3s\n");
	RunResult r = run_binary({"-c", conf, "-D", "auth_timeout=5s", "--print-config"},
				 {{"QRYPTCHAT_RATE_LIMIT", "11"}, {"QRYPTCHAT_AUTH_TIMEOUT", "4s"},
				  {"WEBSOCKET_PORT", "9123"}});
	assert_int_equal(r.status, 0);
	assert_contains(r.out, "\nmax_connections 100\n");  // file
	assert_contains(r.out, "\nrate_limit 11\n");        // environment over file
	assert_contains(r.out, "\nauth_timeout 5s\n");      // flag over environment
	assert_contains(r.out, "listen 127.0.0.1:9123\n");  // WEBSOCKET_PORT
	assert_contains(r.out, "# default: 10000\nmax_connections 100\n");
	r = run_binary({"-c", conf, "-p", "9200", "-q", "--print-config"}, {{"WEBSOCKET_PORT", "9123"}});
	assert_contains(r.out, "listen 127.0.0.1:9200\n");
	assert_contains(r.out, "\nlog_level error\n");
	// every directive is printed, and the dump is itself a valid config
	std::string dumped = d.file("dump.conf", r.out);
	RunResult back = run_binary({"-c", dumped, "--check-config"}, {{"QRYPTCHAT_JWT_SECRET", kTestSecret}});
	assert_int_equal(back.status, 0);
	for (const char *name : {"listen", "database", "jwt_leeway", "max_queue_bytes", "typing_burst",
				 "allowed_origins", "durability", "log_level"})
		assert_contains(r.out, std::string("\n") + name);
}

static void test_token_subcommand(void **)
{
	auto s = start_server();
	RunResult r = run_binary({"-c", s->config_path(), "token", "cli-user", "--ttl", "10m", "--name",
				  "Cli User", "--username", "cli"});
	assert_int_equal(r.status, 0);
	std::string token = r.out.substr(0, r.out.find('\n'));
	assert_int_equal(std::count(token.begin(), token.end(), '.'), 2);
	auto c = ws(*s);
	send_request(*c, "auth", "{\"token\":" + jquote(token) + "}");
	Json j = expect_frame(*c, "auth_success");
	assert_str_eq(jstr(j.get(), "payload.user.id"), "cli-user");
	assert_str_eq(jstr(j.get(), "payload.user.username"), "cli");
	assert_str_eq(jstr(j.get(), "payload.user.display_name"), "Cli User");
	assert_int_equal(run_binary({"-c", s->config_path(), "token"}).status, 2);
	assert_int_equal(run_binary({"-c", s->config_path(), "token", "u", "--ttl", "0"}).status, 2);
	assert_int_equal(run_binary({"-c", s->config_path(), "token", "u", "--bogus", "1"}).status, 2);
	assert_int_equal(run_binary({"-c", s->config_path(), "frobnicate"}).status, 2);
}

static void test_runtime_failures_exit_1(void **)
{
	TempDir d;
	// a database that cannot be created
	std::string conf = secret_conf(d, "listen 127.0.0.1:0\n");
	RunResult r = run_binary({"-c", conf, "-D", "database=" + d.path + "/no/such/dir/db"});
	assert_int_equal(r.status, 1);
	assert_contains(r.err, d.path + "/no/such/dir/db");
	// a port already taken
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	sockaddr_in a{};
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof a), 0);
	assert_int_equal(listen(fd, 1), 0);
	socklen_t len = sizeof a;
	getsockname(fd, reinterpret_cast<sockaddr *>(&a), &len);
	r = run_binary({"-c", conf, "-p", std::to_string(ntohs(a.sin_port))});
	close(fd);
	assert_int_equal(r.status, 1);
	assert_contains(r.err, "Address already in use");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_help_version_usage),
		cmocka_unit_test(test_config_errors_exit_2),
		cmocka_unit_test(test_secret_required),
		cmocka_unit_test(test_print_config_and_precedence),
		cmocka_unit_test(test_token_subcommand),
		cmocka_unit_test(test_runtime_failures_exit_1),
	};
	return cmocka_run_group_tests_name("cli", tests, nullptr, nullptr);
}
