// The directive table is the documentation's source of truth: the sample
// configuration and the man page must each name every directive, and the
// sample must show each default as a commented-out line.  Runs from the
// repository root.
#include <fstream>
#include <regex>
#include <sstream>

#include "cmocka.hpp"
#include "qryptchat/config.hpp"

using namespace qc;

static std::string slurp(const char *path)
{
	std::ifstream f(path);
	if (!f)
		fail_msg("cannot read %s (run from the repository root)", path);
	std::stringstream ss;
	ss << f.rdbuf();
	return ss.str();
}

static bool has_line(const std::string &text, const std::string &line)
{
	std::istringstream in(text);
	std::string l;
	while (std::getline(in, l))
		if (l == line)
			return true;
	return false;
}

static void test_sample_config_lists_every_default(void **)
{
	std::string text = slurp("etc/qryptchatd.conf");
	for (const auto &d : directives()) {
		std::string line = std::string("# ") + d.name + (d.def[0] ? std::string(" ") + d.def : "");
		// The sample shows web_root for the default PREFIX; a build for
		// another has another default (make install writes it in).
		if (std::string(d.name) == "web_root")
			line = "# web_root /usr/local/share/qryptchatd/web";
		if (!has_line(text, line))
			fail_msg("etc/qryptchatd.conf lacks the line \"%s\"", line.c_str());
	}
	// And, uncommented, it is exactly the defaults.
	std::string uncommented;
	for (const auto &d : directives())
		uncommented += std::string(d.name) + " " + d.def + "\n";
	Config c = config_defaults();
	assert_false(config_apply_text(c, uncommented, "sample").has_value());
	// The shipped file (all commented out) parses.
	Config shipped = config_defaults();
	auto e = config_apply_text(shipped, text, "etc/qryptchatd.conf");
	if (e)
		fail_msg("%s", e->text().c_str());
}

static void test_man_page_documents_every_directive(void **)
{
	std::string text = slurp("man/qryptchatd.conf.5");
	for (const auto &d : directives()) {
		std::regex item("\\n\\.It Ic " + std::string(d.name) + "( |\\n)");
		if (!std::regex_search(text, item))
			fail_msg("man/qryptchatd.conf.5 has no \".It Ic %s\" entry", d.name);
	}
}

static void test_no_unknown_directive_documented(void **)
{
	// Every ".It Ic name" in the man page is a real directive.
	std::string text = slurp("man/qryptchatd.conf.5");
	std::regex item("\\n\\.It Ic ([a-z_]+)");
	for (auto it = std::sregex_iterator(text.begin(), text.end(), item); it != std::sregex_iterator(); ++it) {
		std::string name = (*it)[1];
		if (!find_directive(name))
			fail_msg("man/qryptchatd.conf.5 documents \"%s\", which is not a directive",
				 name.c_str());
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sample_config_lists_every_default),
		cmocka_unit_test(test_man_page_documents_every_directive),
		cmocka_unit_test(test_no_unknown_directive_documented),
	};
	return cmocka_run_group_tests_name("docs", tests, nullptr, nullptr);
}
