// What /proc says about a process, for the benchmark tools.
#pragma once

#include <sys/types.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

namespace qc::bench {

// CPU time (user + system) in seconds; NaN if the process is gone.
inline double proc_cpu_s(pid_t pid)
{
	std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
	std::string line;
	if (!std::getline(f, line))
		return NAN;
	// After the parenthesised command name: the state is field 3, utime
	// and stime are fields 14 and 15.
	std::istringstream in(line.substr(line.rfind(')') + 2));
	std::string v;
	unsigned long long ut = 0, st = 0;
	for (int i = 3; i <= 15 && in >> v; i++) {
		if (i == 14)
			ut = std::stoull(v);
		if (i == 15)
			st = std::stoull(v);
	}
	return static_cast<double>(ut + st) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// Resident set size in KB; -1 if the process is gone.
inline long proc_rss_kb(pid_t pid)
{
	std::ifstream f("/proc/" + std::to_string(pid) + "/status");
	std::string line;
	while (std::getline(f, line))
		if (line.rfind("VmRSS:", 0) == 0)
			return std::atol(line.c_str() + 6);
	return -1;
}

} // namespace qc::bench
