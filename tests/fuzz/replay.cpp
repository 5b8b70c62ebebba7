// Replays a fuzz target's seed corpus and its regression inputs as an
// ordinary test (built with the project's compiler, under SANITIZE when
// given): every file under tests/fuzz/corpus/<target>/ and
// tests/fuzz/regressions/<target>/ must run through the target without a
// crash, a sanitizer report or a failed check.  The target's name is this
// binary's name without "replay_".
#include <dirent.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "../unit/cmocka.hpp"
#include "fuzz.hpp"

namespace {

std::string g_target;

std::vector<std::string> files_in(const std::string &dir)
{
	std::vector<std::string> out;
	DIR *d = opendir(dir.c_str());
	if (!d)
		return out;
	while (dirent *e = readdir(d))
		if (e->d_name[0] != '.')
			out.push_back(dir + "/" + e->d_name);
	closedir(d);
	return out;
}

size_t replay(const std::string &dir)
{
	size_t n = 0;
	for (const auto &path : files_in(dir)) {
		std::ifstream f(path, std::ios::binary);
		assert_true(f.good());
		std::stringstream ss;
		ss << f.rdbuf();
		std::string bytes = ss.str();
		LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t *>(bytes.data()), bytes.size());
		n++;
	}
	return n;
}

void test_corpus(void **)
{
	size_t n = replay("tests/fuzz/corpus/" + g_target);
	printf("%s: %zu seed inputs replayed\n", g_target.c_str(), n);
	assert_true(n > 0);
}

void test_regressions(void **)
{
	size_t n = replay("tests/fuzz/regressions/" + g_target);
	printf("%s: %zu regression inputs replayed\n", g_target.c_str(), n);
}

} // namespace

int main(int argc, char **argv)
{
	std::string name = argv[0];
	name = name.substr(name.rfind('/') + 1);
	g_target = name.rfind("replay_", 0) == 0 ? name.substr(7) : name;
	if (LLVMFuzzerInitialize)
		LLVMFuzzerInitialize(&argc, &argv);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_corpus),
		cmocka_unit_test(test_regressions),
	};
	return cmocka_run_group_tests_name(name.c_str(), tests, nullptr, nullptr);
}
