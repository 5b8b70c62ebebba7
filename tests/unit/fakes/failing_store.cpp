#include "failing_store.hpp"

namespace qc::test {

Result<User> FailingStore::upsert_user(const std::string &id, const ProfileHints &h)
{
	if (tick())
		return fault();
	return inner_.upsert_user(id, h);
}

Result<std::optional<User>> FailingStore::get_user(const std::string &id)
{
	if (tick())
		return fault();
	return inner_.get_user(id);
}

Result<std::optional<std::string>> FailingStore::first_unknown_user(const std::vector<std::string> &ids)
{
	if (tick())
		return fault();
	return inner_.first_unknown_user(ids);
}

Result<bool> FailingStore::is_participant(const std::string &c, const std::string &u)
{
	if (tick())
		return fault();
	return inner_.is_participant(c, u);
}

Result<std::vector<std::string>> FailingStore::participant_ids(const std::string &c)
{
	if (tick())
		return fault();
	return inner_.participant_ids(c);
}

Result<std::vector<std::string>> FailingStore::conversation_ids_of(const std::string &u)
{
	if (tick())
		return fault();
	return inner_.conversation_ids_of(u);
}

Result<CreatedConversation> FailingStore::create_conversation(const NewConversation &c)
{
	if (tick())
		return fault();
	return inner_.create_conversation(c);
}

Result<ConversationView> FailingStore::conversation(const std::string &id, const std::string &viewer)
{
	if (tick())
		return fault();
	return inner_.conversation(id, viewer);
}

Result<std::vector<ConversationView>> FailingStore::conversations(const std::string &viewer)
{
	if (tick())
		return fault();
	return inner_.conversations(viewer);
}

Result<InsertedMessage> FailingStore::insert_message(const NewMessage &m)
{
	if (tick())
		return fault();
	return inner_.insert_message(m);
}

Result<std::optional<int64_t>> FailingStore::message_seq(const std::string &c, const std::string &id)
{
	if (tick())
		return fault();
	return inner_.message_seq(c, id);
}

Result<Page> FailingStore::load_messages(const PageQuery &q)
{
	if (tick())
		return fault();
	return inner_.load_messages(q);
}

Status FailingStore::mark_read(const std::string &c, const std::string &u, int64_t seq)
{
	if (tick())
		return fault();
	return inner_.mark_read(c, u, seq);
}

bool FailingStore::healthy() { return !fired_ && inner_.healthy(); }

} // namespace qc::test
