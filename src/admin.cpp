#include "qryptchat/admin.hpp"

#include <cstdio>

#include "qryptchat/json.hpp"

namespace qc {

namespace {

constexpr int kOk = 0, kFailed = 1, kUsage = 2, kNotFound = 3;

const char kAdminUsage[] =
	"admin subcommands (global options such as -c and -D come first):\n"
	"  user list|show ID|add ID [--username U] [--name N] [--email E]|disable ID|enable ID\n"
	"  conversation list [--user ID]|show ID|add-member CONV USER|remove-member CONV USER\n"
	"  backup FILE        a consistent copy of the live database in a new file\n"
	"  restore FILE       replace the database by a backup (server stopped)\n"
	"  check              integrity and foreign-key check, schema version, counts\n"
	"  prune --older-than DURATION   delete messages older than that (e.g. 365d)\n"
	"  --json             machine-readable output (list, show, check, prune)\n";

int usage(const std::string &msg)
{
	fprintf(stderr, "qryptchatd: %s\n%s", msg.c_str(), kAdminUsage);
	return kUsage;
}

int failed(const Error &e)
{
	fprintf(stderr, "qryptchatd: %s\n", e.message.c_str());
	return e.code == Err::UserNotFound || e.code == Err::AccessDenied ? kNotFound
	       : e.code == Err::InvalidData				  ? kUsage
									  : kFailed;
}

std::string when(int64_t ms) { return ms ? iso8601_ms(ms) : "-"; }

void print_json(const std::string &s) { printf("%s\n", s.c_str()); }

void user_json(JsonWriter &w, const UserInfo &u)
{
	w.begin_object()
		.field("id", u.user.id)
		.field("username", u.user.username)
		.field("display_name", u.user.display_name)
		.field("email", u.user.email)
		.field("avatar_url", u.user.avatar_url)
		.field("disabled", u.user.disabled)
		.field("conversations", u.conversations)
		.field("created_at", iso8601_ms(u.created_at))
		.field("updated_at", iso8601_ms(u.updated_at))
		.end_object();
}

void conversation_json(JsonWriter &w, const ConversationInfo &c, bool members)
{
	w.begin_object()
		.field("id", c.id)
		.field("type", c.type)
		.field("name", c.name)
		.field("created_by", c.created_by)
		.field("created_at", iso8601_ms(c.created_at))
		.field("updated_at", iso8601_ms(c.updated_at))
		.field("participants", c.participants)
		.field("messages", c.messages)
		.field("last_seq", c.last_seq);
	if (members) {
		w.key("members").begin_array();
		for (const auto &m : c.members) {
			w.begin_object()
				.field("user_id", m.user_id)
				.field("username", m.username)
				.field("role", m.role)
				.field("joined_at", iso8601_ms(m.joined_at));
			w.key("left_at");
			if (m.left_at)
				w.value(iso8601_ms(*m.left_at));
			else
				w.null();
			w.end_object();
		}
		w.end_array();
	}
	w.end_object();
}

// Options after the positional arguments: "--name value" pairs and flags.
struct Opts {
	std::vector<std::string> pos;
	std::vector<std::pair<std::string, std::string>> kv;
	bool json = false;
	std::string error;
	const std::string *get(const std::string &k) const
	{
		for (const auto &p : kv)
			if (p.first == k)
				return &p.second;
		return nullptr;
	}
};

Opts parse_opts(const std::vector<std::string> &args, size_t from, std::initializer_list<const char *> valued)
{
	Opts o;
	for (size_t i = from; i < args.size(); i++) {
		const std::string &a = args[i];
		if (a == "--json") {
			o.json = true;
		} else if (a.rfind("--", 0) == 0) {
			bool known = false;
			for (const char *v : valued)
				known = known || a == v;
			if (!known) {
				o.error = "unknown option " + a;
				return o;
			}
			if (i + 1 >= args.size()) {
				o.error = a + " needs a value";
				return o;
			}
			o.kv.emplace_back(a, args[++i]);
		} else {
			o.pos.push_back(a);
		}
	}
	return o;
}

int cmd_user(AdminStore &db, const std::vector<std::string> &args)
{
	const std::string verb = args.size() > 1 ? args[1] : "";
	Opts o = parse_opts(args, 2, {"--username", "--name", "--email"});
	if (!o.error.empty())
		return usage(o.error);
	if (verb == "list" && o.pos.empty()) {
		auto users = db.users();
		if (!users)
			return failed(users.error());
		if (o.json) {
			std::string s;
			JsonWriter w(s);
			w.begin_array();
			for (const auto &u : *users)
				user_json(w, u);
			w.end_array();
			print_json(s);
			return kOk;
		}
		printf("%-24s %-16s %-24s %-8s %s\n", "ID", "USERNAME", "NAME", "STATE", "CONVERSATIONS");
		for (const auto &u : *users)
			printf("%-24s %-16s %-24s %-8s %lld\n", u.user.id.c_str(), u.user.username.c_str(),
			       u.user.display_name.c_str(), u.user.disabled ? "disabled" : "active",
			       static_cast<long long>(u.conversations));
		return kOk;
	}
	if (o.pos.size() != 1)
		return usage("user " + verb + ": expected one user id");
	const std::string &id = o.pos[0];
	if (verb == "show") {
		auto u = db.user(id);
		if (!u)
			return failed(u.error());
		if (!*u)
			return failed(make_error(Err::UserNotFound, "no user " + id));
		if (o.json) {
			std::string s;
			JsonWriter w(s);
			user_json(w, **u);
			print_json(s);
			return kOk;
		}
		const UserInfo &i = **u;
		printf("id:            %s\nusername:      %s\ndisplay name:  %s\nemail:         %s\n"
		       "state:         %s\nconversations: %lld\ncreated:       %s\nupdated:       %s\n",
		       i.user.id.c_str(), i.user.username.c_str(), i.user.display_name.c_str(),
		       i.user.email.value_or("-").c_str(), i.user.disabled ? "disabled" : "active",
		       static_cast<long long>(i.conversations), when(i.created_at).c_str(),
		       when(i.updated_at).c_str());
		return kOk;
	}
	if (verb == "add") {
		if (id.empty() || id.size() > kMaxSubBytes)
			return usage("a user id is 1 to 128 bytes");
		ProfileHints h;
		if (auto v = o.get("--username"))
			h.username = *v;
		if (auto v = o.get("--name"))
			h.display_name = *v;
		if (auto v = o.get("--email"))
			h.email = *v;
		auto r = db.add_user(id, h);
		if (!r)
			return failed(r.error());
		if (!*r) {
			fprintf(stderr, "qryptchatd: user %s exists already (unchanged)\n", id.c_str());
			return kFailed;
		}
		printf("added user %s\n", id.c_str());
		return kOk;
	}
	if (verb == "disable" || verb == "enable") {
		auto r = db.set_disabled(id, verb == "disable");
		if (!r)
			return failed(r.error());
		if (!*r)
			return failed(make_error(Err::UserNotFound, "no user " + id));
		printf("%s user %s%s\n", verb == "disable" ? "disabled" : "enabled", id.c_str(),
		       verb == "disable" ? " (a running server closes its connections within a second)" : "");
		return kOk;
	}
	return usage("unknown user subcommand '" + verb + "'");
}

int cmd_conversation(AdminStore &db, const std::vector<std::string> &args)
{
	const std::string verb = args.size() > 1 ? args[1] : "";
	Opts o = parse_opts(args, 2, {"--user"});
	if (!o.error.empty())
		return usage(o.error);
	if (verb == "list" && o.pos.empty()) {
		std::optional<std::string> member;
		if (auto v = o.get("--user"))
			member = *v;
		auto list = db.conversations(member);
		if (!list)
			return failed(list.error());
		if (o.json) {
			std::string s;
			JsonWriter w(s);
			w.begin_array();
			for (const auto &c : *list)
				conversation_json(w, c, false);
			w.end_array();
			print_json(s);
			return kOk;
		}
		printf("%-36s %-6s %-20s %-12s %-8s %s\n", "ID", "TYPE", "NAME", "PARTICIPANTS", "MESSAGES",
		       "LAST ACTIVITY");
		for (const auto &c : *list)
			printf("%-36s %-6s %-20s %-12lld %-8lld %s\n", c.id.c_str(), c.type.c_str(),
			       c.name.value_or("-").c_str(), static_cast<long long>(c.participants),
			       static_cast<long long>(c.messages), when(c.updated_at).c_str());
		return kOk;
	}
	if (verb == "show" && o.pos.size() == 1) {
		auto c = db.conversation(o.pos[0]);
		if (!c)
			return failed(c.error());
		if (!*c)
			return failed(make_error(Err::AccessDenied, "no conversation " + o.pos[0]));
		if (o.json) {
			std::string s;
			JsonWriter w(s);
			conversation_json(w, **c, true);
			print_json(s);
			return kOk;
		}
		const ConversationInfo &i = **c;
		printf("id:           %s\ntype:         %s\nname:         %s\ncreated by:   %s\n"
		       "created:      %s\nlast activity: %s\nmessages:     %lld (last seq %lld)\nmembers:\n",
		       i.id.c_str(), i.type.c_str(), i.name.value_or("-").c_str(), i.created_by.c_str(),
		       when(i.created_at).c_str(), when(i.updated_at).c_str(),
		       static_cast<long long>(i.messages), static_cast<long long>(i.last_seq));
		for (const auto &m : i.members)
			printf("  %-24s %-16s %-6s joined %s%s%s\n", m.user_id.c_str(), m.username.c_str(),
			       m.role.c_str(), when(m.joined_at).c_str(), m.left_at ? ", left " : "",
			       m.left_at ? when(*m.left_at).c_str() : "");
		return kOk;
	}
	if ((verb == "add-member" || verb == "remove-member") && o.pos.size() == 2) {
		Status st = verb == "add-member" ? db.add_member(o.pos[0], o.pos[1])
						 : db.remove_member(o.pos[0], o.pos[1]);
		if (!st)
			return failed(st.error());
		printf("%s %s %s %s\n", verb == "add-member" ? "added" : "removed", o.pos[1].c_str(),
		       verb == "add-member" ? "to" : "from", o.pos[0].c_str());
		return kOk;
	}
	return usage("conversation " + verb + ": wrong arguments");
}

int cmd_check(AdminStore &db, bool json)
{
	auto r = db.check();
	if (!r)
		return failed(r.error());
	bool ok = r->problems.empty();
	if (json) {
		std::string s;
		JsonWriter w(s);
		w.begin_object().field("ok", ok).field("schema_version", static_cast<int64_t>(r->schema_version));
		w.field("users", r->users).field("conversations", r->conversations).field("messages", r->messages);
		w.field("bytes", r->bytes).key("problems").begin_array();
		for (const auto &p : r->problems)
			w.value(p);
		w.end_array().end_object();
		print_json(s);
	} else {
		printf("schema version %d; %lld users, %lld conversations, %lld messages, %lld bytes\n",
		       r->schema_version, static_cast<long long>(r->users),
		       static_cast<long long>(r->conversations), static_cast<long long>(r->messages),
		       static_cast<long long>(r->bytes));
		for (const auto &p : r->problems)
			printf("problem: %s\n", p.c_str());
		printf("%s\n", ok ? "ok" : "the database has problems (restore a backup)");
	}
	return ok ? kOk : kFailed;
}

} // namespace

bool is_admin_command(const std::string &name)
{
	return name == "user" || name == "conversation" || name == "backup" || name == "restore" ||
	       name == "check" || name == "prune";
}

int admin_main(const Config &cfg, const std::vector<std::string> &args)
{
	const std::string &cmd = args.at(0);
	// PostgreSQL has its own tools for all of this (psql, pg_dump,
	// pg_restore), which its operators already use.
	if (cfg.store != "sqlite") {
		fprintf(stderr,
			"qryptchatd: %s works on the SQLite store; with store %s use PostgreSQL's tools "
			"(psql, pg_dump, pg_restore), see qryptchatd(8)\n",
			cmd.c_str(), cfg.store.c_str());
		return kUsage;
	}
	if (cmd == "restore") {
		if (args.size() != 2)
			return usage("restore needs the backup file");
		Status st = sqlite_restore(cfg.database, args[1]);
		if (!st)
			return failed(st.error());
		printf("restored %s from %s\n", cfg.database.c_str(), args[1].c_str());
		return kOk;
	}
	auto opened = open_sqlite_admin(cfg.database);
	if (!opened)
		return failed(opened.error());
	AdminStore &db = **opened;
	if (cmd == "user")
		return cmd_user(db, args);
	if (cmd == "conversation")
		return cmd_conversation(db, args);
	Opts o = parse_opts(args, 1, {"--older-than"});
	if (!o.error.empty())
		return usage(o.error);
	if (cmd == "check" && o.pos.empty())
		return cmd_check(db, o.json);
	if (cmd == "backup" && o.pos.size() == 1) {
		Status st = db.backup(o.pos[0]);
		if (!st)
			return failed(st.error());
		printf("backed up %s to %s\n", cfg.database.c_str(), o.pos[0].c_str());
		return kOk;
	}
	if (cmd == "prune" && o.pos.empty()) {
		const std::string *age = o.get("--older-than");
		auto ms = age ? parse_duration_ms(*age) : std::nullopt;
		if (!ms || *ms <= 0)
			return usage("prune needs --older-than DURATION (e.g. 30d, 12h)");
		auto n = db.prune(now_ms() - *ms);
		if (!n)
			return failed(n.error());
		if (o.json)
			printf("{\"deleted\":%lld}\n", static_cast<long long>(*n));
		else
			printf("deleted %lld messages older than %s\n", static_cast<long long>(*n), age->c_str());
		return kOk;
	}
	return usage(cmd + ": wrong arguments");
}

} // namespace qc
