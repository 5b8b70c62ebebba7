#include "qryptchat/stats.hpp"

namespace qc {

namespace {

struct Counter {
	const char *json;      // member name in /stats
	const char *metric;    // Prometheus name (without the qryptchatd_ prefix)
	const char *help;
	uint64_t Stats::*field;
};

// One table for both renderings, so they cannot drift apart.
const Counter kCounters[] = {
	{"connectionsAccepted", "connections_accepted_total", "WebSocket upgrades completed", &Stats::connections_accepted},
	{"upgradesRefused", "upgrades_refused_total", "WebSocket upgrades refused with an HTTP status", &Stats::upgrades_refused},
	{"httpRequests", "http_requests_total", "Plain HTTP requests served", &Stats::http_requests},
	{"authSuccess", "auth_success_total", "Successful authentications", &Stats::auth_success},
	{"authFailures", "auth_failures_total", "Failed authentications", &Stats::auth_failures},
	{"framesIn", "frames_in_total", "Inbound WebSocket messages", &Stats::frames_in},
	{"bytesIn", "bytes_in_total", "Inbound WebSocket message bytes", &Stats::bytes_in},
	{"framesOut", "frames_out_total", "Outbound WebSocket messages written", &Stats::frames_out},
	{"bytesOut", "bytes_out_total", "Outbound WebSocket message bytes written", &Stats::bytes_out},
	{"messagesStored", "messages_stored_total", "Chat messages committed to the store", &Stats::messages_stored},
	{"deliveries", "deliveries_total", "message_received frames queued to sockets", &Stats::deliveries},
	{"typingPushes", "typing_pushes_total", "typing_update frames queued to sockets", &Stats::typing_pushes},
	{"presencePushes", "presence_pushes_total", "user_online and user_offline frames queued", &Stats::presence_pushes},
	{"conversationsCreated", "conversations_created_total", "Conversations created", &Stats::conversations_created},
	{"slowConsumersClosed", "slow_consumers_closed_total", "Connections closed for exceeding max_queue_bytes", &Stats::slow_consumers_closed},
	{"rateLimited", "rate_limited_total", "Requests refused with RATE_LIMITED", &Stats::rate_limited},
	{"closedAuthTimeout", "closed_auth_timeout_total", "Connections closed for not authenticating in time", &Stats::closed_auth_timeout},
	{"closedAuthFailures", "closed_auth_failures_total", "Connections closed after too many failed auth attempts", &Stats::closed_auth_failures},
	{"closedTokenExpired", "closed_token_expired_total", "Connections closed with 4001 when their token expired", &Stats::closed_token_expired},
	{"closedTooBig", "closed_too_big_total", "Connections closed with 1009 for an oversized message", &Stats::closed_too_big},
	{"closedAbuse", "closed_abuse_total", "Connections closed with 1008 for sustained rate-limit abuse", &Stats::closed_abuse},
	{"refusedMaxConnections", "refused_max_connections_total", "Upgrades refused with 503 at max_connections", &Stats::refused_max_connections},
	{"refusedPerIp", "refused_per_ip_total", "Upgrades refused with 429 by a per-address limit", &Stats::refused_per_ip},
	{"refusedOrigin", "refused_origin_total", "Upgrades refused with 403 by allowed_origins", &Stats::refused_origin},
	{"refusedToken", "refused_token_total", "Upgrades refused with 401 for a bad token", &Stats::refused_token},
	{"databaseErrors", "database_errors_total", "Store operations that failed", &Stats::database_errors},
};

} // namespace

void stats_write_json(JsonWriter &w, const Stats &s)
{
	for (const auto &c : kCounters)
		w.field(c.json, static_cast<int64_t>(s.*c.field));
	w.key("errors").begin_object();
	for (int i = 1; i < kErrCount; i++)
		w.field(err_code(static_cast<Err>(i)), static_cast<int64_t>(s.errors[i]));
	w.end_object();
}

void prometheus_metric(std::string &out, const char *name, const char *type, const char *help,
		       uint64_t v)
{
	out += "# HELP qryptchatd_";
	out += name;
	out += " ";
	out += help;
	out += "\n# TYPE qryptchatd_";
	out += name;
	out += " ";
	out += type;
	out += "\nqryptchatd_";
	out += name;
	out += " ";
	out += std::to_string(v);
	out += "\n";
}

std::string stats_prometheus(const Stats &s, const Gauges &g)
{
	std::string out;
	out.reserve(4096);
	auto metric = [&](const char *name, const char *type, const char *help, uint64_t v) {
		prometheus_metric(out, name, type, help, v);
	};
	for (const auto &c : kCounters)
		metric(c.metric, "counter", c.help, s.*c.field);
	out += "# HELP qryptchatd_errors_total Error replies by code\n"
	       "# TYPE qryptchatd_errors_total counter\n";
	for (int i = 1; i < kErrCount; i++) {
		out += "qryptchatd_errors_total{code=\"";
		out += err_code(static_cast<Err>(i));
		out += "\"} ";
		out += std::to_string(s.errors[i]);
		out += "\n";
	}
	metric("connections", "gauge", "Open WebSocket connections", g.connections);
	metric("authenticated_connections", "gauge", "Authenticated WebSocket connections", g.authenticated);
	metric("rooms", "gauge", "Conversation rooms with at least one joined socket", g.rooms);
	metric("online_users", "gauge", "Users with at least one authenticated connection", g.online_users);
	metric("queued_bytes", "gauge", "Outbound bytes waiting in connection queues", g.queued_bytes);
	metric("uptime_seconds", "gauge", "Seconds since the server started", static_cast<uint64_t>(g.uptime_s));
	metric("database_up", "gauge", "1 when the database answers, else 0", g.database_ok ? 1 : 0);
	return out;
}

} // namespace qc
