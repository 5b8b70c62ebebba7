// config: every directive type, bounds at N and N+1, precedence, errors
// that name file, line and directive, the dump, reload diff and the secret.
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <vector>

#include "cmocka.hpp"
#include "qryptchat/config.hpp"

using namespace qc;

namespace {

std::string tmpfile_with(const std::string &text)
{
	char path[] = "/tmp/qc-config-XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
	close(fd);
	return path;
}

std::optional<ConfigError> set(Config &c, const std::string &n, const std::string &v)
{
	return config_set(c, n, v, "test");
}

} // namespace

static void test_defaults_match_table(void **)
{
	Config c = config_defaults();
	assert_str_eq(c.listen_host, "127.0.0.1");
	assert_int_equal(c.listen_port, 8080);
	assert_int_equal(c.max_connections, 10000);
	assert_int_equal(c.max_message_bytes, 256 * 1024);
	assert_int_equal(c.max_queue_bytes, 4 * 1024 * 1024);
	assert_int_equal(c.auth_timeout_ms, 10000);
	assert_int_equal(c.jwt_leeway_ms, 30000);
	assert_int_equal(c.ping_interval_ms, 30000);
	assert_int_equal(c.idle_timeout_ms, 60000);
	assert_int_equal(c.rate_limit, 20);
	assert_int_equal(c.rate_burst, 50);
	assert_int_equal(c.typing_rate, 40);
	assert_int_equal(c.typing_burst, 80);
	assert_int_equal(c.max_group_size, 256);
	assert_int_equal(c.max_connections_per_ip, 256);
	assert_int_equal(c.connection_rate_per_ip, 60);
	assert_true(c.jwt_require_exp);
	assert_false(c.permessage_deflate);
	assert_str_eq(c.jwt_expiry_action, "close");
	assert_str_eq(c.durability, "normal");
	assert_int_equal(c.admin_allow.size(), 2);
	assert_false(config_validate(c).has_value());
	// Every default parses and lies within its own bounds.
	for (const auto &d : directives()) {
		Config x;
		auto e = config_set(x, d.name, d.def, "default");
		assert_false(e.has_value());
		assert_str_eq(config_value_text(c, d), config_value_text(x, d));
		assert_non_null(d.help);
		assert_true(d.help[0] != '\0');
	}
}

// Each bounded directive accepts its minimum and maximum and refuses one
// past each (N and N+1, in the directive's own unit).
static void test_bounds_every_directive(void **)
{
	for (const auto &d : directives()) {
		if (d.type != DirType::Int && d.type != DirType::Duration && d.type != DirType::Size)
			continue;
		auto text = [&](int64_t v) {
			if (d.type == DirType::Duration)
				return std::to_string(v) + "ms";
			return std::to_string(v);
		};
		// Whole-second directives step by a second.
		int64_t step = (d.type == DirType::Duration && d.min % 1000 == 0 && d.max % 1000 == 0 &&
				(std::string(d.name) == "ping_interval" || std::string(d.name) == "idle_timeout"))
				       ? 1000
				       : 1;
		Config c = config_defaults();
		assert_false(set(c, d.name, text(d.min)).has_value());
		assert_false(set(c, d.name, text(d.max)).has_value());
		if (d.min - step >= 0) {
			auto e = set(c, d.name, text(d.min - step));
			assert_true(e.has_value());
			assert_true(e->message.find("out of range") != std::string::npos);
		}
		auto e = set(c, d.name, text(d.max + step));
		assert_true(e.has_value());
		assert_str_eq(e->directive, d.name);
	}
}

static void test_types(void **)
{
	Config c = config_defaults();
	// bool
	assert_false(set(c, "jwt_require_exp", "no").has_value());
	assert_false(c.jwt_require_exp);
	assert_false(set(c, "jwt_require_exp", "ON").has_value());
	assert_true(c.jwt_require_exp);
	assert_true(set(c, "jwt_require_exp", "maybe").has_value());
	// int
	assert_false(set(c, "max_connections", "500").has_value());
	assert_int_equal(c.max_connections, 500);
	assert_true(set(c, "max_connections", "5k").has_value());
	assert_true(set(c, "max_connections", "-1").has_value());
	assert_true(set(c, "max_connections", "").has_value());
	// duration: units and bare seconds
	assert_false(set(c, "auth_timeout", "250ms").has_value());
	assert_int_equal(c.auth_timeout_ms, 250);
	assert_false(set(c, "auth_timeout", "2").has_value());
	assert_int_equal(c.auth_timeout_ms, 2000);
	assert_false(set(c, "typing_timeout", "1m").has_value());
	assert_int_equal(c.typing_timeout_ms, 60000);
	assert_true(set(c, "auth_timeout", "soon").has_value());
	// whole seconds only for the lws liveness policy
	assert_true(set(c, "ping_interval", "1500ms").has_value());
	// size
	assert_false(set(c, "max_message_bytes", "1M").has_value());
	assert_int_equal(c.max_message_bytes, 1024 * 1024);
	assert_false(set(c, "max_message_bytes", "2048").has_value());
	assert_int_equal(c.max_message_bytes, 2048);
	assert_true(set(c, "max_message_bytes", "1T").has_value());
	// enum
	assert_false(set(c, "durability", "FULL").has_value());
	assert_str_eq(c.durability, "full");
	assert_true(set(c, "durability", "extra").has_value());
	assert_false(set(c, "jwt_expiry_action", "refuse").has_value());
	// string and path
	assert_false(set(c, "jwt_audience", "authenticated").has_value());
	assert_str_eq(c.jwt_audience, "authenticated");
	assert_false(set(c, "database", "\"/tmp/with space.db\"").has_value());
	assert_str_eq(c.database, "/tmp/with space.db");
	// address list
	assert_false(set(c, "admin_allow", "10.0.0.0/8, ::1 192.168.1.7").has_value());
	assert_int_equal(c.admin_allow.size(), 3);
	assert_true(set(c, "admin_allow", "10.0.0.0/8 nonsense").has_value());
	assert_false(set(c, "trusted_proxies", "").has_value());
	assert_true(c.trusted_proxies.empty());
	// origin list
	assert_false(set(c, "allowed_origins", "https://Chat.Example.org http://localhost:5173").has_value());
	assert_str_eq(c.allowed_origins[0], "https://chat.example.org");
	assert_true(set(c, "allowed_origins", "chat.example.org").has_value());
	assert_true(set(c, "allowed_origins", "https://chat.example.org/path").has_value());
	// listen
	assert_false(set(c, "listen", "0.0.0.0:9000").has_value());
	assert_str_eq(c.listen_host, "0.0.0.0");
	assert_int_equal(c.listen_port, 9000);
	assert_false(set(c, "listen", "[::1]:0").has_value());
	assert_str_eq(c.listen_host, "::1");
	assert_int_equal(c.listen_port, 0);
	assert_false(set(c, "listen", "*:8080").has_value());
	assert_str_eq(c.listen_host, "*");
	assert_false(set(c, "listen", "7000").has_value());
	assert_str_eq(c.listen_host, "127.0.0.1");
	assert_int_equal(c.listen_port, 7000);
	assert_true(set(c, "listen", "::1:8080").has_value());
	assert_true(set(c, "listen", "localhost:8080").has_value());
	assert_true(set(c, "listen", "127.0.0.1:65536").has_value());
	// unknown
	auto e = set(c, "max_conections", "5");
	assert_true(e.has_value());
	assert_true(e->message.find("unknown directive") != std::string::npos);
}

static void test_file_errors_name_line_and_directive(void **)
{
	Config c = config_defaults();
	auto e = config_apply_text(c, "# comment\n\nmax_connections 100\nauth_timeout forever\n",
				   "/etc/q.conf");
	assert_true(e.has_value());
	assert_str_eq(e->text(), "/etc/q.conf:4: auth_timeout: expected a duration (e.g. 500ms, "
				 "10s, 5m, 1h; a bare number is seconds), got 'forever'");
	assert_int_equal(c.max_connections, 100);

	e = config_apply_text(c, "bogus 1\n", "f.conf");
	assert_true(e.has_value());
	assert_str_eq(e->text(), "f.conf:1: unknown directive 'bogus'");

	e = config_apply_text(c, "max_connections\n", "f.conf");
	assert_true(e.has_value());
	assert_str_eq(e->text(), "f.conf:1: max_connections: missing value");

	// A '#' inside quotes is part of the value; trailing comments are not.
	Config d = config_defaults();
	assert_false(config_apply_text(d, "jwt_issuer \"a#b\"  # the issuer\nrate_limit 7 # x\n", "f")
			     .has_value());
	assert_str_eq(d.jwt_issuer, "a#b");
	assert_int_equal(d.rate_limit, 7);

	auto missing = config_apply_file(d, "/nonexistent/qryptchatd.conf");
	assert_true(missing.has_value());
	assert_true(missing->text().find("/nonexistent/qryptchatd.conf: cannot open") == 0);
}

static void test_validate_cross_rules(void **)
{
	Config c = config_defaults();
	assert_false(set(c, "ping_interval", "60s").has_value());
	auto e = config_validate(c);
	assert_true(e.has_value());
	assert_str_eq(e->directive, "idle_timeout");
	assert_false(set(c, "idle_timeout", "61s").has_value());
	assert_false(config_validate(c).has_value());
}

static void test_precedence(void **)
{
	std::string path = tmpfile_with("max_connections 100\nrate_limit 10\nauth_timeout 3s\nlisten 127.0.0.1:7000\n");
	std::vector<std::string> envs = {"QRYPTCHAT_RATE_LIMIT=11", "QRYPTCHAT_AUTH_TIMEOUT=4s",
					 "WEBSOCKET_PORT=7100", "UNRELATED=1"};
	std::vector<char *> env;
	for (auto &s : envs)
		env.push_back(&s[0]);
	env.push_back(nullptr);

	ConfigSources src;
	src.file = path;
	src.defines = {{"auth_timeout", "5s"}};
	Config c;
	auto e = config_load(c, src, env.data());
	assert_false(e.has_value());
	assert_int_equal(c.max_connections, 100);   // file over default
	assert_int_equal(c.rate_limit, 11);         // env over file
	assert_int_equal(c.auth_timeout_ms, 5000);  // flag over env
	assert_int_equal(c.listen_port, 7100);      // WEBSOCKET_PORT over file
	assert_int_equal(c.max_group_size, 256);    // default

	src.port = 7200;                            // -p over everything
	assert_false(config_load(c, src, env.data()).has_value());
	assert_int_equal(c.listen_port, 7200);
	assert_str_eq(c.listen_host, "127.0.0.1");

	// QRYPTCHAT_LISTEN beats WEBSOCKET_PORT (both environment; the full
	// directive is more specific).
	std::vector<std::string> envs2 = {"WEBSOCKET_PORT=7100", "QRYPTCHAT_LISTEN=127.0.0.2:7300"};
	std::vector<char *> env2 = {&envs2[0][0], &envs2[1][0], nullptr};
	ConfigSources src2;
	assert_false(config_load(c, src2, env2.data()).has_value());
	assert_int_equal(c.listen_port, 7300);

	// Bad environment values name their variable.
	std::vector<std::string> bad = {"QRYPTCHAT_MAX_CONNECTIONS=lots"};
	std::vector<char *> benv = {&bad[0][0], nullptr};
	e = config_load(c, src2, benv.data());
	assert_true(e.has_value());
	assert_true(e->text().find("environment QRYPTCHAT_MAX_CONNECTIONS: max_connections") == 0);
	std::vector<std::string> unk = {"QRYPTCHAT_NOPE=1"};
	std::vector<char *> uenv = {&unk[0][0], nullptr};
	assert_true(config_load(c, src2, uenv.data()).has_value());
	// A bad flag names the flag.
	ConfigSources src3;
	src3.defines = {{"max_connections", "0"}};
	e = config_load(c, src3, nullptr);
	assert_true(e.has_value());
	assert_true(e->text().find("-D max_connections") == 0);
	unlink(path.c_str());
}

static void test_dump_round_trips(void **)
{
	Config c = config_defaults();
	assert_false(set(c, "max_connections", "77").has_value());
	assert_false(set(c, "admin_allow", "10.0.0.0/8 ::1").has_value());
	assert_false(set(c, "allowed_origins", "https://a.example").has_value());
	// A '#' and white space at the ends survive by quoting.
	assert_false(set(c, "database", "\"/srv/chat #1/db \"").has_value());
	assert_str_eq(c.database, "/srv/chat #1/db ");
	std::string dump = config_dump(c);
	assert_true(dump.find("\ndatabase \"/srv/chat #1/db \"\n") != std::string::npos);
	assert_true(dump.find("# default: 10000\nmax_connections 77\n") != std::string::npos);
	Config back = config_defaults();
	auto e = config_apply_text(back, dump, "dump");
	assert_false(e.has_value());
	for (const auto &d : directives())
		assert_str_eq(config_value_text(back, d), config_value_text(c, d));
}

// Strings and paths that could not be printed back as the same line.
static void test_string_values_refused(void **)
{
	Config c = config_defaults();
	for (const char *v : {"/a\"b", "/a\x1b[31m", "/tab\there", "a\x7f"}) {
		auto e = set(c, "database", v);
		assert_true(e.has_value());
		assert_true(e->message.find("double quote or a control character") != std::string::npos);
	}
	assert_str_eq(c.database, config_defaults().database);
}

static void test_diff(void **)
{
	Config a = config_defaults(), b = config_defaults();
	assert_false(set(b, "max_connections", "5").has_value());
	assert_false(set(b, "listen", "127.0.0.1:9").has_value());
	ConfigDiff d = config_diff(a, b);
	assert_int_equal(d.applied.size(), 1);
	assert_str_eq(d.applied[0], "max_connections");
	assert_int_equal(d.need_restart.size(), 1);
	assert_str_eq(d.need_restart[0], "listen");
}

static void test_secret(void **)
{
	Config c = config_defaults();
	std::vector<std::string> envs = {"QRYPTCHAT_JWT_SECRET=0123456789abcdef0123456789abcdef"};
	std::vector<char *> env = {&envs[0][0], nullptr};
	auto s = load_jwt_secret(c, env.data());
	assert_true(s.ok());
	assert_int_equal(s->size(), 32);

	std::vector<std::string> shorts = {"QRYPTCHAT_JWT_SECRET=0123456789abcdef0123456789abcde"};
	std::vector<char *> senv = {&shorts[0][0], nullptr};
	s = load_jwt_secret(c, senv.data());
	assert_false(s.ok());
	assert_true(s.error().message.find("31 bytes; at least 32") != std::string::npos);

	s = load_jwt_secret(c, nullptr);
	assert_false(s.ok());
	assert_true(s.error().message.find("no JWT secret") == 0);

	// A file wins over the environment; trailing newlines are dropped.
	std::string path = tmpfile_with("file-secret-0123456789abcdef012345\n\n");
	assert_false(set(c, "jwt_secret_file", path).has_value());
	s = load_jwt_secret(c, env.data());
	assert_true(s.ok());
	assert_str_eq(*s, "file-secret-0123456789abcdef012345");
	unlink(path.c_str());
	s = load_jwt_secret(c, env.data());
	assert_false(s.ok());
	assert_true(s.error().message.find("cannot open") != std::string::npos);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults_match_table),
		cmocka_unit_test(test_bounds_every_directive),
		cmocka_unit_test(test_types),
		cmocka_unit_test(test_file_errors_name_line_and_directive),
		cmocka_unit_test(test_validate_cross_rules),
		cmocka_unit_test(test_precedence),
		cmocka_unit_test(test_dump_round_trips),
		cmocka_unit_test(test_string_values_refused),
		cmocka_unit_test(test_diff),
		cmocka_unit_test(test_secret),
	};
	return cmocka_run_group_tests_name("config", tests, nullptr, nullptr);
}
