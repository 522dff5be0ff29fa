-- bench/vs-nginx.sh --signed: the Number signature as payauth sends it,
-- {SessKey}_{Epoch}_{UserID}_{HMAC-SHA256, upper-case hex}, the HMAC computed per request by
-- OpenSSL's libcrypto (which nginx links) through LuaJIT's FFI.
local ffi = require "ffi"
ffi.cdef [[
typedef struct evp_md_st EVP_MD;
const EVP_MD *EVP_sha256(void);
unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len,
                    const unsigned char *d, size_t n, unsigned char *md, unsigned int *md_len);
]]
local ok, crypto = pcall(function() ffi.C.EVP_sha256() return ffi.C end)
if not ok then crypto = ffi.load("libcrypto.so.3") end
local sha256 = crypto.EVP_sha256()
local hex = {}
for i = 0, 255 do hex[i] = string.format("%02X", i) end
local md = ffi.new("unsigned char[32]")
local md_len = ffi.new("unsigned int[1]")
local out = {}
local M = {}
function M.header(key, secret, user, epoch)
    local message = key .. "_" .. epoch .. "_" .. user
    crypto.HMAC(sha256, secret, #secret, message, #message, md, md_len)
    for i = 0, 31 do out[i + 1] = hex[md[i]] end
    return message .. "_" .. table.concat(out)
end
return M
