-- lua/meta/lunaroom.lua (the ---@meta annotations for editors, issue 20)
-- compiles and covers exactly what the modules export: every annotated name
-- exists, and every exported name (module fields, and the methods of rooms,
-- schemas and the testing handles) is annotated.
local META = "lua/meta/lunaroom.lua"

local function read(path)
  local f = assert(io.open(path))
  local s = f:read("a")
  f:close()
  return s
end

local function set_of(src, pattern)
  local out = {}
  for name in src:gmatch(pattern) do out[name] = true end
  return out
end

local function keys(t)
  local out = {}
  for k in pairs(t) do if type(k) == "string" and k:sub(1, 1) ~= "_" then out[k] = true end end
  return out
end

local function same(what, annotated, exported)
  local missing, extra = {}, {}
  for k in pairs(exported) do if not annotated[k] then missing[#missing + 1] = k end end
  for k in pairs(annotated) do if not exported[k] then extra[#extra + 1] = k end end
  table.sort(missing)
  table.sort(extra)
  assert.are.same({ {}, {} }, { missing, extra },
    what .. ": not annotated {" .. table.concat(missing, ",") .. "}, annotated but not exported {"
      .. table.concat(extra, ",") .. "}")
end

describe("lua/meta/lunaroom.lua", function()
  local meta = read(META)

  it("is a ---@meta file that compiles", function()
    assert.are.equal("---@meta lunaroom", meta:match("^[^\n]*"))
    assert(loadfile(META))
  end)

  it("annotates exactly the fields of require 'lunaroom'", function()
    local lr = require "lunaroom"
    local annotated = set_of(meta, "\nfunction lr%.([%w_]+)%(")
    for k in meta:gmatch("\nlr%.([%w_]+) =") do annotated[k] = true end
    same("lunaroom", annotated, keys(lr))
    same("lunaroom.v", set_of(meta, "\nfunction lr%.v%.([%w_]+)%("), keys(lr.v))
    same("lunaroom.jwt", set_of(meta, "\nfunction lr%.jwt%.([%w_]+)%("), keys(lr.jwt))
    local json = set_of(meta, "\nfunction lr%.json%.([%w_]+)%(")
    same("lr.json", json, set_of(read("lua/lunaroom/init.lua"), "\n    ([%w_]+) = function"))
    for k in pairs(json) do assert.is_function(lr.json[k], k) end
  end)

  it("annotates exactly the fields of require 'lunaroom.testing'", function()
    local annotated = set_of(meta, "\nfunction testing%.([%w_]+)%(")
    for k in meta:gmatch("\ntesting%.([%w_]+) =") do annotated[k] = true end
    same("lunaroom.testing", annotated, keys(require "lunaroom.testing"))
  end)

  it("annotates exactly the methods of rooms, schemas and the testing handles", function()
    local runtime, schema, testing = read("lua/lunaroom/runtime.lua"), read("lua/lunaroom/schema.lua"),
      read("lua/lunaroom/testing.lua")
    same("room:", set_of(meta, "\nfunction Room:([%w_]+)%("), set_of(runtime, "\nfunction Room:([%w_]+)%("))
    same("schema:", set_of(meta, "\nfunction Schema:([%w_]+)%("), set_of(schema, "\nfunction Schema:([%w_]+)%("))
    for _, cls in ipairs { "T", "Client", "StorageView" } do
      same(cls .. ":", set_of(meta, "\nfunction " .. cls .. ":([%w_]+)%("),
        set_of(testing, "\nfunction " .. cls .. ":([%w_]+)%("))
    end
  end)
end)
