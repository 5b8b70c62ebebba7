// engines: how a test that needs an engine which is not installed skips
// (see engines.hpp).
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "engines.hpp"

namespace qc::test {

bool skip_without_engine(const char *what, const std::string &why)
{
	const char *require = getenv("QC_REQUIRE_ENGINES");
	if (require && !strcmp(require, "1")) {
		fprintf(stderr, "FAILED: %s: %s (QC_REQUIRE_ENGINES=1)\n", what, why.c_str());
		exit(1);
	}
	fprintf(stderr, "SKIPPED: %s: %s\n", what, why.c_str());
	return true;
}

} // namespace qc::test
