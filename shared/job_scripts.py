"""The job store's Lua scripts (shared/jobs.py runs them): each step of a job's life is one atomic call.

Every script is safe to run twice with the same arguments, because the worker's client sends a command
again after a socket timeout (shared/redis_client.py) and the first call may already have run on a
server that stalled: a retried create finds its record and writes nothing, a retried
finish or requeue by the same owner answers as the first did, a retried claim by the same worker finds
the job already under its own lease.

Leases are per job (the deliveries hash, DELIVERIES_PREFIX): `owner` (the worker), `token` (fencing:
one per claim call), `lease_until` (Redis server time, seconds). A job running under another worker's
live lease is not run again; a worker renews the leases of the jobs it is running from a thread of its
own (worker/leases.py), independent of the broker connection; only the current owner's token may
finish or put back a job, so a worker that lost its lease (stalled past it) never overwrites the
result of the one that took over. `attempt` names the worker that handed the job to the model: taking
over an expired lease from such a worker counts one death (worker/deliveries.py).

Every key a script touches is in its KEYS (none is built from a prefix inside a script), and the keys of one
call share a hash slot on a Redis Cluster (shared/keyspace.py): a claim, renewal or release of many jobs is
one call per bucket of jobs there (shared/jobs.py groups them), one call in all on a plain Redis.
"""

# The server's clock, so workers' clocks never decide who holds a lease.
_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
"""

# Accepting a job: add up the queue's broker lists (KEYS[4:]) and, below ARGV[1] messages, write the
# record (KEYS[1], fields ARGV[6:]) with its TTL and pending entry (KEYS[2]), then push its broker message
# ARGV[5] onto list KEYS[3] if one is given (not ''). Returns the depth, or -1 if the record exists (a
# retried call: the first one wrote it and pushed its message).
CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local depth = 0
for i = 4, #KEYS do depth = depth + redis.call('LLEN', KEYS[i]) end
if depth >= tonumber(ARGV[1]) then return depth end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
if ARGV[5] ~= '' then redis.call('LPUSH', KEYS[3], ARGV[5]) end
return depth
"""

# Shared by FINISH and CANCEL: drops the job from its queue's bucket of the pending index, if that key is among
# KEYS[first..] (ARGV[first + argv_shift..] name their queues, one per key). Returns the job's queue when its
# pending key was not given (the caller removes the entry then), else ''.
_DROP_PENDING = """
local function drop_pending(job, first, argv_shift, job_id)
  local queue = redis.call('HGET', job, 'queue') or ''
  for i = first, #KEYS do
    if ARGV[i + argv_shift] == queue then
      redis.call('ZREM', KEYS[i], job_id)
      return ''
    end
  end
  return queue
end
"""

# Finishing: KEYS job, done channel, webhook outbox, deliveries, then the job's bucket of the pending index of
# each queue the caller knows (shared/keyspace.py: every key a script touches is declared, all in one hash
# slot on a cluster). ARGV: status, finished_at, results, error, TTL, publish command (PUBLISH, or SPUBLISH on
# a cluster), job id, outbox score, finisher (worker), token ('' for a finish outside any claim: a malformed
# message, the parking reconciler), done message prefix ('' or "<job id> " on a bucket's channel), then one
# queue name per pending key. Never resurrects an expired record, never overwrites a finished one, and (with
# a token) only the current owner finishes. Returns {1 (finished now), 2 (already finished by this owner's same
# claim: a retried call whose first run went through), or 0; the job's queue if this call finished it and its
# pending index was not among KEYS (the caller removes the entry then), else ''}.
FINISH = _DROP_PENDING + """
local status = redis.call('HGET', KEYS[1], 'status')
local fenced = ARGV[10] ~= ''
local lease = redis.call('HMGET', KEYS[4], 'owner', 'token')
local mine = (not fenced) or (lease[1] == ARGV[9] and lease[2] == ARGV[10])
if not status then return {0, ''} end
if status == 'succeeded' or status == 'failed' or status == 'canceled' then
  if fenced and lease[2] == ARGV[10] and redis.call('HGET', KEYS[1], 'finished_by') == ARGV[9] then return {2, ''} end
  return {0, ''}
end
if not mine then return {0, ''} end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'finished_at', ARGV[2], 'results', ARGV[3], 'error', ARGV[4],
           'finished_by', ARGV[9])
redis.call('HDEL', KEYS[1], 'texts', 'texts_z', 'text_tokens', 'cursor', 'partial')
redis.call('EXPIRE', KEYS[1], ARGV[5])
local missed = drop_pending(KEYS[1], 5, 7, ARGV[7])
-- The webhook outbox entry is written with the result, so a crash before the call is enqueued loses nothing.
if redis.call('HEXISTS', KEYS[1], 'callback_url') == 1 then redis.call('ZADD', KEYS[3], ARGV[8], ARGV[7]) end
-- The finished record itself is the message, so a waiting request needs no read to answer.
local flat, record = redis.call('HGETALL', KEYS[1]), {}
for i = 1, #flat, 2 do record[flat[i]] = flat[i + 1] end
redis.call(ARGV[6], KEYS[2], ARGV[11] .. cjson.encode(record))
return {1, missed}
"""

# Cancel only a job still queued (checked and changed atomically). KEYS job, done channel, then the job's bucket
# of the pending index of each queue the caller knows; ARGV finished_at, publish command, job id, done message
# prefix, then one queue name per pending key. Answers {1, the job's queue if its pending index was not among
# KEYS, else ''}, or {the status it found (nil: unknown), ''}.
CANCEL = _DROP_PENDING + """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'queued' then return {status, ''} end
redis.call('HSET', KEYS[1], 'status', 'canceled', 'finished_at', ARGV[1])
redis.call('HDEL', KEYS[1], 'texts', 'texts_z', 'text_tokens', 'cursor', 'partial')
local missed = drop_pending(KEYS[1], 3, 2, ARGV[3])
redis.call(ARGV[2], KEYS[2], ARGV[4] .. 'canceled')
return {1, missed}
"""

# Claiming a batch: KEYS in pairs (a job's record, its deliveries hash). ARGV: started_at, worker, token,
# lease seconds, TTL. A job is run ("run") when it is queued, or running under this worker's own lease
# (a batch held over a store outage), or running under an expired or released lease (one death counted,
# once, if another worker had handed it to the model). Under another worker's live lease it is "held";
# finished, canceled or unknown: "skip". Every reply is (status, enqueued_ts, verdict, deaths, then for a
# job to run: texts, owner, text_tokens, cursor, partial, requeued_ts, slices, texts_z: the record is the
# one copy of the texts, the message carries only the job id); missing values answer "" ("nil" would cut Lua's
# array short).
CLAIM = _NOW + """
local out = {}
for i = 1, #KEYS, 2 do
  local job, deliveries = KEYS[i], KEYS[i + 1]
  local row = redis.call('HMGET', job, 'status', 'enqueued_ts')
  local status = row[1] or ''
  local lease = redis.call('HMGET', deliveries, 'owner', 'attempt', 'lease_until')
  local owner, attempt = lease[1] or '', lease[2] or ''
  local live = owner ~= '' and (tonumber(lease[3] or '') or 0) > now
  local verdict = 'skip'
  if status == 'queued' then
    verdict = 'run'
  elseif status == 'running' then
    if owner == ARGV[2] or not live then
      verdict = 'run'
      if attempt ~= '' and attempt ~= ARGV[2] then
        redis.call('HINCRBY', deliveries, 'deaths', 1)
        redis.call('HSET', deliveries, 'attempt', '')
      end
    else
      verdict = 'held'
    end
  end
  if verdict == 'run' then
    redis.call('HSET', job, 'status', 'running')
    redis.call('HSETNX', job, 'started_at', ARGV[1])  -- when work began: not moved by later slices or takeovers
    redis.call('HSET', deliveries, 'owner', ARGV[2], 'token', ARGV[3], 'lease_until', tostring(now + ARGV[4]))
    redis.call('EXPIRE', deliveries, ARGV[5])
  end
  local n = #out
  out[n + 1] = status
  out[n + 2] = row[2] or ''
  out[n + 3] = verdict
  out[n + 4] = redis.call('HGET', deliveries, 'deaths') or '0'
  local work = {}
  if verdict == 'run' then
    work = redis.call('HMGET', job, 'texts', 'owner', 'text_tokens', 'cursor', 'partial', 'requeued_ts', 'slices',
                      'texts_z')
  end
  for j = 1, 8 do out[n + 4 + j] = work[j] or '' end
end
return out
"""
CLAIM_FIELDS = 12

# Renewing leases: KEYS deliveries hashes; ARGV: worker, lease seconds, then one token per key. Returns per
# job 1 (renewed) or 0 (no longer this claim's: taken over, released, or finished and expired).
RENEW = _NOW + """
local out = {}
for i = 1, #KEYS do
  local lease = redis.call('HMGET', KEYS[i], 'owner', 'token')
  if lease[1] == ARGV[1] and lease[2] == ARGV[i + 2] then
    redis.call('HSET', KEYS[i], 'lease_until', tostring(now + ARGV[2]))
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

# Releasing leases at once (a batch that failed and is requeued: another worker may take its jobs now,
# counting no death, since nothing crashed). KEYS deliveries hashes; ARGV: worker, then one token per key.
RELEASE = """
for i = 1, #KEYS do
  local lease = redis.call('HMGET', KEYS[i], 'owner', 'token')
  if lease[1] == ARGV[1] and lease[2] == ARGV[i + 1] then
    redis.call('HSET', KEYS[i], 'owner', '', 'attempt', '', 'lease_until', '0')
  end
end
return 1
"""

# A job scored in part goes back to its queue (worker/slices.py), only from the current owner's claim:
# KEYS job, deliveries, pending index; ARGV: worker, cursor, partial scores, publish time, job id,
# progressed (1/0), token. Keeps where scoring stopped, releases the lease without a death and marks it
# published now in the pending index, so the redelivery sweep treats the message about to be sent as the
# job's latest. Returns 1 (also for a retried call whose first run went through), or 0: not ours.
REQUEUE = """
local status = redis.call('HGET', KEYS[1], 'status')
local lease = redis.call('HMGET', KEYS[2], 'owner', 'token')
if status == 'queued' and lease[1] == '' and lease[2] == ARGV[7] then return 1 end
if status ~= 'running' or lease[1] ~= ARGV[1] or lease[2] ~= ARGV[7] then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued', 'cursor', ARGV[2], 'partial', ARGV[3], 'requeued_ts', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'slices', ARGV[6])
redis.call('HSET', KEYS[2], 'owner', '', 'attempt', '', 'lease_until', '0')
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
return 1
"""
