// Fuzz target: the configuration file parser and the directive table's
// value parsers (durations, sizes, address lists, enums, paths, listen
// addresses).
//
// Checked for every input: a refused file names the file and says why; an
// accepted one prints (--print-config) as text that parses back to the
// same configuration.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "fuzz.hpp"
#include "qryptchat/config.hpp"

using namespace qc;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	std::string text(reinterpret_cast<const char *>(data), size);
	Config cfg = config_defaults();
	auto err = config_apply_text(cfg, text, "fuzz.conf");
	if (err) {
		if (err->message.empty() || err->where.rfind("fuzz.conf", 0) != 0)
			abort();
		return 0;
	}
	(void)config_validate(cfg);
	(void)config_diff(config_defaults(), cfg);

	std::string dump = config_dump(cfg);
	Config again = config_defaults();
	if (config_apply_text(again, dump, "dump"))
		abort();
	if (config_dump(again) != dump)
		abort();
	return 0;
}
