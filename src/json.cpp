#include "qryptchat/json.hpp"

#include <cJSON.h>

#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>

namespace qc {

void JsonDeleter::operator()(cJSON *j) const noexcept { cJSON_Delete(j); }

namespace {

// cJSON keeps each string NUL-terminated and records no length, so a
// string holding "\u0000" would read as cut at the NUL.  After a parse
// that may hold one, the text is walked again beside the tree: the
// decoded length of each string with a NUL in it is recorded in the
// string's valueint (which cJSON leaves at 0 for strings) and read back
// by JsonRef::str().  Member names are looked up as C strings, so a name
// with a NUL ("type\u0000x" would pass for "type") makes the text invalid.
//
// cJSON reads a "\u" escape whose four characters are not all hex digits
// as U+0000 ("\uzzzz" is a NUL to it); such an escape is not JSON and makes
// the text invalid here, which also keeps this walk in step with cJSON's.

int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

// The four hex digits at p (the caller checked there are four
// characters), or -1 when they are not four hex digits.
long hex4(const char *p)
{
	long v = 0;
	for (int i = 0; i < 4; i++) {
		int d = hex_digit(p[i]);
		if (d < 0)
			return -1;
		v = v * 16 + d;
	}
	return v;
}

struct Literal {
	size_t len = 0;   // decoded bytes, as cJSON decodes them
	bool nul = false; // a NUL among them
	bool ok = false;
};

// The next string literal at or after p, in text cJSON accepted; p ends
// past its closing quote.  Between literals there are only punctuation,
// numbers, true/false/null and whitespace, none of which holds a quote.
Literal next_literal(const char *&p, const char *end)
{
	Literal l;
	while (p < end && *p != '"')
		p++;
	if (p == end)
		return l;
	for (p++; p < end && *p != '"'; p++) {
		if (*p != '\\') {
			l.nul |= *p == '\0';
			l.len++;
			continue;
		}
		if (end - p < 2)
			return l;
		if (p[1] != 'u') {
			l.len++;
			p++;
			continue;
		}
		if (end - p < 6)
			return l;
		long cp = hex4(p + 2);
		if (cp < 0)
			return l;
		if (cp >= 0xd800 && cp <= 0xdbff) {
			// A surrogate pair (cJSON refuses lone surrogates).
			if (end - p < 12 || p[6] != '\\' || p[7] != 'u' || hex4(p + 8) < 0)
				return l;
			l.len += 4;
			p += 11;
		} else {
			l.nul |= cp == 0;
			l.len += cp < 0x80 ? 1 : cp < 0x800 ? 2 : 3;
			p += 5;
		}
	}
	if (p == end)
		return l;
	p++;
	l.ok = true;
	return l;
}

// Records the lengths of the strings of `item` and its siblings, in
// document order; false when a member name holds a NUL.
bool record_lengths(cJSON *item, const char *&p, const char *end)
{
	for (; item; item = item->next) {
		if (item->string) {
			Literal name = next_literal(p, end);
			if (!name.ok || name.nul)
				return false;
		}
		if (cJSON_IsString(item)) {
			Literal v = next_literal(p, end);
			if (!v.ok || v.len > INT_MAX)
				return false;
			if (v.nul)
				item->valueint = static_cast<int>(v.len);
		} else if ((cJSON_IsArray(item) || cJSON_IsObject(item)) &&
			   !record_lengths(item->child, p, end)) {
			return false;
		}
	}
	return true;
}

// Whether text may hold a NUL inside a string, or a "\u" escape that is
// not one (false positives cost a walk, nothing else).
bool needs_walk(std::string_view text)
{
	if (memchr(text.data(), '\0', text.size()))
		return true;
	for (size_t at = text.find("\\u"); at != std::string_view::npos; at = text.find("\\u", at + 2))
		if (text.size() - at < 6 || hex4(text.data() + at + 2) <= 0)
			return true;
	return false;
}

void print_to(std::string &out, const cJSON *j)
{
	if (cJSON_IsString(j)) {
		json_escape_to(out, JsonRef(j).str());
	} else if (cJSON_IsArray(j) || cJSON_IsObject(j)) {
		bool object = cJSON_IsObject(j);
		out.push_back(object ? '{' : '[');
		for (const cJSON *c = j->child; c; c = c->next) {
			if (c != j->child)
				out.push_back(',');
			if (object) {
				json_escape_to(out, c->string ? c->string : "");
				out.push_back(':');
			}
			print_to(out, c);
		}
		out.push_back(object ? '}' : ']');
	} else {
		// Numbers, booleans and null as cJSON prints them.
		char *p = cJSON_PrintUnformatted(j);
		out += p ? p : "null";
		cJSON_free(p);
	}
}

} // namespace

JsonDoc json_parse(std::string_view text)
{
	const char *end = nullptr;
	JsonDoc doc(cJSON_ParseWithLengthOpts(text.data(), text.size(), &end, false));
	if (!doc || !end)
		return nullptr;
	// One value only: anything but whitespace after it is an error.
	for (const char *p = end; p < text.data() + text.size(); p++)
		if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n' && *p != '\0')
			return nullptr;
	if (needs_walk(text)) {
		const char *p = text.data();
		if (!record_lengths(doc.get(), p, end))
			return nullptr;
	}
	return doc;
}

bool JsonRef::is_null() const { return j_ && cJSON_IsNull(j_); }
bool JsonRef::is_string() const { return j_ && cJSON_IsString(j_); }
bool JsonRef::is_number() const { return j_ && cJSON_IsNumber(j_); }
bool JsonRef::is_bool() const { return j_ && cJSON_IsBool(j_); }
bool JsonRef::is_object() const { return j_ && cJSON_IsObject(j_); }
bool JsonRef::is_array() const { return j_ && cJSON_IsArray(j_); }

JsonRef JsonRef::get(const char *name) const
{
	if (!is_object())
		return JsonRef();
	// Case-sensitive: "type" and "Type" are different members.
	return JsonRef(cJSON_GetObjectItemCaseSensitive(j_, name));
}

std::string_view JsonRef::str() const
{
	if (!is_string() || !j_->valuestring)
		return {};
	// A string with a NUL in it has its length recorded (see json_parse).
	if (j_->valueint > 0)
		return std::string_view(j_->valuestring, static_cast<size_t>(j_->valueint));
	return j_->valuestring;
}

double JsonRef::num() const { return is_number() ? j_->valuedouble : 0.0; }

bool JsonRef::boolean() const { return j_ && cJSON_IsTrue(j_); }

std::optional<int64_t> JsonRef::integer() const
{
	if (!is_number())
		return std::nullopt;
	double d = j_->valuedouble;
	// Only the safe integers: beyond 2^53 - 1 a double no longer tells
	// neighbouring integers apart.
	if (!std::isfinite(d) || std::floor(d) != d || d >= 9007199254740992.0 ||
	    d <= -9007199254740992.0)
		return std::nullopt;
	return static_cast<int64_t>(d);
}

std::vector<JsonRef> JsonRef::items() const
{
	std::vector<JsonRef> out;
	if (!is_array() && !is_object())
		return out;
	for (const cJSON *c = j_->child; c; c = c->next)
		out.emplace_back(c);
	return out;
}

std::string_view JsonRef::key() const
{
	if (!j_ || !j_->string)
		return {};
	return j_->string;
}

size_t JsonRef::size() const
{
	if (!is_array() && !is_object())
		return 0;
	size_t n = 0;
	for (const cJSON *c = j_->child; c; c = c->next)
		n++;
	return n;
}

std::string JsonRef::print() const
{
	if (!j_)
		return "null";
	std::string s;
	print_to(s, j_);
	return s;
}

void json_escape_to(std::string &out, std::string_view s)
{
	static const char hex[] = "0123456789abcdef";
	out.push_back('"');
	size_t run = 0; // start of the pending run of bytes that need no escape
	for (size_t i = 0; i < s.size(); i++) {
		unsigned char c = static_cast<unsigned char>(s[i]);
		if (c >= 0x20 && c != '"' && c != '\\')
			continue;
		out.append(s.data() + run, i - run);
		run = i + 1;
		switch (c) {
		case '"': out += "\\\""; break;
		case '\\': out += "\\\\"; break;
		case '\n': out += "\\n"; break;
		case '\r': out += "\\r"; break;
		case '\t': out += "\\t"; break;
		case '\b': out += "\\b"; break;
		case '\f': out += "\\f"; break;
		default:
			out += "\\u00";
			out.push_back(hex[c >> 4]);
			out.push_back(hex[c & 15]);
		}
	}
	out.append(s.data() + run, s.size() - run);
	out.push_back('"');
}

void JsonWriter::sep()
{
	if (need_comma_)
		out_.push_back(',');
}

JsonWriter &JsonWriter::begin_object()
{
	sep();
	out_.push_back('{');
	need_comma_ = false;
	return *this;
}

JsonWriter &JsonWriter::end_object()
{
	out_.push_back('}');
	need_comma_ = true;
	return *this;
}

JsonWriter &JsonWriter::begin_array()
{
	sep();
	out_.push_back('[');
	need_comma_ = false;
	return *this;
}

JsonWriter &JsonWriter::end_array()
{
	out_.push_back(']');
	need_comma_ = true;
	return *this;
}

JsonWriter &JsonWriter::key(std::string_view k)
{
	sep();
	json_escape_to(out_, k);
	out_.push_back(':');
	need_comma_ = false;
	return *this;
}

JsonWriter &JsonWriter::value(std::string_view s)
{
	sep();
	json_escape_to(out_, s);
	need_comma_ = true;
	return *this;
}

JsonWriter &JsonWriter::value(int64_t n)
{
	sep();
	char buf[24];
	int len = snprintf(buf, sizeof buf, "%lld", static_cast<long long>(n));
	out_.append(buf, static_cast<size_t>(len));
	need_comma_ = true;
	return *this;
}

JsonWriter &JsonWriter::value(bool b)
{
	sep();
	out_ += b ? "true" : "false";
	need_comma_ = true;
	return *this;
}

JsonWriter &JsonWriter::null()
{
	sep();
	out_ += "null";
	need_comma_ = true;
	return *this;
}

JsonWriter &JsonWriter::value(const std::optional<std::string> &s)
{
	return s ? value(std::string_view(*s)) : null();
}

JsonWriter &JsonWriter::raw(std::string_view json)
{
	sep();
	out_.append(json);
	need_comma_ = true;
	return *this;
}

} // namespace qc
