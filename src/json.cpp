#include "qryptchat/json.hpp"

#include <cJSON.h>

#include <cmath>
#include <cstdio>

namespace qc {

void JsonDeleter::operator()(cJSON *j) const noexcept { cJSON_Delete(j); }

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
	char *p = cJSON_PrintUnformatted(j_);
	if (!p)
		return "null";
	std::string s(p);
	cJSON_free(p);
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
