-- ember.state_restore: how a job's state store (ember.state) comes back
-- from its files: restore as of the committed batch, migrate or archive
-- state of another state_version, archive operators the graph lost, and
-- the dry run of migrate a reload makes before swapping versions
-- (docs/state.md).
--
-- extend(Store, I) adds restore and check_migrate to the store's class;
-- I holds the store's internals these need.

local format = require "ember.state_format"
local files = require "ember.state_files"

local type = type
local tostring = tostring
local tonumber = tonumber
local pairs = pairs
local ipairs = ipairs
local next = next
local pcall = pcall
local os_time = os.time
local math_huge = math.huge
local str_format = string.format
local str_match = string.match
local tbl_concat = table.concat
local tbl_clear = require "table.clear"
local new_map = format.new_map


local _M = {}


function _M.extend(Store, I)

    -- archive-<unix time> (archive-<unix time>.<n> when that second has one),
    -- as the job folder's checkpoint archives are named.
    local function archive_dir(self)
        local stamp = str_format("%d", os_time())
        local name = "archive-" .. stamp
        local n = 1
        while files.exists(self.dir .. "/" .. name) do
            n = n + 1
            name = "archive-" .. stamp .. "." .. n
        end
        local ok, err = files.mkdir_p(self.dir .. "/" .. name)
        if not ok then
            return nil, err
        end
        return self.dir .. "/" .. name
    end


    -- Moves the folder of operator name (of the live folder cur) into the
    -- archive folder (made on first use); returns the archive folder, or
    -- nil, err.
    local function archive_op(self, cur, name, archive, why)
        if not archive then
            archive = archive_dir(self)
            if not archive then
                return nil, "state: cannot make an archive folder in " .. self.dir
            end
        end
        local ok, rerr = files.rename(self.dir .. "/" .. cur.dir .. "/" .. name,
                                      archive .. "/" .. name)
        if not ok then
            return nil, rerr
        end
        if self.log then
            pcall(self.log, "info", self.job, "state of operator '" .. name .. "' archived in "
                  .. archive .. "/" .. name .. " (" .. why .. ")")
        end
        return archive
    end


    -- Installs loaded maps into an operator.
    local function install(op, committed, times, ndeltas)
        op.committed, op.nkeys, op.bytes, op.ndeltas = committed, 0, 0, ndeltas or 0
        tbl_clear(op.staged)
        local nkeys, bytes = 0, 0
        for k, s in pairs(committed) do
            nkeys = nkeys + 1
            bytes = bytes + I.size_of(k) + I.size_of(s)
        end
        op.nkeys, op.bytes = nkeys, bytes
        if op.timeout then
            local buckets, kept = new_map(), new_map()
            local missing = false
            for k in pairs(committed) do
                local t = times and times[k]
                if t then
                    kept[k] = t
                    local b = buckets[t]
                    if not b then
                        b = new_map()
                        buckets[t] = b
                    end
                    b[k] = true
                else
                    missing = true
                end
            end
            op.times, op.buckets = kept, buckets
            tbl_clear(op.stimes)
            tbl_clear(op.expired)
            op.needs_times = missing
        end
    end


    -- Every operator folder under the live state folder, loaded as of
    -- committed_id: name -> { committed, times, ndeltas }.
    local function load_all(self, cur, committed_id, cleanup)
        local root = self.dir .. "/" .. cur.dir
        local names, is_dir = files.list(root)
        if not names then
            return nil, is_dir
        end
        local out = {}
        for _, name in ipairs(names) do
            if is_dir[name] then
                local c, t, nd = format.load_dir(root .. "/" .. name .. "/p0", committed_id, cleanup)
                if not c then
                    return nil, t
                end
                out[name] = { committed = c, times = t, ndeltas = nd }
            end
        end
        return out
    end


    local function plain_state(loaded)
        local old = {}
        for name, l in pairs(loaded) do
            local m = {}
            for k, s in pairs(l.committed) do
                m[k] = I.value_of(s)
            end
            old[name] = m
        end
        return old
    end


    -- Runs the job's migrate on the old state; returns name -> stored map.
    local function run_migrate(self, loaded, old_version)
        local ok, new = pcall(self.migrate, plain_state(loaded), old_version)
        if not ok then
            return nil, "migrate of job '" .. self.job .. "' from state_version "
                        .. tostring(old_version) .. " to " .. tostring(self.version)
                        .. " failed: " .. tostring(new)
        end
        if type(new) ~= "table" then
            return nil, "migrate of job '" .. self.job .. "' must return a table (operator name "
                        .. "-> { key = state }), got " .. type(new)
        end
        local out = {}
        for name, m in pairs(new) do
            local op = self.ops[name]
            if not op then
                local known = {}
                for _, o in ipairs(self.order) do
                    known[#known + 1] = o.name
                end
                return nil, "migrate of job '" .. self.job .. "' returned state for operator '"
                            .. tostring(name) .. "', which the job does not declare (it has: "
                            .. (#known > 0 and tbl_concat(known, ", ") or "none") .. ")"
            end
            if type(m) ~= "table" then
                return nil, "migrate of job '" .. self.job .. "': the state of '" .. name
                            .. "' must be a table of key -> state, got " .. type(m)
            end
            local stored = new_map()
            for k, v in pairs(m) do
                local sok, s = pcall(function()
                    I.check_key(self, op, k)
                    return I.stored(self, op, k, v)
                end)
                if not sok then
                    self.fatal = nil
                    if self.fails then
                        self.fails.fatal = nil
                    end
                    return nil, "migrate of job '" .. self.job .. "': " .. tostring(s)
                end
                stored[k] = s
            end
            out[name] = stored
        end
        return out
    end


    -- Writes a full snapshot of stored maps into a fresh state folder.
    local function write_generation(self, cur, maps, id)
        local root = self.dir .. "/" .. cur.dir
        if files.exists(root) then
            local ok, err = files.rm_rf(root)       -- a migration that never finished
            if not ok then
                return nil, err
            end
        end
        local ok, err = files.mkdir_p(root)
        if not ok then
            return nil, err
        end
        local saved = self.current
        self.current = cur
        for name, m in pairs(maps) do
            local op = self.ops[name]
            local keep_c, keep_s, keep_st = op.committed, op.staged, op.stimes
            op.committed, op.staged, op.stimes = m, {}, nil   -- no times: set at the next batch
            local bytes, werr = I.write_op_file(self, op, "snapshot", id)
            op.committed, op.staged, op.stimes = keep_c, keep_s, keep_st
            if not bytes then
                self.current = saved
                return nil, werr
            end
        end
        self.current = saved
        return true
    end


    local function same_version(a, b)
        return a == b or (a ~= nil and b ~= nil and tostring(a) == tostring(b))
    end


    -- Rebuilds committed state as of committed_batch_id (0: nothing
    -- committed) from the files; migrates or archives it when the state on
    -- disk has another state_version. Returns true or false, err.
    function Store:restore(committed_id, old_version)
        committed_id = tonumber(committed_id) or 0
        self:abort()
        for _, op in ipairs(self.order) do
            I.cancel_snapshot(op)
        end
        local cur, err = I.read_current(self)
        if err then
            return false, err
        end
        if not cur then
            -- Nothing was ever written: empty state; the folder is made by the
            -- first prepare that has something to write.
            for _, op in ipairs(self.order) do
                install(op, new_map(), new_map(), 0)
            end
            self.current = nil
            return true
        end

        -- Another version folder: the old one of a migration that switched
        -- CURRENT and died before archiving it, or the new one of a migration
        -- that died before switching. Either way it is not the live state:
        -- archived (not dropped).
        local names, is_dir = files.list(self.dir)
        if not names then
            return false, is_dir
        end
        local archive
        for _, name in ipairs(names) do
            if is_dir[name] and name ~= cur.dir and not str_match(name, "^archive%-") then
                archive = archive or archive_dir(self)
                if not archive then
                    return false, "state: cannot make an archive folder in " .. self.dir
                end
                local ok, rerr = files.rename(self.dir .. "/" .. name, archive .. "/" .. name)
                if not ok then
                    return false, rerr
                end
            end
        end

        if #self.order == 0 then
            -- A version without stateful operators: what the old one kept is
            -- set aside, as for any operator a new version no longer has,
            -- without reading it.
            local ops, dirs = files.list(self.dir .. "/" .. cur.dir)
            if not ops then
                return false, dirs
            end
            for _, name in ipairs(ops) do
                if dirs[name] then
                    -- files of a batch never committed (a crash after
                    -- prepare) are not part of the state
                    local p0 = self.dir .. "/" .. cur.dir .. "/" .. name .. "/p0"
                    for _, f in ipairs(format.list(p0) or {}) do
                        if f.id > committed_id then
                            files.unlink(p0 .. "/" .. f.name)
                        end
                    end
                    archive, err = archive_op(self, cur, name, archive,
                                              "the job has no stateful operator now")
                    if not archive then
                        return false, err
                    end
                end
            end
            self.current = cur
            return true
        end

        local loaded
        loaded, err = load_all(self, cur, committed_id, true)
        if not loaded then
            return false, err
        end

        if same_version(cur.version, self.version) then
            self.current = cur
            -- Operators the job no longer declares: set aside, not dropped.
            for name in pairs(loaded) do
                if not self.ops[name] then
                    archive, err = archive_op(self, cur, name, archive,
                                              "the job has no operator of that name now")
                    if not archive then
                        return false, err
                    end
                end
            end
            for _, op in ipairs(self.order) do
                local l = loaded[op.name]
                if l then
                    install(op, l.committed, l.times, l.ndeltas)
                else
                    install(op, new_map(), new_map(), 0)
                end
            end
            return true
        end

        -- Another state_version: migrate, or archive and start empty.
        local maps = {}
        local has_state = false
        for _, l in pairs(loaded) do
            if next(l.committed) ~= nil then
                has_state = true
            end
        end
        if self.migrate and has_state then
            maps, err = run_migrate(self, loaded, cur.version)
            if not maps then
                return false, err
            end
        end
        local new = I.new_current(self, cur)
        local ok, werr = write_generation(self, new, maps, committed_id)
        if not ok then
            return false, werr
        end
        ok, werr = I.write_current(self, new)
        if not ok then
            return false, werr
        end
        archive = archive or archive_dir(self)
        if archive then
            files.rename(self.dir .. "/" .. cur.dir, archive .. "/" .. cur.dir)
        end
        for _, op in ipairs(self.order) do
            install(op, maps[op.name] or new_map(), new_map(), 0)
        end
        return true
    end


    -- A dry run of migrate on the state on disk, touching no file: false and
    -- the error when it would fail.
    function Store:check_migrate(committed_id, old_version)
        committed_id = tonumber(committed_id) or 0
        local cur, err = I.read_current(self)
        if err then
            return false, err
        end
        if not cur or same_version(cur.version, self.version) or not self.migrate then
            return true
        end
        -- The running version keeps committing meanwhile: it writes files
        -- past committed_id and, applying a snapshot, deletes the files
        -- before it. So the dry run takes the newest state on disk (it
        -- needs state of the right shape, not of one exact batch), and a
        -- file that vanished between listing and reading means "list again".
        local loaded
        for _ = 1, 4 do
            loaded, err = load_all(self, cur, math_huge, false)
            if loaded then
                break
            end
        end
        if not loaded then
            return false, err
        end
        local maps
        maps, err = run_migrate(self, loaded, cur.version)
        if not maps then
            return false, err
        end
        return true
    end

end


return _M
