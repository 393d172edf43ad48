-- ember.state_files: the file system calls the state store needs, through
-- the FFI on libc alone (so plain luajit runs the unit specs): create a
-- folder, write a file durably (temp file, write, fsync, rename, fsync of
-- the folder), list a folder, read a file, rename, remove a tree.
--
-- Every function returns true (or a value) on success and nil, "what: why"
-- on failure; none raises.

local ffi = require "ffi"

local C = ffi.C
local ffi_errno = ffi.errno
local ffi_string = ffi.string
local ffi_new = ffi.new
local ffi_cast = ffi.cast
local ffi_gc = ffi.gc
local type = type
local tonumber = tonumber
local MODE_0644 = ffi_new("int", 420)     -- a vararg: must go as a C int
local pcall = pcall
local ipairs = ipairs
local setmetatable = setmetatable
local io_open = io.open
local str_sub = string.sub
local tbl_sort = table.sort


local _M = {}


if not pcall(ffi.typeof, "struct ember_dirent") then
    ffi.cdef [[
        int open(const char *path, int flags, ...);
        int close(int fd);
        long write(int fd, const void *buf, size_t n);
        int fsync(int fd);
        int sync_file_range(int fd, int64_t offset, int64_t nbytes, unsigned int flags);
        int rename(const char *from, const char *to);
        int unlink(const char *path);
        int rmdir(const char *path);
        int mkdir(const char *path, unsigned int mode);
        char *strerror(int errnum);
        typedef struct DIR DIR;
        struct ember_dirent {
            uint64_t d_ino;
            int64_t d_off;
            unsigned short d_reclen;
            unsigned char d_type;
            char d_name[256];
        };
        DIR *opendir(const char *path);
        struct ember_dirent *readdir(DIR *d) __asm__("readdir64");
        int closedir(DIR *d);
    ]]
end

-- Linux values (x86_64 and aarch64 share them).
local O_WRONLY, O_CREAT, O_TRUNC, O_RDONLY, O_DIRECTORY = 1, 64, 512, 0, 65536
local O_CLOEXEC = 524288
local EEXIST, ENOENT = 17, 2
local DT_DIR, DT_UNKNOWN = 4, 0


local function why(what)
    local e = ffi_errno()
    return nil, what .. ": " .. ffi_string(C.strerror(e)), e
end


local function dirname(path)
    return path:match("^(.*)/[^/]*$") or "."
end
_M.dirname = dirname


-- fsync of a folder, so a rename in it survives a crash.
local function sync_dir(dir)
    local fd = C.open(dir, O_RDONLY + O_DIRECTORY + O_CLOEXEC)
    if fd < 0 then
        return why("cannot open " .. dir)
    end
    local rc = C.fsync(fd)
    C.close(fd)
    if rc ~= 0 then
        return why("cannot fsync " .. dir)
    end
    return true
end
_M.sync_dir = sync_dir


function _M.mkdir_p(dir)
    if dir == "" or dir == "." or dir == "/" then
        return true
    end
    local path = str_sub(dir, 1, 1) == "/" and "" or "."
    for part in dir:gmatch("[^/]+") do
        path = path .. "/" .. part
        if C.mkdir(path, 493) ~= 0 and ffi_errno() ~= EEXIST then   -- 0755
            return why("cannot create " .. path)
        end
    end
    return true
end


-- A file being written: put(ptr, len) appends, commit() makes it durable
-- under its final name, discard() drops it. Nothing is visible under the
-- final name until commit returns true.
local Writer = {}
Writer.__index = Writer

local function close_box(box)
    if box[0] >= 0 then
        C.close(box[0])
        box[0] = -1
    end
end

-- direct: write under the final name at once (no temp file, no rename):
-- for files a reader ignores until something else names them (a delta of
-- a batch no checkpoint holds yet), which saves the rename's journal
-- commit. commit() still fsyncs the file and its folder.
function _M.create(path, direct)
    local tmp = direct and path or (dirname(path) .. "/.tmp-" .. path:match("([^/]*)$"))
    local fd = C.open(tmp, O_WRONLY + O_CREAT + O_TRUNC + O_CLOEXEC, MODE_0644)
    if fd < 0 then
        return why("cannot create " .. tmp)
    end
    -- The fd is closed by the GC if the writer is dropped unfinished (a
    -- Lua state closed by a reload while a snapshot was being written).
    local box = ffi_gc(ffi_new("int[1]", fd), close_box)
    return setmetatable({ fd = fd, box = box, tmp = tmp, path = path, bytes = 0 }, Writer)
end

function Writer:put(ptr, len)
    if type(ptr) == "string" then
        ptr = ffi_cast("const char *", ptr)
    end
    while len > 0 do
        local n = tonumber(C.write(self.fd, ptr, len))
        if n < 0 then
            if ffi_errno() ~= 4 then                    -- EINTR
                return why("cannot write " .. self.tmp)
            end
            n = 0
        end
        ptr, len = ptr + n, len - n
        self.bytes = self.bytes + n
    end
    return true
end

-- Starts writing what was put so far to the disk, without waiting: the
-- fsync of commit() then has little left to do (a snapshot written over
-- several batches does not pay for all of it in its last one).
function Writer:writeback()
    if self.fd >= 0 then
        C.sync_file_range(self.fd, 0, 0, 2)         -- SYNC_FILE_RANGE_WRITE
    end
end

function Writer:discard()
    if self.fd >= 0 then
        C.close(self.fd)
        self.fd = -1
        self.box[0] = -1
    end
    C.unlink(self.tmp)
end

function Writer:commit()
    local fd = self.fd
    self.fd = -1
    self.box[0] = -1
    if C.fsync(fd) ~= 0 then
        local _, err = why("cannot fsync " .. self.tmp)
        C.close(fd)
        C.unlink(self.tmp)
        return nil, err
    end
    if C.close(fd) ~= 0 then
        local _, err = why("cannot close " .. self.tmp)
        C.unlink(self.tmp)
        return nil, err
    end
    if self.tmp ~= self.path and C.rename(self.tmp, self.path) ~= 0 then
        local _, err = why("cannot rename " .. self.tmp .. " to " .. self.path)
        C.unlink(self.tmp)
        return nil, err
    end
    return sync_dir(dirname(self.path))
end


-- Writes a whole string durably.
function _M.write_file(path, s)
    local w, err = _M.create(path)
    if not w then
        return nil, err
    end
    local ok, werr = w:put(s, #s)
    if not ok then
        w:discard()
        return nil, werr
    end
    return w:commit()
end


function _M.read_file(path)
    local f, err = io_open(path, "rb")
    if not f then
        return nil, err
    end
    local s = f:read("*a")
    f:close()
    if not s then
        return nil, "cannot read " .. path
    end
    return s
end


-- The names in a folder (not . and ..), sorted, and which are folders;
-- an absent folder lists as empty.
function _M.list(dir)
    local d = C.opendir(dir)
    if d == nil then
        if ffi_errno() == ENOENT then
            return {}, {}
        end
        return why("cannot list " .. dir)
    end
    local names, is_dir = {}, {}
    while true do
        local e = C.readdir(d)
        if e == nil then
            break
        end
        local name = ffi_string(e.d_name)
        if name ~= "." and name ~= ".." then
            names[#names + 1] = name
            local t = e.d_type
            if t == DT_UNKNOWN then          -- some file systems do not say
                local sub = C.opendir(dir .. "/" .. name)
                if sub ~= nil then
                    C.closedir(sub)
                    t = DT_DIR
                end
            end
            is_dir[name] = t == DT_DIR
        end
    end
    C.closedir(d)
    tbl_sort(names)
    return names, is_dir
end


function _M.exists(path)
    local f = io_open(path, "rb")
    if f then
        f:close()
        return true
    end
    local d = C.opendir(path)
    if d ~= nil then
        C.closedir(d)
        return true
    end
    return false
end


function _M.rename(from, to)
    if C.rename(from, to) ~= 0 then
        return why("cannot rename " .. from .. " to " .. to)
    end
    return sync_dir(dirname(to))
end


function _M.unlink(path)
    if C.unlink(path) ~= 0 and ffi_errno() ~= ENOENT then
        return why("cannot remove " .. path)
    end
    return true
end


-- Removes a folder and everything under it.
function _M.rm_rf(path)
    local names, is_dir = _M.list(path)
    if not names then
        return nil, is_dir
    end
    for _, name in ipairs(names) do
        local p = path .. "/" .. name
        local ok, err
        if is_dir[name] then
            ok, err = _M.rm_rf(p)
        else
            ok, err = _M.unlink(p)
        end
        if not ok then
            return nil, err
        end
    end
    if C.rmdir(path) ~= 0 and ffi_errno() ~= ENOENT then
        return why("cannot remove " .. path)
    end
    return true
end


return _M
