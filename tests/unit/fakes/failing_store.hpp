// A Store that forwards to a real one and can fail its Nth call with
// DATABASE_ERROR (SQLite's own fault-injection habit, at the interface).
#pragma once

#include <memory>

#include "qryptchat/store.hpp"

namespace qc::test {

class FailingStore final : public Store
{
public:
	explicit FailingStore(Store &inner) : inner_(inner) {}

	// Fails the nth call from now (1 = the next one); 0 disables.
	void fail_call(int n)
	{
		fail_at_ = n;
		calls_ = 0;
	}
	// Calls made since fail_call().
	int calls() const { return calls_; }
	// Has the armed failure happened?
	bool fired() const { return fired_; }

	Result<User> upsert_user(const std::string &id, const ProfileHints &h) override;
	Result<std::optional<User>> get_user(const std::string &id) override;
	Result<std::optional<std::string>> first_unknown_user(const std::vector<std::string> &ids) override;
	Result<bool> is_participant(const std::string &c, const std::string &u) override;
	Result<std::vector<std::string>> participant_ids(const std::string &c) override;
	Result<std::vector<std::string>> conversation_ids_of(const std::string &u) override;
	Result<CreatedConversation> create_conversation(const NewConversation &c) override;
	Result<ConversationView> conversation(const std::string &id, const std::string &viewer) override;
	Result<std::vector<ConversationView>> conversations(const std::string &viewer) override;
	Result<InsertedMessage> insert_message(const NewMessage &m) override;
	Result<std::optional<int64_t>> message_seq(const std::string &c, const std::string &id) override;
	Result<Page> load_messages(const PageQuery &q) override;
	Status mark_read(const std::string &c, const std::string &u, int64_t seq) override;
	bool healthy() override;

private:
	// True when this call must fail.
	bool tick()
	{
		calls_++;
		if (fail_at_ > 0 && calls_ == fail_at_) {
			fired_ = true;
			return true;
		}
		return false;
	}
	static Error fault() { return make_error(Err::DatabaseError, "Database error"); }

	Store &inner_;
	int fail_at_ = 0;
	int calls_ = 0;
	bool fired_ = false;
};

} // namespace qc::test
