//! The shared store's operations, each one Lua script that Redis runs atomically. They apply
//! the same rules as [`crate::guard::rules`] (the property test and the differential test in
//! `tests/shared.rs` hold them to it) to one record per (egress, gateway, credentials):
//!
//! * `guard` hash: `rejected`, `unconfirmed`, `locked` (0/1), `proven` (0/1), `reason`;
//! * `inflight` sorted set: the attempts in flight, scored by when their holder's lease ends.
//!   A holder that crashes leaves its attempt counted in `unconfirmed`; when the lease ends it
//!   leaves the set, so the attempt counts as unknown (never as free);
//! * `key` hash, per (egress, gateway): `generation`, `sealed` (the session key, sealed by the
//!   layer), `epoch` (bumped by every reservation; a publish must carry the latest, so a holder
//!   whose reservation was superseded never overwrites a newer key).
//!
//! Every script answers `{status, rejected, unconfirmed, locked, proven, reason, extra...}`.

use redis::Script;

/// The record fields every script returns, in order, after its status.
const RETURN_RECORD: &str = r#"
local LOST = 'the shared store lost the lockout record: check the gateway, then unlock it'
local function answer(status, extra1, extra2)
  local r = redis.call('HMGET', KEYS[1], 'rejected', 'unconfirmed', 'locked', 'proven', 'reason')
  return {status, r[1] or '0', r[2] or '0', r[3] or '0', r[4] or '0', r[5] or '',
          extra1 or '', extra2 or ''}
end
"#;

/// KEYS: guard, inflight, key. ARGV: seen generation (-1: none), budget, proven concurrency,
/// attempt id, now (ms), lease (ms), then the local lower bound to seed a missing record with:
/// rejected, unconfirmed, locked, reason, and whether that copy is of a shared record (`1`: the
/// record existed, so it is missing because the store lost it, and it is seeded locked: other
/// replicas may have spent the budget since the copy was taken); then the ids of reservations
/// this holder gave up on
/// (a reservation whose answer timed out may still have been made: it is cancelled here, as
/// not sent, since its holder never sent anything for it). Answers `adopt` (extra:
/// generation, sealed), `reserved` (extra: epoch), `wait` or `locked`.
const RESERVE: &str = r#"
for i = 12, #ARGV do
  if redis.call('ZREM', KEYS[2], ARGV[i]) == 1 then
    local unconfirmed = tonumber(redis.call('HGET', KEYS[1], 'unconfirmed') or '0')
    redis.call('HSET', KEYS[1], 'unconfirmed', math.max(unconfirmed - 1, 0))
  end
end
local seen = tonumber(ARGV[1])
local generation = tonumber(redis.call('HGET', KEYS[3], 'generation') or '0')
if seen >= 0 and generation > seen then
  return answer('adopt', tostring(generation), redis.call('HGET', KEYS[3], 'sealed') or '')
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  if ARGV[11] == '1' then
    -- The store lost the record: fail closed until an operator has looked.
    redis.call('HSET', KEYS[1], 'rejected', ARGV[7], 'unconfirmed', ARGV[8], 'locked', '1',
               'proven', '0', 'reason', LOST)
  else
    -- A new record: start from this replica's own record (a lower bound).
    redis.call('HSET', KEYS[1], 'rejected', ARGV[7], 'unconfirmed', ARGV[8], 'locked', ARGV[9],
               'proven', '0')
    if ARGV[10] ~= '' then redis.call('HSET', KEYS[1], 'reason', ARGV[10]) end
  end
end
local now = tonumber(ARGV[5])
if redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now) > 0 then
  -- Holders gone without settling: their attempts are unknown now.
  redis.call('HSET', KEYS[1], 'proven', '0')
end
local in_flight = redis.call('ZCARD', KEYS[2])
local r = redis.call('HMGET', KEYS[1], 'rejected', 'unconfirmed', 'locked', 'proven')
local rejected, unconfirmed = tonumber(r[1] or '0'), tonumber(r[2] or '0')
if r[3] == '1' then return answer('locked') end
local unknown = math.max(unconfirmed - in_flight, 0)
local budget, concurrency = tonumber(ARGV[2]), math.max(tonumber(ARGV[3]), 1)
if r[4] == '1' and rejected == 0 and unknown == 0 then
  if in_flight >= concurrency then return answer('wait') end
elseif in_flight > 0 then
  return answer('wait')
elseif rejected >= budget then
  redis.call('HSET', KEYS[1], 'locked', '1', 'reason',
             'rejected authentications reached the budget')
  return answer('locked')
elseif rejected + unknown >= 5 then
  redis.call('HSET', KEYS[1], 'locked', '1', 'reason',
             'too many authentications with unknown outcome')
  return answer('locked')
end
redis.call('HINCRBY', KEYS[1], 'unconfirmed', 1)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[6]), ARGV[4])
local epoch = redis.call('HINCRBY', KEYS[3], 'epoch', 1)
return answer('reserved', tostring(epoch))
"#;

/// KEYS: guard, inflight. ARGV: attempt id, outcome (`success`, `rejected`, `not_sent`,
/// `unknown`), budget. Answers `settled`, or `locked_now` when this rejection locks.
const SETTLE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  -- The attempt was reserved in a record the store has since lost.
  redis.call('HSET', KEYS[1], 'rejected', '0', 'unconfirmed', '1', 'locked', '1', 'proven', '0',
             'reason', LOST)
end
redis.call('ZREM', KEYS[2], ARGV[1])
local in_flight_after = redis.call('ZCARD', KEYS[2])
local r = redis.call('HMGET', KEYS[1], 'rejected', 'unconfirmed', 'locked')
local rejected, unconfirmed = tonumber(r[1] or '0'), tonumber(r[2] or '0')
local locked = r[3] == '1'
local outcome = ARGV[2]
local status = 'settled'
if outcome == 'success' then
  unconfirmed = math.max(unconfirmed - 1, 0)
  if not locked then
    rejected = 0
    unconfirmed = in_flight_after
    redis.call('HSET', KEYS[1], 'proven', '1')
  end
elseif outcome == 'rejected' then
  unconfirmed = math.max(unconfirmed - 1, 0)
  rejected = rejected + 1
  redis.call('HSET', KEYS[1], 'proven', '0')
  if rejected >= tonumber(ARGV[3]) and not locked then
    redis.call('HSET', KEYS[1], 'locked', '1', 'reason',
               rejected .. ' rejected authentication(s) in a row, budget ' .. ARGV[3])
    status = 'locked_now'
  end
elseif outcome == 'not_sent' then
  unconfirmed = math.max(unconfirmed - 1, 0)
else
  redis.call('HSET', KEYS[1], 'proven', '0')
end
redis.call('HSET', KEYS[1], 'rejected', rejected, 'unconfirmed', unconfirmed)
return answer(status)
"#;

/// KEYS: guard, inflight, key. ARGV: epoch of the publisher's reservation, sealed key.
/// Answers `published` (extra: generation) or `stale` (extra: the current generation).
const PUBLISH: &str = r#"
if redis.call('HGET', KEYS[3], 'epoch') ~= ARGV[1] then
  return answer('stale', redis.call('HGET', KEYS[3], 'generation') or '0')
end
local generation = redis.call('HINCRBY', KEYS[3], 'generation', 1)
redis.call('HSET', KEYS[3], 'sealed', ARGV[2])
return answer('published', tostring(generation))
"#;

/// KEYS: guard, inflight, key. No ARGV. An operator vouches for the credentials.
const UNLOCK: &str = r#"
redis.call('HSET', KEYS[1], 'rejected', '0', 'unconfirmed', redis.call('ZCARD', KEYS[2]),
           'locked', '0', 'proven', '0')
redis.call('HDEL', KEYS[1], 'reason')
return answer('unlocked')
"#;

/// KEYS: guard, inflight, key. ARGV: now (ms). The record as it stands (attempts whose lease
/// ended count as unknown) and the key: answers `look` (extra: generation, sealed), or `missing`
/// without touching anything when there is no record (so that a lost record is still found
/// missing by the next reservation).
const LOOK: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'missing', '0', '0', '0', '0', '', '', ''}
end
if redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[1])) > 0 then
  redis.call('HSET', KEYS[1], 'proven', '0')
end
return answer('look', redis.call('HGET', KEYS[3], 'generation') or '0',
              redis.call('HGET', KEYS[3], 'sealed') or '')
"#;

/// The scripts, compiled once (Redis caches them by their SHA-1).
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) reserve: Script,
    pub(crate) settle: Script,
    pub(crate) publish: Script,
    pub(crate) unlock: Script,
    pub(crate) look: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        let with_answer = |body: &str| Script::new(&format!("{RETURN_RECORD}{body}"));
        Self {
            reserve: with_answer(RESERVE),
            settle: with_answer(SETTLE),
            publish: with_answer(PUBLISH),
            unlock: with_answer(UNLOCK),
            look: with_answer(LOOK),
        }
    }
}
