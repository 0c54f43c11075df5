-- spec/jwt_spec.lua: lr.jwt (host/jwt.c, host/lua_jwt.c): the accept/refuse
-- matrix, exact claims, AUTH_JWT_SECRET at call time, bearer extraction, and
-- a room whose connect guard verifies the token.
--
-- Owns: the specs of lunaroom.jwt. Must not: leave AUTH_JWT_SECRET changed
-- for other spec files (every test that sets it restores it).

local testing = require "lunaroom.testing"
local lr = require "lunaroom"
local jwt = require "lunaroom.jwt"
local jwt_testing = require "lunaroom.jwt_testing"

local SECRET = "k"

-- Made with node's crypto exactly as the reference's JWTAuth.sign does
-- (header {"alg":...,"typ":"JWT"}, JSON.stringify payload, base64url), secret
-- "k", exp 4102444800 (2100-01-01).
local REF_HS256 = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbm4iLCJ3b3JsZHMiOlsiKiJdLCJpYXQiOjE3MDAwMDAwMDAsImV4cCI6NDEwMjQ0NDgwMH0.vs6XFgg1vg4Rmd0IimyiSDyzVpE82919-uEtAkQNrLc"
local REF_HS512 = "eyJhbGciOiJIUzUxMiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbm4iLCJpYXQiOjE3MDAwMDAwMDAsImV4cCI6NDEwMjQ0NDgwMH0.Q8H-m-0qnvjhCK_MyLN7UqS78Ct6OeC4s5rS1FlhazOCp26S3nUf8l_bRlTmOLDEraq3NVy6565v88yWPPeTgQ"
local REF_HS384 = "eyJhbGciOiJIUzM4NCIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbm4iLCJpYXQiOjE3MDAwMDAwMDAsImV4cCI6NDEwMjQ0NDgwMH0.-VIzkoLytafkM5dc6miTaVrtnHWQ704mX8KiYKssl8URSXi5gVyq48wXIYHtHor8"

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local function b64url(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = (a << 16) | ((b or 0) << 8) | (c or 0)
    local chars = 2 + (b and 1 or 0) + (c and 1 or 0)
    for k = 1, chars do
      local idx = (n >> (18 - 6 * (k - 1))) & 63
      out[#out + 1] = B64:sub(idx + 1, idx + 1)
    end
  end
  return table.concat(out)
end

local function parts(tok) return tok:match("^([^.]*)%.([^.]*)%.([^.]*)$") end

-- Run f with AUTH_JWT_SECRET set to value (nil = unset), then restore it.
local function with_env(value, f)
  local saved = os.getenv("AUTH_JWT_SECRET")
  jwt_testing.setenv("AUTH_JWT_SECRET", value)
  local ok, err = pcall(f)
  jwt_testing.setenv("AUTH_JWT_SECRET", saved)
  if not ok then error(err, 0) end
end

describe("lr.jwt.verify", function()
  it("accepts a valid HS256 token and returns its claims exactly", function()
    local tok = jwt.sign({ sub = "ann", worlds = { "*", "world-default" },
      n = { 1, { 2, 3 }, { x = 0.1, y = 0.1 + 0.2 } }, big = 9007199254740993, flag = true }, SECRET)
    local claims, reason = jwt.verify(tok, SECRET)
    assert.is_nil(reason)
    assert.are.equal("ann", claims.sub)
    assert.are.same({ "*", "world-default" }, claims.worlds)
    assert.are.equal(9007199254740993, claims.big)
    assert.are.equal("integer", math.type(claims.big))
    assert.are.equal("integer", math.type(claims.n[1]))
    assert.are.same({ 2, 3 }, claims.n[2])
    assert.are.equal(0.1, claims.n[3].x)
    assert.are.equal(0.1 + 0.2, claims.n[3].y)
    assert.is_true(claims.flag)
    assert.are.equal("integer", math.type(claims.exp))
    assert.are.equal(claims.iat + 3600, claims.exp) -- default expiresIn, as JWTAuth.sign
  end)

  it("accepts a token made the way the reference's JWTAuth.sign makes it", function()
    local claims = assert(jwt.verify(REF_HS256, "k"))
    assert.are.same({ "*" }, claims.worlds)
    assert.are.equal(1700000000, claims.iat)
  end)

  it("refuses an expired token", function()
    assert.are.same({ nil, "expired" }, { jwt.verify(jwt.sign({}, SECRET, { expiresIn = -1 }), SECRET) })
    assert.are.same({ nil, "expired" }, { jwt.verify(jwt.sign({}, SECRET, { expiresIn = 0 }), SECRET) })
  end)

  it("refuses a token whose nbf is in the future, accepts one whose nbf has passed", function()
    local tok = jwt.sign({ nbf = os.time() + 120 }, SECRET)
    assert.are.same({ nil, "not yet valid" }, { jwt.verify(tok, SECRET) })
    assert.is_table(jwt.verify(jwt.sign({ nbf = os.time() - 1 }, SECRET), SECRET))
  end)

  it("accepts a token without exp (as the reference), refuses it when exp is required", function()
    local tok = jwt.sign({ sub = "ann" }, SECRET, { expiresIn = false })
    assert.are.equal("ann", jwt.verify(tok, SECRET).sub)
    assert.are.same({ nil, "missing exp" }, { jwt.verify(tok, SECRET, { requireExp = true }) })
    -- the process setting (serve --jwt-require-exp) is the default for every verify
    jwt_testing.setenv("AUTH_JWT_REQUIRE_EXP", "1")
    local ok, a, b = pcall(jwt.verify, tok, SECRET)
    local c = jwt.verify(tok, SECRET, { requireExp = false })
    jwt_testing.setenv("AUTH_JWT_REQUIRE_EXP", nil)
    assert.is_true(ok)
    assert.are.same({ nil, "missing exp" }, { a, b })
    assert.are.equal("ann", c.sub)
    -- without exp, nbf is still checked; other algorithms are still refused
    assert.are.same({ nil, "not yet valid" },
      { jwt.verify(jwt.sign({ nbf = os.time() + 120 }, SECRET, { expiresIn = false }), SECRET) })
  end)

  it("refuses a wrong signature and a wrong secret", function()
    local tok = jwt.sign({ sub = "ann" }, SECRET)
    local h, p, s = parts(tok)
    local flipped = s:sub(1, 10) .. (s:sub(11, 11) == "A" and "B" or "A") .. s:sub(12)
    assert.are.same({ nil, "bad signature" }, { jwt.verify(h .. "." .. p .. "." .. flipped, SECRET) })
    -- Payload changed (sub = "admin"), signature of the old one.
    local forged = h .. "." .. b64url('{"sub":"admin","exp":4102444800}') .. "." .. s
    assert.are.same({ nil, "bad signature" }, { jwt.verify(forged, SECRET) })
    assert.are.same({ nil, "bad signature" }, { jwt.verify(tok, "K") })
    assert.are.same({ nil, "bad signature" }, { jwt.verify(REF_HS256, "k ") })
    assert.are.same({ nil, "bad signature" }, { jwt.verify(h .. "." .. p .. ".", SECRET) })
  end)

  it("refuses alg none, with or without a signature", function()
    local payload = b64url('{"sub":"admin","worlds":["*"],"exp":4102444800}')
    local none = b64url('{"alg":"none"}')
    assert.are.equal("eyJhbGciOiJub25lIn0", none)
    assert.are.same({ nil, "algorithm not allowed" }, { jwt.verify(none .. "." .. payload .. ".", SECRET) })
    local _, _, s = parts(REF_HS256)
    assert.are.same({ nil, "algorithm not allowed" }, { jwt.verify(none .. "." .. payload .. "." .. s, SECRET) })
    local none_typ = b64url('{"alg":"none","typ":"JWT"}')
    assert.are.same({ nil, "algorithm not allowed" }, { jwt.verify(none_typ .. "." .. payload .. ".", SECRET) })
  end)

  it("refuses HS384, HS512, RS256 and tokens whose header lies", function()
    assert.are.same({ nil, "algorithm not allowed" }, { jwt.verify(REF_HS512, "k") })
    assert.are.same({ nil, "algorithm not allowed" }, { jwt.verify(REF_HS384, "k") })
    local _, p, s = parts(REF_HS256)
    local rs = b64url('{"alg":"RS256","typ":"JWT"}')
    assert.are.same({ nil, "algorithm not allowed" }, { jwt.verify(rs .. "." .. p .. "." .. s, "k") })
    -- Header says HS256, the MAC is HS512's: refused.
    local _, p5, s5 = parts(REF_HS512)
    local hs256 = b64url('{"alg":"HS256","typ":"JWT"}')
    assert.are.same({ nil, "bad signature" }, { jwt.verify(hs256 .. "." .. p5 .. "." .. s5, "k") })
    -- Header says HS512, the MAC is a valid HS256 one: refused on the header.
    local hs512 = b64url('{"alg":"HS512","typ":"JWT"}')
    assert.are.same({ nil, "algorithm not allowed" }, { jwt.verify(hs512 .. "." .. p .. "." .. s, "k") })
    -- Lower-case alg is another algorithm name.
    local lower = b64url('{"alg":"hs256","typ":"JWT"}')
    assert.are.same({ nil, "algorithm not allowed" }, { jwt.verify(lower .. "." .. p .. "." .. s, "k") })
  end)

  it("refuses garbage", function()
    for _, g in ipairs({ "x", "a.b.c", "...", "a.b.c.d", "not a jwt", REF_HS256 .. ".x",
      REF_HS256:gsub("%.", "=", 1), " " .. REF_HS256, string.rep("A", 9000),
      b64url("[1]") .. ".e30.c2ln", b64url('{"alg":"HS256"}') .. "." .. b64url("[1,2]") .. ".c2ln" }) do
      local claims, reason = jwt.verify(g, SECRET)
      assert.is_nil(claims)
      assert.is_string(reason)
      assert.are_not.equal("ok", reason)
    end
    assert.are.same({ nil, "malformed" }, { jwt.verify("x", SECRET) })
    assert.are.same({ nil, "malformed" }, { jwt.verify(12, SECRET) })
    assert.are.same({ nil, "malformed" }, { jwt.verify({}, SECRET) })
    assert.are.same({ nil, "no token" }, { jwt.verify(nil, SECRET) })
    assert.are.same({ nil, "no token" }, { jwt.verify("", SECRET) })
  end)

  it("refuses a token longer than 8 KiB even when its signature is right", function()
    local tok = jwt.sign({ pad = string.rep("x", 8192) }, SECRET)
    assert.are.same({ nil, "malformed" }, { jwt.verify(tok, SECRET) })
  end)

  it("reads AUTH_JWT_SECRET at call time and raises, naming it, when it is missing", function()
    local tok = jwt.sign({ sub = "ann" }, "from-env")
    with_env(nil, function()
      local ok, err = pcall(jwt.verify, tok)
      assert.is_false(ok)
      assert.matches("AUTH_JWT_SECRET", err)
      assert.is_nil(err:find("from-env", 1, true))
    end)
    with_env("", function()
      local ok, err = pcall(jwt.verify, tok)
      assert.is_false(ok)
      assert.matches("AUTH_JWT_SECRET is not set", err)
    end)
    with_env("from-env", function()
      assert.are.equal("ann", jwt.verify(tok).sub)
      assert.are.same({ nil, "bad signature" }, { jwt.verify(tok, "other") }) -- explicit wins
    end)
    with_env("other", function()
      assert.are.same({ nil, "bad signature" }, { jwt.verify(tok) })
    end)
  end)

  it("raises on an empty or non-string secret", function()
    assert.has_error(function() jwt.verify(REF_HS256, "") end)
    assert.has_error(function() jwt.verify(REF_HS256, 42) end)
  end)
end)

describe("lr.jwt.sign", function()
  it("writes the reference's header and iat/exp, with expiresIn as seconds or 30s/5m/2h/1d", function()
    local tok = jwt.sign({ sub = "ann" }, SECRET, { expiresIn = "5m" })
    local h = parts(tok)
    assert.are.equal(b64url('{"alg":"HS256","typ":"JWT"}'), h)
    local c = jwt.verify(tok, SECRET)
    assert.are.equal(300, c.exp - c.iat)
    assert.are.equal(86400, (function() local x = jwt.verify(jwt.sign({}, SECRET, { expiresIn = "1d" }), SECRET) return x.exp - x.iat end)())
    assert.are.equal(42, (function() local x = jwt.verify(jwt.sign({}, SECRET, { expiresIn = 42 }), SECRET) return x.exp - x.iat end)())
  end)

  it("needs a secret (never the environment) and a claims table", function()
    with_env("from-env", function()
      assert.has_error(function() jwt.sign({}) end)
    end)
    assert.has_error(function() jwt.sign({}, "") end)
    assert.has_error(function() jwt.sign("x", SECRET) end)
    assert.has_error(function() jwt.sign({ 1, 2 }, SECRET) end)
    assert.has_error(function() jwt.sign({ f = print }, SECRET) end)
    assert.has_error(function() jwt.sign({}, SECRET, { expiresIn = "1y" }) end)
    assert.has_error(function() jwt.sign({}, SECRET, { expiresIn = math.maxinteger }) end)
  end)
end)

describe("lr.jwt.bearer", function()
  it("takes Authorization: Bearer, a raw Authorization value, then ?token / ?world-auth-token", function()
    assert.are.equal("abc", jwt.bearer({ request = { headers = { authorization = "Bearer abc" }, query = {} } }))
    assert.are.equal("abc", jwt.bearer({ headers = { authorization = "bearer   abc  " } }))
    assert.are.equal("raw.tok.en", jwt.bearer({ headers = { authorization = "raw.tok.en" } }))
    assert.are.equal("q", jwt.bearer({ request = { headers = {}, query = { token = "q" } } }))
    assert.are.equal("w", jwt.bearer({ headers = {}, query = { ["world-auth-token"] = "w" } }))
    assert.are.equal("h", jwt.bearer({ headers = { authorization = "Bearer h" }, query = { token = "q" } }))
    -- A raw query string (what lunaroom.ops sees).
    assert.are.equal("a+b c", jwt.bearer({ headers = {}, query = "x=1&token=a%2Bb+c" }))
    assert.are.equal("w", jwt.bearer({ headers = {}, query = "world-auth-token=w" }))
    -- names decoded too, an escape that is not two hex digits kept (the decoder of core.parse_query)
    assert.are.equal("k%zz%4", jwt.bearer({ headers = {}, query = "to%6Ben=k%zz%4" }))
    assert.is_nil(jwt.bearer({ headers = {}, query = "token=&x=1" }))
    assert.is_nil(jwt.bearer({ headers = { authorization = "Bearer " }, query = {} }))
    assert.is_nil(jwt.bearer({}))
    assert.is_nil(jwt.bearer(nil))
    assert.is_nil(jwt.bearer("Bearer x"))
  end)
end)

describe("lr.jwt in room scripts", function()
  local function secure_room()
    return lr.room {
      path = "secure",
      state = { names = lr.sync({}) },
      guards = {
        function(_conn, ctx)
          -- Room guards also run on every action (with the value): only the
          -- connect context carries a request.
          if type(ctx) ~= "table" or not ctx.request then return true end
          return lr.jwt.verify(lr.jwt.bearer(ctx)) ~= nil
        end,
      },
      onJoin = function(room, _user, conn, ctx)
        local claims = lr.jwt.verify(lr.jwt.bearer(ctx))
        room.names[conn.state.publicId] = claims.sub
      end,
    }
  end

  it("is lr.jwt, read-only", function()
    assert.are.equal(jwt, lr.jwt)
    assert.has_error(function() lr.jwt.verify = function() return {} end end)
    assert.has_error(function() rawset(lr.jwt, "verify", function() return {} end) end)
    assert.is_false(getmetatable(lr.jwt)) -- hidden
    local names = {}
    for k in pairs(lr.jwt) do names[#names + 1] = k end
    table.sort(names)
    assert.are.same({ "bearer", "sign", "verify" }, names)
  end)

  it("a connect guard admits a valid Bearer token and refuses the rest with 4001", function()
    with_env("room-secret", function()
      local t = testing.room(secure_room())
      local ok = t:client { headers = { authorization = "Bearer " .. jwt.sign({ sub = "ann" }, "room-secret") } }
      assert.is_nil(ok.closed)
      assert.are.equal("ann", t.room.names[ok.publicId])
      local q = t:client { query = { token = jwt.sign({ sub = "bob" }, "room-secret") } }
      assert.is_nil(q.closed)
      assert.are.equal("bob", t.room.names[q.publicId])
      local refused = {
        t:client {},
        t:client { headers = { authorization = "Bearer " .. jwt.sign({ sub = "eve" }, "wrong") } },
        t:client { headers = { authorization = "Bearer " .. jwt.sign({ sub = "eve" }, "room-secret", { expiresIn = -5 }) } },
        t:client { headers = { authorization = "Bearer " .. b64url('{"alg":"none"}') .. "." .. b64url('{"sub":"eve","exp":4102444800}') .. "." } },
        t:client { headers = { authorization = "Bearer garbage" } },
      }
      for _, c in ipairs(refused) do
        assert.are.equal(4001, c.closed and c.closed.code)
      end
      t:close()
    end)
  end)

  it("cannot be changed, nor its test helper reached, from a sandboxed room script", function()
    local sandbox = require "lunaroom.sandbox"
    local def, err = sandbox.load_room_source([[
      local lr = require "lunaroom"
      lr.jwt.verify = function() return { worlds = { "*" } } end
      return lr.room { path = "x" }
    ]], "@evil.lua", nil)
    assert.is_nil(def)
    assert.matches("read%-only", err)
    def, err = sandbox.load_room_source([[
      local t = require "lunaroom.jwt_testing"
      return require("lunaroom").room { path = "x" }
    ]], "@evil2.lua", nil)
    assert.is_nil(def)
    assert.matches("jwt_testing", err)
  end)
end)
