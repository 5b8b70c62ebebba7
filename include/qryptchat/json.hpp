// json: the one module that touches cJSON.  Parsing gives an owning handle
// and typed lookups; output is written by JsonWriter straight into a
// string (no intermediate tree), which is what the per-message path needs.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

struct cJSON;

namespace qc {

struct JsonDeleter {
	void operator()(cJSON *j) const noexcept;
};
// An owned parsed document.
using JsonDoc = std::unique_ptr<cJSON, JsonDeleter>;

// Parses exactly `text` (no NUL needed); nullptr if it is not JSON.
// Nesting is limited by cJSON (1000 levels).  Strings keep a "\u0000" as
// a NUL byte; a member name holding one is refused (nullptr), as are lone
// UTF-16 surrogate escapes ("\ud800") and "\u" escapes without four hex
// digits, so every string is valid UTF-8 when the text is.
JsonDoc json_parse(std::string_view text);

// Non-owning view of one value inside a document.
class JsonRef
{
public:
	JsonRef() = default;
	explicit JsonRef(const cJSON *j) : j_(j) {}
	bool present() const { return j_ != nullptr; }
	bool is_null() const;
	bool is_string() const;
	bool is_number() const;
	bool is_bool() const;
	bool is_object() const;
	bool is_array() const;
	// Member of an object (absent → an empty ref).
	JsonRef get(const char *name) const;
	// The string value (only when is_string()), NUL bytes included.
	std::string_view str() const;
	double num() const;
	bool boolean() const;
	// Integral value when the number is an integer with |n| < 2^53.
	std::optional<int64_t> integer() const;
	// Elements of an array, or members of an object.
	std::vector<JsonRef> items() const;
	// Member name (for items() of an object).
	std::string_view key() const;
	size_t size() const;
	// Compact JSON text of this value.
	std::string print() const;
	const cJSON *raw() const { return j_; }

private:
	const cJSON *j_ = nullptr;
};

inline JsonRef json_root(const JsonDoc &d) { return JsonRef(d.get()); }

// Appends JSON text to a string.  The caller produces a well-formed
// structure (keys inside objects, commas are automatic).
class JsonWriter
{
public:
	explicit JsonWriter(std::string &out) : out_(out) {}
	JsonWriter &begin_object();
	JsonWriter &end_object();
	JsonWriter &begin_array();
	JsonWriter &end_array();
	JsonWriter &key(std::string_view k);
	JsonWriter &value(std::string_view s);
	JsonWriter &value(const char *s) { return value(std::string_view(s)); }
	JsonWriter &value(const std::string &s) { return value(std::string_view(s)); }
	JsonWriter &value(int64_t n);
	JsonWriter &value(int n) { return value(static_cast<int64_t>(n)); }
	JsonWriter &value(bool b);
	JsonWriter &null();
	// A string, or null when absent.
	JsonWriter &value(const std::optional<std::string> &s);
	// Inserts already-serialised JSON (e.g. stored metadata) verbatim.
	JsonWriter &raw(std::string_view json);
	// key + value shorthands.
	template <typename T> JsonWriter &field(std::string_view k, const T &v)
	{
		key(k);
		return value(v);
	}
	JsonWriter &field_null(std::string_view k) { return key(k).null(); }

private:
	void sep();
	std::string &out_;
	bool need_comma_ = false;
};

// Appends s as a JSON string literal (quotes included).
void json_escape_to(std::string &out, std::string_view s);

} // namespace qc
