-- ember.state_snapshot: an operator's state written whole, in slices
-- between batches (see ember.state for the store it belongs to).

local files = require "ember.state_files"
local format = require "ember.state_format"

local next = next
local pairs = pairs
local math_ceil = math.ceil
local str_format = string.format
local new_map = format.new_map

local _M = {}

-- After snapshot_interval deltas, an operator's state is
-- written whole, so restore reads one snapshot and some deltas. Written
-- at once, a million keys would hold one commit for 100 ms; so a snapshot
-- is written in slices, outside the commits: it starts at apply(S) (state
-- as of batch S) and each maintain (after a batch's acks) writes a slice of
-- the keys, walking op.committed with next(), until the last slice renames
-- snapshot-S into place. Meanwhile keys new to the operator wait in
-- op.added (a table must not get new keys while next() walks it; changing
-- or clearing existing ones is allowed). A slice holds committed values
-- (maintain runs between batches, after apply), newer than S maybe, and
-- the deltas after S, which restore applies on top, hold every change
-- since S: so snapshot plus deltas give the state exactly. The files
-- before S are deleted once snapshot-S is complete (the checkpoint then
-- holds a batch >= S).

-- Starts writing snapshot-<id> of op (its state as of batch id) in dir,
-- the operator's folder; self is the store.
function _M.start(self, op, id, dir)
    local ok, err = files.mkdir_p(dir)
    if not ok then
        return nil, err
    end
    local w
    w, err = format.open(dir .. "/snapshot-" .. str_format("%d", id),
                         { op = op.name, kind = "snapshot", batch = id, partition = 0,
                           keys = op.nkeys })
    if not w then
        return nil, err
    end
    -- Over about two intervals: a commit writes its delta and 1/(2 x
    -- interval) of the keys; deltas on disk stay under about 3 intervals.
    local slice = math_ceil(op.nkeys / (2 * self.interval))
    op.snap = { w = w, id = id, last = nil, started = false, deltas = 0,
                slice = slice < self.min_slice and self.min_slice or slice }
    op.added = op.added or new_map()
    return true
end

-- Writes the next slice of op's snapshot; the last one completes the
-- file. Returns bytes handed to the file, or nil, err.
function _M.step(op)
    local snap = op.snap
    local w, committed, times = snap.w, op.committed, op.times
    local before = w:bytes()
    local k, v = snap.last, nil
    local first = not snap.started
    snap.started = true
    for _ = 1, snap.slice do
        if first then
            k, v = next(committed)
            first = false
        else
            k, v = next(committed, k)
        end
        if k == nil then
            break
        end
        w:entry(k, v, times and times[k])
    end
    snap.last = k                               -- keeps the key alive for next()
    if k ~= nil then
        w:writeback()
        return w:bytes() - before
    end
    -- The walk is over: keys that waited in added are in deltas after S.
    local bytes, err = w:finish()
    op.snap = nil
    if not bytes then
        return nil, err
    end
    op.snap_done = { id = snap.id, deltas = snap.deltas }
    return bytes - before
end

-- Drops a snapshot being written (restore, a failed write).
function _M.cancel(op)
    if op.snap then
        op.snap.w:discard()
        op.snap = nil
    end
    op.snap_done = nil
    local added = op.added
    if added then
        local committed = op.committed
        for k, v in pairs(added) do
            committed[k] = v
        end
        op.added = nil
    end
end

return _M
