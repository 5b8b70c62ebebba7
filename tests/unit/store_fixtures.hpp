// Fixtures shared by the store tests (test_store for SQLite, test_store_pg
// for PostgreSQL): users, conversations and messages made through the
// Store interface, so that both backends are exercised alike.
#pragma once

#include <initializer_list>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "cmocka.hpp"
#include "qryptchat/store.hpp"

namespace qc::test {

inline void users(Store &s, std::initializer_list<const char *> ids)
{
	for (const char *id : ids)
		assert_true(s.upsert_user(id, ProfileHints{}).ok());
}

inline NewConversation group_of(const std::string &creator, std::vector<std::string> members)
{
	NewConversation c;
	c.id = uuid_v7();
	c.type = "group";
	c.name = std::string("team");
	c.creator = creator;
	c.members = std::move(members);
	c.now = now_ms();
	return c;
}

inline NewConversation direct_of(const std::string &creator, const std::string &other)
{
	NewConversation c;
	c.id = uuid_v7();
	c.type = "direct";
	c.creator = creator;
	c.members = {other};
	c.now = now_ms();
	return c;
}

inline std::string make_group(Store &s, const std::string &creator, std::vector<std::string> members)
{
	auto r = s.create_conversation(group_of(creator, std::move(members)));
	assert_true(r.ok());
	assert_true(r->created);
	return r->id;
}

inline NewMessage text_message(const std::string &conv, const std::string &from, const std::string &text,
			std::optional<std::string> cid = std::nullopt)
{
	NewMessage m;
	m.id = uuid_v7();
	m.conversation_id = conv;
	m.sender_id = from;
	m.message_type = "text";
	m.content = text;
	m.client_message_id = std::move(cid);
	m.now = now_ms();
	return m;
}

inline InsertedMessage send(Store &s, const std::string &conv, const std::string &from,
		     const std::string &text, std::optional<std::string> cid = std::nullopt)
{
	auto r = s.insert_message(text_message(conv, from, text, std::move(cid)));
	if (!r)
		fail_msg("insert: %s", r.error().message.c_str());
	return std::move(*r);
}

} // namespace qc::test
