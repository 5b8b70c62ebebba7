// util: the vocabulary every other module uses.  Error codes of the wire
// protocol, Result<T>, ids (UUID v4 and v7), clock and timestamp formatting,
// base64url, and parsing of durations, sizes and address lists.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace qc {

// The closed list of wire error codes (PROTOCOL.md §3).  `None` is success.
enum class Err {
	None = 0,
	InvalidMessage,
	UnknownMessageType,
	AuthRequired,
	MissingToken,
	InvalidToken,
	TokenExpired,
	InvalidData,
	AccessDenied,
	UserNotFound,
	MessageNotFound,
	RateLimited,
	DatabaseError,
	ServerError,
};
constexpr int kErrCount = static_cast<int>(Err::ServerError) + 1;

// "INVALID_MESSAGE", ...; "" for Err::None.
const char *err_code(Err e);

// A failure: a code and the human sentence sent as payload.error.
struct Error {
	Err code = Err::ServerError;
	std::string message;
};

// Either a value or an Error.  Errors are values on the hot path.
template <typename T> class Result
{
public:
	Result(T v) : v_(std::move(v)) {}
	Result(Error e) : v_(std::move(e)) {}
	bool ok() const { return v_.index() == 0; }
	explicit operator bool() const { return ok(); }
	T &value() { return std::get<0>(v_); }
	const T &value() const { return std::get<0>(v_); }
	T &operator*() { return value(); }
	T *operator->() { return &value(); }
	const Error &error() const { return std::get<1>(v_); }

private:
	std::variant<T, Error> v_;
};

// Result of an operation with no value.
struct Unit {};
using Status = Result<Unit>;
inline Status ok_status() { return Unit{}; }

inline Error make_error(Err code, std::string message) { return Error{code, std::move(message)}; }

// Wall clock in milliseconds since the Unix epoch.
int64_t now_ms();
// Monotonic clock in microseconds (for durations only).
int64_t mono_us();

// "2026-11-27T10:15:30.123Z" for a time in ms since the epoch (UTC).
std::string iso8601_ms(int64_t ms);

// Random identifiers: lowercase canonical UUID strings.  v4 is random; v7
// carries the millisecond time in its first 48 bits and is strictly
// increasing within this process (RFC 9562, method 1: a 12-bit counter in
// rand_a), so ids sort in creation order.
std::string uuid_v4();
std::string uuid_v7();
std::string uuid_v7_at(int64_t ms);

// Fills buf with len bytes from the kernel's CSPRNG.  false on failure.
bool random_bytes(void *buf, size_t len);

// base64url (RFC 4648 §5) without padding.  Decoding rejects padding, any
// character outside the alphabet and impossible lengths.
std::string base64url_encode(std::string_view bytes);
std::optional<std::string> base64url_decode(std::string_view text);

// Durations: "250ms", "10s", "5m", "2h", "30d"; a bare number is seconds.
// Returns milliseconds, or nullopt when malformed or negative.
std::optional<int64_t> parse_duration_ms(std::string_view text);
// "1500ms", "10s", "5m"... the shortest exact rendering of a duration.
std::string format_duration_ms(int64_t ms);
// Sizes: "4096", "64K", "4M" (binary multiples).  Returns bytes.
std::optional<int64_t> parse_size(std::string_view text);
std::string format_size(int64_t bytes);

// Splits on spaces, tabs and commas, dropping empty items.
std::vector<std::string> split_list(std::string_view text);
std::string trim(std::string_view s);
std::string lowercase(std::string_view s);

// An IPv4 or IPv6 address, or a CIDR range of either.  IPv4-mapped IPv6
// addresses (::ffff:a.b.c.d) match IPv4 ranges.
struct Cidr {
	int family = 0;          // AF_INET or AF_INET6
	unsigned char addr[16]{}; // network byte order; 4 bytes used for AF_INET
	int prefix = 0;          // bits
};
std::optional<Cidr> parse_cidr(std::string_view text);
std::string format_cidr(const Cidr &c);

// A parsed textual IP address, normalised (IPv4-mapped IPv6 becomes IPv4).
struct IpAddr {
	int family = 0;
	unsigned char addr[16]{};
};
std::optional<IpAddr> parse_ip(std::string_view text);
std::optional<IpAddr> ip_from_sockaddr(const sockaddr *sa);
std::string format_ip(const IpAddr &ip);
bool cidr_contains(const Cidr &c, const IpAddr &ip);
bool cidr_list_contains(const std::vector<Cidr> &list, const IpAddr &ip);

// Number of Unicode code points in UTF-8 text (invalid bytes count one each).
size_t utf8_length(std::string_view s);

// Whether s is well-formed UTF-8 (RFC 3629: shortest forms only, no
// UTF-16 surrogates, nothing above U+10FFFF).
bool utf8_valid(std::string_view s);

// The first max_chars code points of UTF-8 text (never cut inside a
// sequence).
std::string utf8_prefix(std::string_view s, size_t max_chars);

// Escapes text for a log line or an error message: quotes and backslashes
// become \" and \\; control characters (C0, DEL and C1), U+2028, U+2029
// and bytes that are not well-formed UTF-8 become \xNN for each byte.  The
// result is valid UTF-8 without a control character, cut after max_chars
// code points (then "..." is appended), never inside a UTF-8 sequence.
std::string escape_text(std::string_view s, size_t max_chars = 256);

} // namespace qc
