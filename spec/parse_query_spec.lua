-- runtime.parse_query is core.parse_query (C, host/lua_api.c); the Lua
-- parse_query in runtime.lua (runtime.parse_query_lua) is its reference.
-- The two must give the same table for every query string: percent
-- escapes, '+', repeated names, empty names and values, invalid escapes,
-- long and random inputs.
local runtime = require "lunaroom.runtime"

local C, REF = runtime.parse_query, runtime.parse_query_lua

local function same(q)
  local want, got = REF(q), C(q)
  assert.are.same(want, got, ("query %q"):format(tostring(q)))
  return got
end

describe("core.parse_query", function()
  it("is the C parser, not the Lua reference", function()
    assert.are.equal(require("lunaroom.core").parse_query, C)
    assert.are_not.equal(C, REF)
  end)

  it("parses like the Lua reference on chosen inputs", function()
    local cases = {
      "", "id=abc", "id=abc&_pk=x", "a=1&b=2&a=3", "a", "a&b", "=", "=x", "&", "&&&", "a=&=b&",
      "a==b", "a=b=c", "%41=%42", "a=%4", "a=%", "a=%%41", "a=%zz", "a=%4g", "a=%g4", "a=%2B+b",
      "+=+", "a+b=c+d", "%2B=%2b", "k=%00v", "%=%", "%%=%%", "a=%41%42%43", "na%6De=va%6Cue",
      "a=1&&b=2", "&a=1&", "x=%E2%82%AC", "x=%e2%82%ac", "a=+&b=%20", "a=%2", "a=%41&b=plain",
      "id=%20%20x%20%20", "transferToken=a%26b", "a%3Db=c", "a=b%3Dc", "ü=ö", "a=\0b", "\0=\0",
    }
    for _, q in ipairs(cases) do same(q) end
    assert.are.same({ a = "3", b = "2" }, same("a=1&b=2&a=3"))
    assert.are.same({ ["a b"] = "c d" }, same("a+b=c+d"))
    assert.are.same({ a = "%A" }, same("a=%%41"))
    assert.are.same({ a = "%zz" }, same("a=%zz"))
    assert.are.same({ a = "", b = "" }, same("a&b"))
    assert.are.same({}, same("=x&&="))
  end)

  it("treats nil as the empty query and refuses other types", function()
    assert.are.same({}, C(nil))
    assert.are.same({}, C())
    assert.has_error(function() C(12) end)
    assert.has_error(function() C({}) end)
  end)

  it("parses like the Lua reference on random inputs", function()
    local alphabet = { "a", "b", "=", "&", "%", "+", "4", "1", "F", "g", "z", " ", "\0", "\255", "%41", "%2B", "%4" }
    local seed = 12345
    local function rnd(n) -- a fixed LCG: the same inputs every run
      seed = (seed * 1103515245 + 12345) % 2147483648
      return seed % n + 1
    end
    for _ = 1, 3000 do
      local parts = {}
      for i = 1, rnd(24) - 1 do parts[i] = alphabet[rnd(#alphabet)] end
      same(table.concat(parts))
    end
  end)

  it("parses like the Lua reference on long inputs", function()
    same(("a=%41&"):rep(5000))
    same(("k" .. ("%2B"):rep(3000)) .. "=" .. ("+"):rep(4000))
    same(("x"):rep(100000))
    same(("a&"):rep(20000) .. "b=1")
    local parts = {}
    for i = 1, 2000 do parts[i] = "k" .. (i % 97) .. "=v%" .. string.format("%02X", i % 256) end
    same(table.concat(parts, "&"))
  end)
end)
