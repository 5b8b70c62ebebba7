// Fuzz target: inbound text frames, from the envelope parser through every
// request handler's field rules, against an in-memory SQLite store.
//
// An input is up to kMaxFrames text frames separated by the byte 0x1e
// (a raw 0x1e is never valid JSON, so nothing is lost by splitting on
// it).  The first byte of a frame picks the socket it arrives on and is
// consumed: 'b' user b's socket, 'u' a socket that has not authenticated,
// anything else user a's socket (consumed only when it is 'a').  The text
// "$G" is replaced by the id of a group conversation of a, b and c, "$D"
// by the direct conversation of a and b, so that seeds reach past the
// access checks.  Each input starts from the same fresh world.  A frame
// that is not valid UTF-8 is skipped: libwebsockets closes the socket with
// 1007 before the server would see it.
//
// Checked for every input: each frame the server sends is valid UTF-8 and
// one JSON object with string type, requestId and timestamp; closing every
// socket leaves the room table empty.
#include <cstdint>
#include <cstdlib>
#include <map>
#include <string>

#include "fuzz.hpp"
#include "qryptchat/handlers.hpp"
#include "qryptchat/log.hpp"
#include "qryptchat/store_sqlite.hpp"

using namespace qc;

namespace {

constexpr size_t kMaxFrames = 8;

// The HMAC key of the tokens in the seed corpus (auth requests).
const char kSecret[] = "fuzz-request-secret-0123456789abcdef";

struct Sink final : public Host, public DeliverySink {
	size_t frames = 0;
	void send(SessionId s, const FramePtr &f) override { deliver(s, f); }
	void deliver(SessionId, const FramePtr &f) override
	{
		frames++;
		std::string_view text(f->data(), f->size());
		if (!utf8_valid(text))
			abort();
		JsonDoc d = json_parse(text);
		JsonRef root = json_root(d);
		if (!root.is_object() || !root.get("type").is_string() ||
		    !root.get("requestId").is_string() || !root.get("timestamp").is_string())
			abort();
	}
	void close(SessionId, int code, const std::string &) override
	{
		if (code < 1000 || code > 4999)
			abort();
	}
	void token_changed(SessionId) override {}
	void typing_changed() override {}
};

struct World {
	std::unique_ptr<Store> store;
	RoomTable rooms;
	Sink sink;
	PresencePusher presence;
	LocalBroker broker{rooms, sink, presence};
	Stats stats;
	Config cfg = config_defaults();
	AuthParams auth;
	std::unique_ptr<Ctx> ctx;
	Caller a, b, u;
	std::string group, direct;

	World()
	{
		SqliteOptions o;
		o.path = ":memory:";
		auto s = open_sqlite_store(o);
		if (!s)
			abort();
		store = std::move(*s);
		auth.secret = kSecret;
		auth.require_exp = false;
		ctx = std::make_unique<Ctx>(Ctx{*store, rooms, broker, stats, cfg, auth, sink});
		presence.ctx = ctx.get();
		a.id = 1;
		b.id = 2;
		u.id = 3;
		Claims ca, cb;
		ca.sub = "a";
		cb.sub = "b";
		handle_upgrade_auth(*ctx, a, ca);
		handle_upgrade_auth(*ctx, b, cb);
		for (const char *id : {"c", "d"})
			if (!store->upsert_user(id, ProfileHints{}))
				abort();
		group = conversation("group", {"b", "c"});
		direct = conversation("direct", {"b"});
	}

	std::string conversation(const char *type, std::vector<std::string> members)
	{
		NewConversation n;
		n.id = uuid_v7();
		n.type = type;
		n.creator = "a";
		n.members = std::move(members);
		n.now = now_ms();
		auto c = store->create_conversation(n);
		if (!c)
			abort();
		return c->id;
	}
};

void replace_all(std::string &s, const std::string &from, const std::string &to)
{
	for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size()))
		s.replace(at, from.size(), to);
}

} // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***)
{
	g_log_level = LogLevel::Error;
	return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	World w;
	std::string_view in(reinterpret_cast<const char *>(data), size);
	for (size_t n = 0; n < kMaxFrames && !in.empty(); n++) {
		size_t end = in.find('\x1e');
		std::string frame(in.substr(0, end));
		in = end == std::string_view::npos ? std::string_view() : in.substr(end + 1);
		Caller *c = &w.a;
		if (!frame.empty() && (frame[0] == 'a' || frame[0] == 'b' || frame[0] == 'u')) {
			c = frame[0] == 'b' ? &w.b : frame[0] == 'u' ? &w.u : &w.a;
			frame.erase(0, 1);
		}
		replace_all(frame, "$G", w.group);
		replace_all(frame, "$D", w.direct);
		if (c->closing || !utf8_valid(frame))
			continue;
		handle_text(*w.ctx, *c, frame);
	}
	handle_typing_expiry(*w.ctx, INT64_MAX / 2);
	for (Caller *c : {&w.a, &w.b, &w.u})
		handle_close(*w.ctx, *c);
	if (w.rooms.room_count() != 0 || w.rooms.joined_session_count() != 0)
		abort();
	return 0;
}
