-- support.small_disk: a small tmpfs mounted on a folder (the specs run as
-- root), filled to the last byte and emptied again, for full-disk specs.
--
--   local disk = small_disk.mount(path, "4m")
--   disk:fill()      -- a filler file takes every free byte
--   disk:free()      -- and is removed
--   disk:unmount()   -- in after_each

local _M = {}
local Disk = {}
Disk.__index = Disk

local function sh(cmd)
    local ok = os.execute(cmd .. " >/dev/null 2>&1")
    return ok == 0 or ok == true
end

function _M.available()
    return sh("[ \"$(id -u)\" = 0 ]")
end

function _M.mount(path, size)
    assert(sh("mkdir -p '" .. path .. "'"))
    assert(sh("mount -t tmpfs -o size=" .. size .. " tmpfs '" .. path .. "'"),
           "cannot mount a tmpfs on " .. path)
    return setmetatable({ path = path, filler = path .. "/.filler" }, Disk)
end

function Disk:fill()
    sh("dd if=/dev/zero of='" .. self.filler .. "' bs=4k")  -- stops at ENOSPC
    -- what dd left: the small writes that still fit
    sh("dd if=/dev/zero of='" .. self.filler .. ".2' bs=1")
end

function Disk:free()
    os.remove(self.filler)
    os.remove(self.filler .. ".2")
end

function Disk:unmount()
    sh("umount -l '" .. self.path .. "'")
end

return _M
