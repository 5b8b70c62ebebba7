// web: request paths to files under the root, and nothing else; content
// types; validators.
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include "cmocka.hpp"
#include "qryptchat/web.hpp"

using namespace qc;

namespace {

std::string temp_dir()
{
	char d[] = "/tmp/qc-web-XXXXXX";
	assert_non_null(mkdtemp(d));
	return d;
}

void write_file(const std::string &path, const std::string &text)
{
	std::ofstream(path, std::ios::binary) << text;
}

void remove_tree(const std::string &dir)
{
	nftw(
		dir.c_str(), [](const char *p, const struct stat *, int, FTW *) { return remove(p); }, 16,
		FTW_DEPTH | FTW_PHYS);
}

} // namespace

static void test_relative_paths(void **)
{
	struct {
		const char *url, *rel;
	} good[] = {{"/", "index.html"},
		    {"/index.html", "index.html"},
		    {"/app.js", "app.js"},
		    {"/img/", "img/index.html"},
		    {"/img/logo.svg", "img/logo.svg"},
		    {"/a-b_c~d.e", "a-b_c~d.e"}};
	for (const auto &g : good) {
		auto r = web_relative_path(g.url);
		assert_true(r.has_value());
		assert_str_eq(*r, g.rel);
	}
	const char *bad[] = {"",          "app.js",     "//",        "//etc/passwd", "/..",
			     "/../x",     "/a/../b",    "/./a",      "/a//b",        "/.git/config",
			     "/.env",     "/a\\b",      "/a b",      "/a%2e",        "/a?b",
			     "/\xc3\xa9", "/a:b",       "/a/./b"};
	for (const char *b : bad)
		if (web_relative_path(b))
			fail_msg("accepted %s", b);
	assert_false(web_relative_path(std::string_view("/a\0b", 4)).has_value());
	std::string deep;
	for (int i = 0; i < 17; i++)
		deep += "/d";
	assert_false(web_relative_path(deep).has_value());
	assert_true(web_relative_path(deep.substr(2)).has_value());
	assert_false(web_relative_path("/" + std::string(600, 'a')).has_value());
}

static void test_content_types(void **)
{
	assert_str_eq(web_content_type("index.html"), "text/html; charset=utf-8");
	assert_str_eq(web_content_type("x/app.js"), "text/javascript; charset=utf-8");
	assert_str_eq(web_content_type("style.css"), "text/css; charset=utf-8");
	assert_str_eq(web_content_type("m.webmanifest"), "application/manifest+json");
	assert_str_eq(web_content_type("a.png"), "image/png");
	assert_str_eq(web_content_type("README"), "application/octet-stream");
	assert_str_eq(web_content_type(".js"), "application/octet-stream");
}

static void test_read(void **)
{
	std::string root_dir = temp_dir();
	std::string out_dir = temp_dir();
	write_file(root_dir + "/index.html", "hello");
	write_file(out_dir + "/secret", "nope");
	assert_int_equal(symlink((out_dir + "/secret").c_str(), (root_dir + "/leak").c_str()), 0);
	assert_int_equal(symlink(out_dir.c_str(), (root_dir + "/dir").c_str()), 0);
	assert_int_equal(mkdir((root_dir + "/sub").c_str(), 0755), 0);
	auto root = web_root_resolve(root_dir);
	assert_true(root.ok());
	assert_false(web_root_resolve(root_dir + "/index.html").ok());
	assert_false(web_root_resolve(root_dir + "/none").ok());

	auto f = web_read(*root, "/");
	assert_true(f.has_value());
	assert_str_eq(f->body, "hello");
	assert_str_eq(f->type, "text/html; charset=utf-8");
	std::string etag = f->etag;
	assert_true(etag.size() > 4 && etag.front() == '"' && etag.back() == '"');
	write_file(root_dir + "/index.html", "hello, world");
	assert_true(web_read(*root, "/index.html")->etag != etag);

	assert_false(web_read(*root, "/leak").has_value());       // a link out of the root
	assert_false(web_read(*root, "/dir/secret").has_value()); // through a linked directory
	assert_false(web_read(*root, "/sub").has_value());        // a directory
	assert_false(web_read(*root, "/sub/").has_value());       // without an index
	assert_false(web_read(*root, "/missing").has_value());
	write_file(root_dir + "/big.txt", std::string(kMaxWebFileBytes + 1, 'x'));
	assert_false(web_read(*root, "/big.txt").has_value());
	remove_tree(root_dir);
	remove_tree(out_dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_relative_paths),
		cmocka_unit_test(test_content_types),
		cmocka_unit_test(test_read),
	};
	return cmocka_run_group_tests_name("web", tests, nullptr, nullptr);
}
