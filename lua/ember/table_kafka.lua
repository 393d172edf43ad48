-- ember.table_kafka: a compacted Kafka topic as the source of a reference
-- table (ember.table), as Kafka Streams' GlobalKTable:
--
--   job:table { from = { kafka = "localhost:9092", topic = "ad-campaigns" } }
--
-- The table's own consumer (librdkafka, through the FFI; no consumer group
-- is joined, nothing is committed) is assigned every partition of the topic
-- from its beginning. The table is loaded once every partition reached its
-- end (the high watermark when it got there: librdkafka's partition EOF);
-- from then on each batch first takes what came since, so an update (a new
-- value for a key) or a delete (a tombstone: a null value) applies to the
-- records of the batches after it. A record without a key is skipped with
-- a warning. key(field, value) is called with the record's key and value,
-- value(field, value) only for records that are not tombstones.
--
-- While the first load is not done (the topic is long, or the brokers are
-- down), each attempt reads for at most LOAD_SLICE_MS and the batch waits
-- (ember.table). The consumer is closed when the job's Lua state goes (a
-- reload, a stop).
--
-- Partitions added to the topic later are found: every refresh (at least
-- PARTITION_CHECK_MS) the topic's metadata is asked for again, and each
-- partition not read yet is added to the assignment from its beginning
-- (incrementally: the others keep their place). A metadata request that
-- fails then is a failed read (the table is stale and keeps its contents).

local ffi = require "ffi"

local C = ffi.C
local ffi_new = ffi.new
local ffi_string = ffi.string
local ffi_gc = ffi.gc
local pcall = pcall
local pairs = pairs
local tostring = tostring
local type = type
local ipairs = ipairs
local table_sort = table.sort
local table_concat = table.concat


local _M = {}

local LOAD_SLICE_MS = 2000
local METADATA_TIMEOUT_MS = 2000
local PARTITION_CHECK_MS = 5000         -- new partitions looked for at most this often
local CHECK_TIMEOUT_MS = 1000           -- a later metadata request waits at most this
local FOLLOW_MAX = 200000               -- records taken per batch once loaded
local ERR_PARTITION_EOF = -191
local OFFSET_BEGINNING = -2
local RD_KAFKA_CONSUMER = 1

if not pcall(ffi.typeof, "rd_kafka_message_t") then
    ffi.cdef [[
        typedef struct rd_kafka_s rd_kafka_t;
        typedef struct rd_kafka_conf_s rd_kafka_conf_t;
        typedef struct rd_kafka_topic_s rd_kafka_topic_t;
        typedef struct rd_kafka_topic_partition_list_s rd_kafka_topic_partition_list_t;
        typedef struct rd_kafka_message_s {
            int err;
            rd_kafka_topic_t *rkt;
            int32_t partition;
            void *payload;
            size_t len;
            void *key;
            size_t key_len;
            int64_t offset;
            void *_private;
        } rd_kafka_message_t;
        typedef struct rd_kafka_metadata_partition {
            int32_t id;
            int err;
            int32_t leader;
            int replica_cnt;
            int32_t *replicas;
            int isr_cnt;
            int32_t *isrs;
        } rd_kafka_metadata_partition_t;
        typedef struct rd_kafka_metadata_topic {
            char *topic;
            int partition_cnt;
            struct rd_kafka_metadata_partition *partitions;
            int err;
        } rd_kafka_metadata_topic_t;
        typedef struct rd_kafka_metadata {
            int broker_cnt;
            void *brokers;
            int topic_cnt;
            struct rd_kafka_metadata_topic *topics;
            int32_t orig_broker_id;
            char *orig_broker_name;
        } rd_kafka_metadata_t;

        rd_kafka_conf_t *rd_kafka_conf_new(void);
        void rd_kafka_conf_destroy(rd_kafka_conf_t *conf);
        int rd_kafka_conf_set(rd_kafka_conf_t *conf, const char *name, const char *value,
                              char *errstr, size_t errstr_size);
        rd_kafka_t *rd_kafka_new(int type, rd_kafka_conf_t *conf, char *errstr,
                                 size_t errstr_size);
        void rd_kafka_destroy(rd_kafka_t *rk);
        int rd_kafka_consumer_close(rd_kafka_t *rk);
        rd_kafka_topic_t *rd_kafka_topic_new(rd_kafka_t *rk, const char *topic, void *conf);
        void rd_kafka_topic_destroy(rd_kafka_topic_t *rkt);
        int rd_kafka_metadata(rd_kafka_t *rk, int all_topics, rd_kafka_topic_t *only_rkt,
                              const rd_kafka_metadata_t **metadatap, int timeout_ms);
        void rd_kafka_metadata_destroy(const rd_kafka_metadata_t *metadata);
        rd_kafka_topic_partition_list_t *rd_kafka_topic_partition_list_new(int size);
        void rd_kafka_topic_partition_list_destroy(rd_kafka_topic_partition_list_t *rkparlist);
        void *rd_kafka_topic_partition_list_add(rd_kafka_topic_partition_list_t *rktparlist,
                                                const char *topic, int32_t partition);
        int rd_kafka_topic_partition_list_set_offset(rd_kafka_topic_partition_list_t *rktparlist,
                                                     const char *topic, int32_t partition,
                                                     int64_t offset);
        rd_kafka_message_t *rd_kafka_consumer_poll(rd_kafka_t *rk, int timeout_ms);
        void rd_kafka_message_destroy(rd_kafka_message_t *rkmessage);
        const char *rd_kafka_err2str(int err);
        typedef struct rd_kafka_error_s rd_kafka_error_t;
        rd_kafka_error_t *rd_kafka_incremental_assign(rd_kafka_t *rk,
                                                      const rd_kafka_topic_partition_list_t *partitions);
        const char *rd_kafka_error_string(const rd_kafka_error_t *error);
        void rd_kafka_error_destroy(rd_kafka_error_t *error);
    ]]
end


-- True inside the ember driver once its Kafka module (and so librdkafka) is
-- loaded; else false and why it would not load, if it was tried.
function _M.available()
    local ok, err = require("ember.modules").need("kafka")
    if not ok then
        return false, err
    end
    return (pcall(function() return C.rd_kafka_consumer_poll end))
end


local function close(rk)
    C.rd_kafka_consumer_close(rk)
    C.rd_kafka_destroy(rk)
end


-- Makes the consumer; nil and why on a bad setting.
local function open(src, group)
    local errbuf = ffi_new("char[512]")
    local conf = C.rd_kafka_conf_new()
    local settings = {
        ["bootstrap.servers"] = src.kafka,
        ["group.id"] = group,
        ["enable.auto.commit"] = "false",
        ["enable.auto.offset.store"] = "false",
        ["enable.partition.eof"] = "true",
        ["auto.offset.reset"] = "earliest",
        -- librdkafka's own lines would go to stderr, outside the driver's
        -- log; what matters reaches the log as the table's warnings
        ["log_level"] = "2",
    }
    for k, v in pairs(src.config or {}) do
        settings[k] = tostring(v)
    end
    for k, v in pairs(settings) do
        if C.rd_kafka_conf_set(conf, k, v, errbuf, 512) ~= 0 then
            C.rd_kafka_conf_destroy(conf)
            return nil, "kafka setting '" .. k .. "': " .. ffi_string(errbuf)
        end
    end
    local rk = C.rd_kafka_new(RD_KAFKA_CONSUMER, conf, errbuf, 512)   -- owns conf when it works
    if rk == nil then
        C.rd_kafka_conf_destroy(conf)
        return nil, ffi_string(errbuf)
    end
    return ffi_gc(rk, close)
end


-- The ids of the topic's partitions, as the brokers say now; nil and why.
local function partitions(src, rk, timeout_ms)
    local rkt = C.rd_kafka_topic_new(rk, src.topic, nil)
    local box = ffi_new("const rd_kafka_metadata_t *[1]")
    local err = C.rd_kafka_metadata(rk, 0, rkt, box, timeout_ms)
    C.rd_kafka_topic_destroy(rkt)
    if err ~= 0 then
        return nil, "metadata of topic '" .. src.topic .. "': " .. ffi_string(C.rd_kafka_err2str(err))
    end
    local md = box[0]
    local t = md.topic_cnt > 0 and md.topics[0] or nil
    local n = t and t.err == 0 and t.partition_cnt or 0
    local terr = t and t.err or 0
    local ids = {}
    for i = 0, n - 1 do
        ids[i + 1] = t.partitions[i].id
    end
    C.rd_kafka_metadata_destroy(md)
    if n == 0 then
        return nil, "topic '" .. src.topic .. "' has no partitions"
                    .. (terr ~= 0 and (" (" .. ffi_string(C.rd_kafka_err2str(terr)) .. ")") or "")
    end
    return ids
end


-- Adds the partitions of ids the consumer does not read yet, each from its
-- beginning (at the first load: all of them); the others keep their
-- place. Returns how many it added, or nil and why.
local function assign_new(src, rk, ids)
    local at_end = src.at_end or {}
    local new = {}
    for _, p in ipairs(ids) do
        if at_end[p] == nil then
            new[#new + 1] = p
        end
    end
    if #new == 0 then
        return 0
    end
    local list = C.rd_kafka_topic_partition_list_new(#new)
    for _, p in ipairs(new) do
        C.rd_kafka_topic_partition_list_add(list, src.topic, p)
        C.rd_kafka_topic_partition_list_set_offset(list, src.topic, p, OFFSET_BEGINNING)
    end
    -- No consumer group: an incremental assignment adds these and leaves
    -- the partitions read so far where they are (the first load takes the
    -- same path, so every start runs it).
    local why
    local e = C.rd_kafka_incremental_assign(rk, list)
    if e ~= nil then
        why = ffi_string(C.rd_kafka_error_string(e))
        C.rd_kafka_error_destroy(e)
    end
    C.rd_kafka_topic_partition_list_destroy(list)
    if why then
        return nil, "assign: " .. why
    end
    for _, p in ipairs(new) do
        at_end[p] = false
    end
    src.at_end = at_end
    return #new, new
end


-- Once every refresh of the table (at least PARTITION_CHECK_MS) the
-- topic's metadata is read again, and partitions added since are read from
-- their beginning. Returns true, or nil and why (the metadata could not be
-- had: the read failed, the table stays as it is).
local function check_partitions(src, tbl, now)
    local every = tbl.refresh_ms > PARTITION_CHECK_MS and tbl.refresh_ms or PARTITION_CHECK_MS
    if src.checked_at and now - src.checked_at < every and now >= src.checked_at then
        return true
    end
    src.checked_at = now
    local ids, err = partitions(src, src.rk, CHECK_TIMEOUT_MS)
    if not ids then
        return nil, err
    end
    local added, which = assign_new(src, src.rk, ids)
    if not added then
        return nil, which
    end
    if added > 0 then
        table_sort(which)
        tbl:info("topic '" .. src.topic .. "' has " .. added .. " new partition"
                 .. (added == 1 and "" or "s") .. " (" .. table_concat(which, ", ")
                 .. "), read from the beginning")
    end
    return true
end


-- Applies one record to the table.
local function apply(tbl, m)
    if m.key == nil then
        tbl:warn("a record without a key (partition " .. m.partition .. ", offset "
                 .. tostring(m.offset) .. ") skipped")
        return
    end
    local field = ffi_string(m.key, m.key_len)
    local value = m.payload ~= nil and ffi_string(m.payload, m.len) or nil
    local k, v = field, value
    if tbl.key_fn then
        local ok, r = pcall(tbl.key_fn, field, value)
        if not ok then
            tbl:warn("entry '" .. field .. "' skipped: " .. tostring(r))
            return
        end
        k = r
    end
    if k == nil then
        return
    end
    if value ~= nil and tbl.value_fn then
        local ok, r = pcall(tbl.value_fn, field, value)
        if not ok then
            tbl:warn("entry '" .. field .. "' skipped: " .. tostring(r))
            return
        end
        v = r
    end
    local data = tbl.data
    local old = data[k]
    if v == nil then
        if old ~= nil then
            data[k] = nil
            tbl.size = tbl.size - 1
            tbl.deleted = (tbl.deleted or 0) + 1
        end
    else
        if old == nil then
            tbl.size = tbl.size + 1
        end
        if old ~= v then
            tbl.set = (tbl.set or 0) + 1
        end
        data[k] = v
    end
end


-- Takes what the consumer has: until every partition reached its end
-- (first load) or for at most `max` records (following). Returns true, or
-- nil and the error of a record that is not one.
local function drain(src, tbl, timeout_ms, max)
    local rk = src.rk
    local first = not tbl.loaded
    local deadline_polls = first and (timeout_ms / 100) or 0
    local took, polls = 0, 0
    while true do
        local m = C.rd_kafka_consumer_poll(rk, first and 100 or 0)
        if m == nil then
            polls = polls + 1
            if not first or polls >= deadline_polls then
                return true
            end
        else
            local err = m.err
            if err == 0 then
                apply(tbl, m)
                took = took + 1
            elseif err == ERR_PARTITION_EOF then
                src.at_end[m.partition] = true
            else
                local text = m.payload ~= nil and ffi_string(m.payload, m.len)
                             or ffi_string(C.rd_kafka_err2str(err))
                C.rd_kafka_message_destroy(m)
                return nil, text
            end
            C.rd_kafka_message_destroy(m)
            if first then
                local all = true
                for _, e in pairs(src.at_end) do
                    all = all and e
                end
                if all then
                    return true, "loaded"
                end
            elseif took >= max then
                return true
            end
        end
    end
end


-- The table's follow step (ember.table calls it before each batch, now
-- the wall-clock ms): true once loaded; nil, why and true while the first
-- load is under way; nil and why when the source cannot be read.
function _M.follow(src, tbl, now)
    local here, why = _M.available()
    if not here then
        return nil, why or "a Kafka table needs the ember driver (librdkafka is not linked)"
    end
    if not src.rk then
        local rk, err = open(src, "ember-table." .. tostring(tbl.job.name) .. "." .. tbl.name)
        if not rk then
            return nil, err
        end
        src.rk = rk
    end
    if not src.at_end then
        local ids, err = partitions(src, src.rk, METADATA_TIMEOUT_MS)
        local ok, aerr = ids and assign_new(src, src.rk, ids)
        if not ok then
            return nil, err or aerr
        end
        src.checked_at = now
    else
        local ok, err = check_partitions(src, tbl, now)
        if not ok then
            return nil, err
        end
    end
    tbl.set, tbl.deleted = 0, 0
    local ok, how = drain(src, tbl, LOAD_SLICE_MS, FOLLOW_MAX)
    if not ok then
        return nil, how
    end
    if how == "loaded" then
        return true, "loaded"
    end
    if not tbl.loaded then
        local left = 0
        for _, e in pairs(src.at_end) do
            left = left + (e and 0 or 1)
        end
        return nil, left .. " partition" .. (left == 1 and "" or "s") .. " of topic '"
                    .. src.topic .. "' not read to the end yet (" .. tbl.size .. " entries so far)",
               true
    end
    return true
end


function _M.check(from)
    if type(from.topic) ~= "string" or from.topic == "" then
        return "a Kafka source takes topic = \"name\""
    end
    if type(from.kafka) ~= "string" or from.kafka == "" then
        return "kafka = \"host:port,...\" (the brokers) expected"
    end
    for k in pairs(from) do
        if k ~= "kafka" and k ~= "topic" and k ~= "config" then
            return "a Kafka source takes kafka, topic or config, not '" .. tostring(k) .. "'"
        end
    end
    if from.config ~= nil and type(from.config) ~= "table" then
        return "config: a table of librdkafka settings expected"
    end
    local _, err = _M.available()
    return err
end


return _M
