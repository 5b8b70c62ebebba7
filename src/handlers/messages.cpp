// send_message, load_messages, load_more_messages (PROTOCOL.md §5).
#include <algorithm>

#include "qryptchat/log.hpp"
#include "internal.hpp"

namespace qc {

namespace {

constexpr size_t kMaxClientMessageIdBytes = 64;
constexpr int64_t kDefaultPageSize = 50;

// A field given as null counts as absent, as QryptChat clients send both.
bool given(JsonRef j) { return j.present() && !j.is_null(); }

// The JSON of a message as pushed and acknowledged, serialised once for
// every frame that carries it.
std::string message_json(const MessageRow &m)
{
	std::string out;
	out.reserve(384 + (m.content ? m.content->size() : 0));
	JsonWriter w(out);
	write_message(w, m, false);
	return out;
}

FramePtr message_frame(const char *type, const std::string &rid, const std::string &json)
{
	return build_frame(
		type, rid,
		[&](JsonWriter &w) { w.begin_object().key("message").raw(json).end_object(); },
		json.size() + 16);
}

FramePtr message_frame(const char *type, const std::string &rid, const MessageRow &m)
{
	return message_frame(type, rid, message_json(m));
}

// The validated fields of send_message after conversationId and access.
Status parse_send(Ctx &ctx, const std::string &room, JsonRef p, NewMessage &m)
{
	JsonRef content = p.get("content");
	JsonRef copies = p.get("encryptedContents");
	if (given(content) == given(copies))
		return make_error(Err::InvalidData,
				  "exactly one of content and encryptedContents is required");
	const auto max_content = static_cast<size_t>(ctx.cfg.max_content_bytes);
	if (given(content)) {
		if (!content.is_string())
			return make_error(Err::InvalidData, "content must be a string");
		if (content.str().empty())
			return make_error(Err::InvalidData, "content must not be empty");
		if (content.str().size() > max_content)
			return make_error(Err::InvalidData, "content is longer than " +
								    std::to_string(max_content) + " bytes");
		m.content = std::string(content.str());
	} else {
		if (!copies.is_object() || copies.size() == 0)
			return make_error(Err::InvalidData,
					  "encryptedContents must be a non-empty object");
		for (auto item : copies.items()) {
			if (!item.is_string() || item.str().empty())
				return make_error(Err::InvalidData,
						  "encryptedContents values must be non-empty strings");
			if (item.str().size() > max_content)
				return make_error(Err::InvalidData,
						  "an encryptedContents value is longer than " +
							  std::to_string(max_content) + " bytes");
			std::string key(item.key());
			for (const auto &prev : m.copies)
				if (prev.first == key)
					return make_error(Err::InvalidData,
							  "encryptedContents has a duplicate key");
			m.copies.emplace_back(std::move(key), std::string(item.str()));
		}
	}

	JsonRef type = p.get("messageType");
	m.message_type = "text";
	if (given(type)) {
		if (!type.is_string() ||
		    (type.str() != "text" && type.str() != "image" && type.str() != "file"))
			return make_error(Err::InvalidData,
					  "messageType must be \"text\", \"image\" or \"file\"");
		m.message_type = std::string(type.str());
	}

	JsonRef meta = p.get("metadata");
	if (given(meta)) {
		if (!meta.is_object())
			return make_error(Err::InvalidData, "metadata must be an object");
		std::string text = meta.print();
		if (static_cast<int64_t>(text.size()) > ctx.cfg.max_metadata_bytes)
			return make_error(Err::InvalidData,
					  "metadata is larger than " +
						  std::to_string(ctx.cfg.max_metadata_bytes) + " bytes");
		m.metadata = std::move(text);
	}

	JsonRef cid = p.get("clientMessageId");
	if (given(cid)) {
		if (!cid.is_string() || cid.str().empty() ||
		    cid.str().size() > kMaxClientMessageIdBytes)
			return make_error(Err::InvalidData,
					  "clientMessageId must be a string of 1 to 64 bytes");
		m.client_message_id = std::string(cid.str());
	}

	JsonRef reply = p.get("replyToId");
	if (given(reply) && !is_id(reply))
		return make_error(Err::InvalidData, "replyToId must be a message id string");

	// Checks against the store come last.
	if (!m.copies.empty()) {
		auto ids = ctx.store.participant_ids(room);
		if (!ids)
			return store_error(ctx, ids.error());
		for (const auto &c : m.copies)
			if (std::find(ids->begin(), ids->end(), c.first) == ids->end())
				return make_error(Err::InvalidData,
						  "encryptedContents key is not a participant: " +
							  escape_text(c.first, 128));
	}
	if (given(reply)) {
		auto seq = ctx.store.message_seq(room, std::string(reply.str()));
		if (!seq)
			return store_error(ctx, seq.error());
		if (!*seq)
			return make_error(Err::MessageNotFound, "replyToId is not a message of this conversation");
		m.reply_to_id = std::string(reply.str());
	}
	return ok_status();
}

Status load_page(Ctx &ctx, Caller &c, const Request &r, bool before_required)
{
	auto room = conversation_access(ctx, c, r);
	if (!room)
		return room.error();
	JsonRef p = r.payload;
	PageQuery q;
	q.conversation_id = *room;
	q.viewer = c.user_id;
	q.limit = std::min(kDefaultPageSize, ctx.cfg.max_page_size);
	JsonRef limit = p.get("limit");
	if (given(limit)) {
		auto n = limit.integer();
		if (!n || *n < 1 || *n > ctx.cfg.max_page_size)
			return make_error(Err::InvalidData, "limit must be an integer from 1 to " +
								    std::to_string(ctx.cfg.max_page_size));
		q.limit = *n;
	}
	JsonRef before = p.get("beforeMessageId");
	JsonRef after = p.get("afterSeq");
	if (given(before) && !is_id(before))
		return make_error(Err::InvalidData, "beforeMessageId must be a message id string");
	if (before_required && !given(before))
		return make_error(Err::InvalidData, "beforeMessageId is required");
	if (given(after)) {
		auto n = after.integer();
		if (!n || *n < 0)
			return make_error(Err::InvalidData, "afterSeq must be an integer >= 0");
		q.after_seq = *n;
	}
	if (given(before) && given(after))
		return make_error(Err::InvalidData, "beforeMessageId and afterSeq cannot be combined");
	if (given(before)) {
		auto seq = ctx.store.message_seq(*room, std::string(before.str()));
		if (!seq)
			return store_error(ctx, seq.error());
		if (!*seq)
			return make_error(Err::MessageNotFound,
					  "beforeMessageId is not a message of this conversation");
		q.before_seq = **seq;
	}

	auto page = ctx.store.load_messages(q);
	if (!page)
		return store_error(ctx, page.error());
	// Loading marks everything up to the newest loaded message as read.
	// Best effort: a failure to move the mark does not withhold the page.
	if (!page->messages.empty()) {
		auto st = ctx.store.mark_read(*room, c.user_id, page->messages.back().seq);
		if (!st)
			store_error(ctx, st.error());
	}
	ctx.host.send(c.id, build_frame("messages_loaded", r.reply_id, [&](JsonWriter &w) {
		w.begin_object().field("conversationId", *room).key("messages").begin_array();
		for (const auto &m : page->messages)
			write_message(w, m, true);
		w.end_array().field("hasMore", page->has_more).end_object();
	}));
	return ok_status();
}

} // namespace

Status handle_send_message(Ctx &ctx, Caller &c, const Request &r)
{
	auto room = conversation_access(ctx, c, r);
	if (!room)
		return room.error();
	NewMessage m;
	if (auto st = parse_send(ctx, *room, r.payload, m); !st)
		return st;
	m.id = uuid_v7();
	m.conversation_id = *room;
	m.sender_id = c.user_id;
	m.now = now_ms();

	auto stored = ctx.store.insert_message(m);
	if (!stored)
		return store_error(ctx, stored.error());
	std::string json = message_json(stored->message);
	ctx.host.send(c.id, message_frame("message_sent", r.reply_id, json));
	if (!stored->created)
		return ok_status(); // an idempotent replay: broadcast once only
	ctx.stats.messages_stored++;

	// Serialised once for everyone; per-recipient copies are the exception:
	// one frame per recipient with a copy, and one with null for the rest.
	RoomEvent ev;
	std::string push_id = uuid_v4();
	if (m.copies.empty()) {
		ev.frame = message_frame("message_received", push_id, json);
	} else {
		MessageRow view = stored->message;
		view.content.reset();
		ev.frame = message_frame("message_received", push_id, view);
		for (auto &copy : m.copies) {
			if (!ctx.broker.online(copy.first))
				continue; // nobody of that user is connected anywhere
			view.content = copy.second;
			ev.per_user.emplace(copy.first,
					    message_frame("message_received", push_id, view));
		}
	}
	ctx.stats.deliveries += ctx.broker.publish(*room, ev);
	return ok_status();
}

Status handle_load_messages(Ctx &ctx, Caller &c, const Request &r)
{
	return load_page(ctx, c, r, false);
}

Status handle_load_more_messages(Ctx &ctx, Caller &c, const Request &r)
{
	return load_page(ctx, c, r, true);
}

} // namespace qc
