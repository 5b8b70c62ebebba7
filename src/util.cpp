#include "qryptchat/util.hpp"

#include <arpa/inet.h>
#include <sys/random.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>

namespace qc {

const char *err_code(Err e)
{
	switch (e) {
	case Err::None: return "";
	case Err::InvalidMessage: return "INVALID_MESSAGE";
	case Err::UnknownMessageType: return "UNKNOWN_MESSAGE_TYPE";
	case Err::AuthRequired: return "AUTH_REQUIRED";
	case Err::MissingToken: return "MISSING_TOKEN";
	case Err::InvalidToken: return "INVALID_TOKEN";
	case Err::TokenExpired: return "TOKEN_EXPIRED";
	case Err::InvalidData: return "INVALID_DATA";
	case Err::AccessDenied: return "ACCESS_DENIED";
	case Err::UserNotFound: return "USER_NOT_FOUND";
	case Err::MessageNotFound: return "MESSAGE_NOT_FOUND";
	case Err::RateLimited: return "RATE_LIMITED";
	case Err::DatabaseError: return "DATABASE_ERROR";
	case Err::ServerError: return "SERVER_ERROR";
	}
	return "SERVER_ERROR";
}

int64_t now_ms()
{
	timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

int64_t mono_us()
{
	timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return static_cast<int64_t>(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
}

std::string iso8601_ms(int64_t ms)
{
	time_t secs = static_cast<time_t>(ms / 1000);
	int frac = static_cast<int>(ms % 1000);
	if (frac < 0) {
		frac += 1000;
		secs -= 1;
	}
	tm t;
	gmtime_r(&secs, &t);
	char buf[64];
	snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", t.tm_year + 1900,
		 t.tm_mon + 1, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, frac);
	return buf;
}

bool random_bytes(void *buf, size_t len)
{
	auto *p = static_cast<unsigned char *>(buf);
	while (len > 0) {
		ssize_t n = getrandom(p, len, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return false;
		}
		p += n;
		len -= static_cast<size_t>(n);
	}
	return true;
}

namespace {

// xoshiro256** seeded from the kernel: ids need to be unique and
// unpredictable enough to not collide, not secret, and the kernel call per
// id would cost a system call on the per-message path.
struct Prng {
	uint64_t s[4];
	Prng()
	{
		if (!random_bytes(s, sizeof s)) {
			// getrandom() cannot fail on Linux ≥ 3.17 once the pool is
			// initialised; fall back to time and address entropy.
			uint64_t seed = static_cast<uint64_t>(mono_us()) ^
					reinterpret_cast<uintptr_t>(this);
			for (auto &w : s) {
				seed += 0x9e3779b97f4a7c15ULL;
				uint64_t z = seed;
				z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
				z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
				w = z ^ (z >> 31);
			}
		}
	}
	static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
	uint64_t next()
	{
		uint64_t result = rotl(s[1] * 5, 7) * 9;
		uint64_t t = s[1] << 17;
		s[2] ^= s[0];
		s[3] ^= s[1];
		s[1] ^= s[2];
		s[0] ^= s[3];
		s[2] ^= t;
		s[3] = rotl(s[3], 45);
		return result;
	}
};

Prng &prng()
{
	static Prng p;
	return p;
}

std::string format_uuid(const unsigned char b[16])
{
	static const char hex[] = "0123456789abcdef";
	std::string out;
	out.reserve(36);
	for (int i = 0; i < 16; i++) {
		if (i == 4 || i == 6 || i == 8 || i == 10)
			out.push_back('-');
		out.push_back(hex[b[i] >> 4]);
		out.push_back(hex[b[i] & 15]);
	}
	return out;
}

} // namespace

std::string uuid_v4()
{
	unsigned char b[16];
	uint64_t a = prng().next(), c = prng().next();
	memcpy(b, &a, 8);
	memcpy(b + 8, &c, 8);
	b[6] = static_cast<unsigned char>((b[6] & 0x0f) | 0x40);
	b[8] = static_cast<unsigned char>((b[8] & 0x3f) | 0x80);
	return format_uuid(b);
}

std::string uuid_v7_at(int64_t ms)
{
	// Monotonic within the process: the same or an earlier millisecond
	// (clock stepped back) reuses the last one with the counter bumped.
	static int64_t last_ms = 0;
	static unsigned counter = 0;
	if (ms > last_ms) {
		last_ms = ms;
		counter = static_cast<unsigned>(prng().next() & 0x1ff); // leave room to count up
	} else if (++counter > 0xfff) {
		last_ms++;
		counter = 0;
	}
	uint64_t t = static_cast<uint64_t>(last_ms);
	unsigned char b[16];
	for (int i = 0; i < 6; i++)
		b[i] = static_cast<unsigned char>(t >> (40 - 8 * i));
	b[6] = static_cast<unsigned char>(0x70 | ((counter >> 8) & 0x0f));
	b[7] = static_cast<unsigned char>(counter & 0xff);
	uint64_t r = prng().next();
	memcpy(b + 8, &r, 8);
	b[8] = static_cast<unsigned char>((b[8] & 0x3f) | 0x80);
	return format_uuid(b);
}

std::string uuid_v7() { return uuid_v7_at(now_ms()); }

std::string base64url_encode(std::string_view in)
{
	static const char tbl[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	std::string out;
	out.reserve((in.size() + 2) / 3 * 4);
	size_t i = 0;
	for (; i + 3 <= in.size(); i += 3) {
		uint32_t v = (static_cast<unsigned char>(in[i]) << 16) |
			     (static_cast<unsigned char>(in[i + 1]) << 8) |
			     static_cast<unsigned char>(in[i + 2]);
		out.push_back(tbl[(v >> 18) & 63]);
		out.push_back(tbl[(v >> 12) & 63]);
		out.push_back(tbl[(v >> 6) & 63]);
		out.push_back(tbl[v & 63]);
	}
	size_t rest = in.size() - i;
	if (rest == 1) {
		uint32_t v = static_cast<unsigned char>(in[i]) << 16;
		out.push_back(tbl[(v >> 18) & 63]);
		out.push_back(tbl[(v >> 12) & 63]);
	} else if (rest == 2) {
		uint32_t v = (static_cast<unsigned char>(in[i]) << 16) |
			     (static_cast<unsigned char>(in[i + 1]) << 8);
		out.push_back(tbl[(v >> 18) & 63]);
		out.push_back(tbl[(v >> 12) & 63]);
		out.push_back(tbl[(v >> 6) & 63]);
	}
	return out;
}

std::optional<std::string> base64url_decode(std::string_view in)
{
	auto val = [](char c) -> int {
		if (c >= 'A' && c <= 'Z')
			return c - 'A';
		if (c >= 'a' && c <= 'z')
			return c - 'a' + 26;
		if (c >= '0' && c <= '9')
			return c - '0' + 52;
		if (c == '-')
			return 62;
		if (c == '_')
			return 63;
		return -1;
	};
	if (in.size() % 4 == 1)
		return std::nullopt;
	std::string out;
	out.reserve(in.size() * 3 / 4);
	uint32_t acc = 0;
	int bits = 0;
	for (char c : in) {
		int v = val(c);
		if (v < 0)
			return std::nullopt;
		acc = (acc << 6) | static_cast<uint32_t>(v);
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out.push_back(static_cast<char>((acc >> bits) & 0xff));
		}
	}
	// Leftover bits must be zero (canonical encoding).
	if (bits > 0 && (acc & ((1u << bits) - 1)) != 0)
		return std::nullopt;
	return out;
}

namespace {

// Parses a non-negative decimal integer with an optional unit suffix.
bool split_number(std::string_view text, int64_t &num, std::string &unit)
{
	std::string s = trim(text);
	if (s.empty())
		return false;
	size_t i = 0;
	num = 0;
	while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
		if (num > (INT64_MAX - 9) / 10)
			return false;
		num = num * 10 + (s[i] - '0');
		i++;
	}
	if (i == 0)
		return false;
	unit = lowercase(s.substr(i));
	return true;
}

bool checked_mul(int64_t a, int64_t b, int64_t &out)
{
	return !__builtin_mul_overflow(a, b, &out);
}

} // namespace

std::optional<int64_t> parse_duration_ms(std::string_view text)
{
	int64_t n;
	std::string unit;
	if (!split_number(text, n, unit))
		return std::nullopt;
	int64_t mult;
	if (unit == "ms")
		mult = 1;
	else if (unit.empty() || unit == "s")
		mult = 1000;
	else if (unit == "m")
		mult = 60 * 1000;
	else if (unit == "h")
		mult = 3600 * 1000;
	else if (unit == "d")
		mult = 24 * 3600 * 1000;
	else
		return std::nullopt;
	int64_t out;
	if (!checked_mul(n, mult, out))
		return std::nullopt;
	return out;
}

std::string format_duration_ms(int64_t ms)
{
	if (ms != 0 && ms % (3600 * 1000) == 0)
		return std::to_string(ms / (3600 * 1000)) + "h";
	if (ms != 0 && ms % (60 * 1000) == 0)
		return std::to_string(ms / (60 * 1000)) + "m";
	if (ms % 1000 == 0)
		return std::to_string(ms / 1000) + "s";
	return std::to_string(ms) + "ms";
}

std::optional<int64_t> parse_size(std::string_view text)
{
	int64_t n;
	std::string unit;
	if (!split_number(text, n, unit))
		return std::nullopt;
	int64_t mult;
	if (unit.empty() || unit == "b")
		mult = 1;
	else if (unit == "k")
		mult = 1024;
	else if (unit == "m")
		mult = 1024 * 1024;
	else
		return std::nullopt;
	int64_t out;
	if (!checked_mul(n, mult, out))
		return std::nullopt;
	return out;
}

std::string format_size(int64_t bytes)
{
	if (bytes != 0 && bytes % (1024 * 1024) == 0)
		return std::to_string(bytes / (1024 * 1024)) + "M";
	if (bytes != 0 && bytes % 1024 == 0)
		return std::to_string(bytes / 1024) + "K";
	return std::to_string(bytes);
}

std::vector<std::string> split_list(std::string_view text)
{
	std::vector<std::string> out;
	std::string cur;
	for (char c : text) {
		if (c == ' ' || c == '\t' || c == ',') {
			if (!cur.empty())
				out.push_back(std::move(cur));
			cur.clear();
		} else {
			cur.push_back(c);
		}
	}
	if (!cur.empty())
		out.push_back(std::move(cur));
	return out;
}

std::string trim(std::string_view s)
{
	size_t b = 0, e = s.size();
	while (b < e && (s[b] == ' ' || s[b] == '\t' || s[b] == '\r' || s[b] == '\n'))
		b++;
	while (e > b && (s[e - 1] == ' ' || s[e - 1] == '\t' || s[e - 1] == '\r' || s[e - 1] == '\n'))
		e--;
	return std::string(s.substr(b, e - b));
}

std::string lowercase(std::string_view s)
{
	std::string out(s);
	for (auto &c : out)
		if (c >= 'A' && c <= 'Z')
			c = static_cast<char>(c - 'A' + 'a');
	return out;
}

std::optional<IpAddr> parse_ip(std::string_view text)
{
	std::string s(text);
	if (s.size() > 2 && s.front() == '[' && s.back() == ']')
		s = s.substr(1, s.size() - 2);
	IpAddr ip;
	if (inet_pton(AF_INET, s.c_str(), ip.addr) == 1) {
		ip.family = AF_INET;
		return ip;
	}
	if (inet_pton(AF_INET6, s.c_str(), ip.addr) == 1) {
		ip.family = AF_INET6;
		static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
		if (memcmp(ip.addr, mapped, 12) == 0) {
			memmove(ip.addr, ip.addr + 12, 4);
			memset(ip.addr + 4, 0, 12);
			ip.family = AF_INET;
		}
		return ip;
	}
	return std::nullopt;
}

std::optional<IpAddr> ip_from_sockaddr(const sockaddr *sa)
{
	char buf[INET6_ADDRSTRLEN];
	if (sa->sa_family == AF_INET) {
		auto *in = reinterpret_cast<const sockaddr_in *>(sa);
		inet_ntop(AF_INET, &in->sin_addr, buf, sizeof buf);
	} else if (sa->sa_family == AF_INET6) {
		auto *in6 = reinterpret_cast<const sockaddr_in6 *>(sa);
		inet_ntop(AF_INET6, &in6->sin6_addr, buf, sizeof buf);
	} else {
		return std::nullopt;
	}
	return parse_ip(buf);
}

std::string format_ip(const IpAddr &ip)
{
	char buf[INET6_ADDRSTRLEN];
	if (!inet_ntop(ip.family, ip.addr, buf, sizeof buf))
		return "?";
	return buf;
}

std::optional<Cidr> parse_cidr(std::string_view text)
{
	std::string s(text);
	int prefix = -1;
	auto slash = s.find('/');
	if (slash != std::string::npos) {
		std::string p = s.substr(slash + 1);
		s = s.substr(0, slash);
		if (p.empty() || p.size() > 3)
			return std::nullopt;
		prefix = 0;
		for (char c : p) {
			if (c < '0' || c > '9')
				return std::nullopt;
			prefix = prefix * 10 + (c - '0');
		}
	}
	auto ip = parse_ip(s);
	if (!ip)
		return std::nullopt;
	Cidr c;
	c.family = ip->family;
	memcpy(c.addr, ip->addr, 16);
	int max = ip->family == AF_INET ? 32 : 128;
	if (prefix < 0)
		prefix = max;
	// A mapped IPv6 prefix (::ffff:10.0.0.0/104) is an IPv4 prefix.
	if (ip->family == AF_INET && s.find(':') != std::string::npos && slash != std::string::npos)
		prefix -= 96;
	if (prefix < 0 || prefix > max)
		return std::nullopt;
	c.prefix = prefix;
	return c;
}

std::string format_cidr(const Cidr &c)
{
	IpAddr ip;
	ip.family = c.family;
	memcpy(ip.addr, c.addr, 16);
	int max = c.family == AF_INET ? 32 : 128;
	std::string s = format_ip(ip);
	if (c.prefix != max)
		s += "/" + std::to_string(c.prefix);
	return s;
}

bool cidr_contains(const Cidr &c, const IpAddr &ip)
{
	if (c.family != ip.family)
		return false;
	int full = c.prefix / 8, rest = c.prefix % 8;
	if (memcmp(c.addr, ip.addr, static_cast<size_t>(full)) != 0)
		return false;
	if (rest == 0)
		return true;
	unsigned char mask = static_cast<unsigned char>(0xff << (8 - rest));
	return (c.addr[full] & mask) == (ip.addr[full] & mask);
}

bool cidr_list_contains(const std::vector<Cidr> &list, const IpAddr &ip)
{
	for (const auto &c : list)
		if (cidr_contains(c, ip))
			return true;
	return false;
}

size_t utf8_length(std::string_view s)
{
	size_t n = 0;
	for (unsigned char c : s)
		if ((c & 0xc0) != 0x80)
			n++;
	return n;
}

namespace {

// Length of the well-formed UTF-8 sequence at s[i] (RFC 3629: shortest
// form, no surrogates, nothing above U+10FFFF) and its code point; 0 when
// the bytes there are not one.
size_t utf8_sequence(std::string_view s, size_t i, uint32_t &cp)
{
	unsigned char c = static_cast<unsigned char>(s[i]);
	size_t n;
	uint32_t min;
	if (c < 0x80) {
		cp = c;
		return 1;
	}
	if (c >= 0xc2 && c <= 0xdf) {
		n = 2;
		cp = c & 0x1f;
		min = 0x80;
	} else if (c >= 0xe0 && c <= 0xef) {
		n = 3;
		cp = c & 0x0f;
		min = 0x800;
	} else if (c >= 0xf0 && c <= 0xf4) {
		n = 4;
		cp = c & 0x07;
		min = 0x10000;
	} else {
		return 0;
	}
	if (s.size() - i < n)
		return 0;
	for (size_t k = 1; k < n; k++) {
		unsigned char cc = static_cast<unsigned char>(s[i + k]);
		if ((cc & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (cc & 0x3f);
	}
	if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return n;
}

} // namespace

bool utf8_valid(std::string_view s)
{
	uint32_t cp;
	for (size_t i = 0, n; i < s.size(); i += n)
		if ((n = utf8_sequence(s, i, cp)) == 0)
			return false;
	return true;
}

std::string utf8_prefix(std::string_view s, size_t max_chars)
{
	size_t chars = 0, i = 0;
	for (; i < s.size(); i++)
		if ((static_cast<unsigned char>(s[i]) & 0xc0) != 0x80 && chars++ == max_chars)
			break;
	return std::string(s.substr(0, i));
}

std::string escape_text(std::string_view s, size_t max_chars)
{
	static const char hex[] = "0123456789abcdef";
	std::string out;
	out.reserve(s.size() < max_chars ? s.size() + 8 : max_chars + 8);
	size_t chars = 0, i = 0;
	while (i < s.size() && chars++ < max_chars) {
		uint32_t cp = 0;
		size_t n = utf8_sequence(s, i, cp);
		// Control characters (C0, DEL, C1), the Unicode line and paragraph
		// separators, and every byte that is not part of well-formed UTF-8
		// are written as \xNN per byte: a log line stays one line of
		// valid UTF-8 that no terminal reads as a command.
		bool escape = n == 0 || cp < 0x20 || (cp >= 0x7f && cp <= 0x9f) || cp == 0x2028 ||
			      cp == 0x2029;
		if (n == 0)
			n = 1; // an invalid byte stands alone
		if (escape) {
			for (size_t k = 0; k < n; k++) {
				unsigned char c = static_cast<unsigned char>(s[i + k]);
				out += "\\x";
				out.push_back(hex[c >> 4]);
				out.push_back(hex[c & 15]);
			}
		} else if (cp == '"' || cp == '\\') {
			out.push_back('\\');
			out.push_back(static_cast<char>(cp));
		} else {
			out.append(s.data() + i, n);
		}
		i += n;
	}
	if (i < s.size())
		out += "...";
	return out;
}

} // namespace qc
