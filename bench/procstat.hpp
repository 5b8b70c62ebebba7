// What /proc says about a process, for the benchmark tools.
#pragma once

#include <dirent.h>
#include <sys/types.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

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

// The fields of /proc/PID/stat after the command name, from the state
// (field 3) on; empty if the process is gone.
inline std::vector<std::string> proc_stat_fields(pid_t pid)
{
	std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
	std::string line;
	std::vector<std::string> out;
	if (!std::getline(f, line) || line.rfind(')') == std::string::npos)
		return out;
	std::istringstream in(line.substr(line.rfind(')') + 2));
	std::string v;
	while (in >> v)
		out.push_back(v);
	return out;
}

// CPU time in seconds of a process and all its descendants: utime, stime
// and the children's cutime and cstime (what the reaped ones used) of every
// process in the tree.  For servers that fork (PostgreSQL's backends).
inline double proc_tree_cpu_s(pid_t root)
{
	std::map<pid_t, std::vector<pid_t>> children;
	std::map<pid_t, unsigned long long> ticks;
	if (DIR *d = opendir("/proc")) {
		while (struct dirent *e = readdir(d)) {
			char *end = nullptr;
			long pid = strtol(e->d_name, &end, 10);
			if (end == e->d_name || *end)
				continue;
			auto v = proc_stat_fields(static_cast<pid_t>(pid));
			if (v.size() < 15) // fields 3 to 17
				continue;
			children[static_cast<pid_t>(std::stol(v[1]))].push_back(static_cast<pid_t>(pid));
			ticks[static_cast<pid_t>(pid)] =
				std::stoull(v[11]) + std::stoull(v[12]) + std::stoull(v[13]) + std::stoull(v[14]);
		}
		closedir(d);
	}
	if (!ticks.count(root))
		return NAN;
	unsigned long long sum = 0;
	std::vector<pid_t> todo{root};
	while (!todo.empty()) {
		pid_t p = todo.back();
		todo.pop_back();
		sum += ticks[p];
		for (pid_t c : children[p])
			todo.push_back(c);
	}
	return static_cast<double>(sum) / static_cast<double>(sysconf(_SC_CLK_TCK));
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
