-- The cost of schema:parse on an action value: the move schema of the game
-- rooms ({x, y}, two bounded numbers) through parse (its fast path in C,
-- host/lua_schema.c), through the Lua fast path alone (its reference) and
-- through the issue-collecting check (what a refused value also runs).
-- Run: build/lunaroom lua bench/schema_bench.lua [N]
-- Prints ns per parse, best of 3; asserts nothing. For instruction counts,
-- run one path (SCHEMA_BENCH=parse or lua) under `valgrind --tool=callgrind`
-- with N and with 0 and divide the difference by 3N.
local v = require("lunaroom").v

local N = tonumber(arg and arg[1]) or 1000000
local s = v.object { x = v.number():min(0):max(1000), y = v.number():min(0):max(1000) }
local value = { x = 10, y = 20 }

local function bench(label, fn)
  local best = math.huge
  for _ = 1, 3 do
    local t0 = os.clock()
    for _ = 1, N do fn(s, value) end
    best = math.min(best, os.clock() - t0)
  end
  if N > 0 then print(string.format("%-40s %8.0f ns/parse (%d parses, best of 3)", label, best * 1e9 / N, N)) end
end

local mode = os.getenv("SCHEMA_BENCH") or "all"
if mode == "all" or mode == "parse" then bench("parse (C fast path)", s.parse) end
if mode == "all" or mode == "lua" then bench("Lua fast path alone", v._fast_lua) end
if mode == "all" then bench("issue-collecting check", v._parse_slow) end
