// stats: process-wide counters, rendered as JSON (/stats) and as the
// Prometheus text format (/metrics).  Counters only ever increase; gauges
// (open connections, rooms...) are read from their owners at render time
// and passed in.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "qryptchat/json.hpp"
#include "qryptchat/util.hpp"

namespace qc {

struct Stats {
	uint64_t connections_accepted = 0;   // WebSocket upgrades completed
	uint64_t upgrades_refused = 0;       // upgrades answered 401/403/404/429/503
	uint64_t http_requests = 0;          // plain HTTP requests served
	uint64_t auth_success = 0;           // successful authentications
	uint64_t auth_failures = 0;          // failed auth requests and upgrade tokens
	uint64_t frames_in = 0;              // complete inbound messages
	uint64_t bytes_in = 0;
	uint64_t frames_out = 0;             // frames written to sockets
	uint64_t bytes_out = 0;
	uint64_t messages_stored = 0;        // send_message rows committed
	uint64_t deliveries = 0;             // message_received frames queued
	uint64_t typing_pushes = 0;          // typing_update frames queued
	uint64_t presence_pushes = 0;        // user_online/user_offline frames queued
	uint64_t conversations_created = 0;
	uint64_t slow_consumers_closed = 0;  // closed for exceeding max_queue_bytes
	uint64_t rate_limited = 0;           // requests answered RATE_LIMITED
	uint64_t closed_auth_timeout = 0;
	uint64_t closed_auth_failures = 0;
	uint64_t closed_token_expired = 0;
	uint64_t closed_too_big = 0;         // 1009
	uint64_t closed_abuse = 0;           // sustained rate-limit abuse (1008)
	uint64_t refused_max_connections = 0; // 503
	uint64_t refused_per_ip = 0;         // 429
	uint64_t refused_origin = 0;         // 403
	uint64_t refused_token = 0;          // 401
	uint64_t database_errors = 0;        // store calls that failed
	uint64_t errors[kErrCount] = {};     // error replies by code

	void count_error(Err e) { errors[static_cast<int>(e)]++; }
};

// Point-in-time values owned by other modules.
struct Gauges {
	uint64_t connections = 0;            // open WebSocket connections
	uint64_t authenticated = 0;          // of which authenticated
	uint64_t room_connections = 0;       // connections joined to ≥ 1 room
	uint64_t rooms = 0;                  // non-empty rooms
	uint64_t online_users = 0;           // users with ≥ 1 authenticated connection
	uint64_t queued_bytes = 0;           // outbound bytes waiting, all connections
	int64_t uptime_s = 0;
	bool database_ok = true;
};

// Writes the counters as members of the current JSON object.
void stats_write_json(JsonWriter &w, const Stats &s);
// Prometheus text exposition of counters and gauges.
std::string stats_prometheus(const Stats &s, const Gauges &g);
// Appends one metric qryptchatd_<name> (HELP, TYPE and value lines).
void prometheus_metric(std::string &out, const char *name, const char *type, const char *help,
		       uint64_t v);

} // namespace qc
