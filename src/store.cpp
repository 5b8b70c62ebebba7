#include "qryptchat/store.hpp"

namespace qc {

std::string direct_conversation_key(const std::string &x, const std::string &y)
{
	auto add = [](std::string &out, const std::string &id) {
		for (char ch : id) {
			if (ch == '\\')
				out += "\\\\";
			else if (ch == '\n')
				out += "\\n";
			else
				out.push_back(ch);
		}
	};
	std::string key;
	add(key, x < y ? x : y);
	key.push_back('\n');
	add(key, x < y ? y : x);
	return key;
}

} // namespace qc
