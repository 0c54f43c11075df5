-- spec/schema_spec.lua: busted spec for lua/lunaroom/schema.lua (lr.v).
-- Self-contained: depends on nothing else from Lunaroom.
-- Run from the repo root: lua5.4 /usr/bin/busted spec/schema_spec.lua

local prefix = "lua/?.lua;lua/?/init.lua;"
if package.path:sub(1, #prefix) ~= prefix then package.path = prefix .. package.path end

local v = require "lunaroom.schema"

local function marked(kind, t) return setmetatable(t or {}, { __jsontype = kind }) end

-- parse and expect success; returns the parsed value.
local function ok(schema, value)
  local good, out = schema:parse(value)
  assert.is_true(good, not good and out.message or nil)
  return out
end

-- parse and expect failure; returns err.
local function fail(schema, value)
  local good, err = schema:parse(value)
  assert.is_false(good, "expected a failure")
  assert.is_table(err)
  assert.is_string(err.message)
  assert.is_table(err.issues)
  return err
end

local function message(schema, value) return fail(schema, value).message end

describe("lr.v", function()
  describe("v.number", function()
    it("accepts Lua integers and floats", function()
      assert.are.equal(3, ok(v.number(), 3))
      assert.are.equal("integer", math.type(ok(v.number(), 3)))
      assert.are.equal(2.5, ok(v.number(), 2.5))
      assert.are.equal(-0.0, ok(v.number(), -0.0))
    end)

    it("rejects other types with invalid_type", function()
      local err = fail(v.number(), "5")
      assert.are.equal("must be a number", err.message)
      assert.are.same({ code = "invalid_type", expected = "number", received = "string",
        message = "must be a number", path = {} }, err.issues[1])
      assert.are.equal("boolean", fail(v.number(), true).issues[1].received)
      assert.are.equal("object", fail(v.number(), { a = 1 }).issues[1].received)
      assert.are.equal("array", fail(v.number(), { 1 }).issues[1].received)
      assert.are.equal("function", fail(v.number(), print).issues[1].received)
    end)

    it("rejects NaN and infinities", function()
      for _, x in ipairs { 0 / 0, math.huge, -math.huge } do
        local err = fail(v.number(), x)
        assert.are.equal("must be a finite number", err.message)
        assert.are.equal("not_finite", err.issues[1].code)
      end
    end)

    it("reports a missing value as required (received undefined)", function()
      local err = fail(v.number(), nil)
      assert.are.equal("is required", err.message)
      assert.are.equal("invalid_type", err.issues[1].code)
      assert.are.equal("number", err.issues[1].expected)
      assert.are.equal("undefined", err.issues[1].received)
    end)

    it(":min and :max bound the value inclusively", function()
      local s = v.number():min(0):max(1000)
      assert.are.equal(0, ok(s, 0))
      assert.are.equal(1000, ok(s, 1000))
      assert.are.equal(999.5, ok(s, 999.5))
      local err = fail(s, 1000.5)
      assert.are.equal("must be <= 1000", err.message)
      assert.are.equal("too_big", err.issues[1].code)
      assert.are.equal(1000, err.issues[1].maximum)
      err = fail(s, -1)
      assert.are.equal("must be >= 0", err.message)
      assert.are.equal("too_small", err.issues[1].code)
      assert.are.equal(0, err.issues[1].minimum)
    end)

    it("prints bounds the way JSON clients expect", function()
      assert.are.equal("must be <= 1000", message(v.number():max(1000.0), 2000))
      assert.are.equal("must be >= 0.1", message(v.number():min(0.1), 0))
      assert.are.equal("must be >= -2.5", message(v.number():min(-2.5), -3))
    end)

    it(":int requires an integer value", function()
      local s = v.number():int()
      assert.are.equal(4, ok(s, 4))
      local err = fail(s, 4.5)
      assert.are.equal("must be an integer", err.message)
      assert.are.same({ "invalid_type", "integer", "number" },
        { err.issues[1].code, err.issues[1].expected, err.issues[1].received })
    end)
  end)

  describe("v.integer", function()
    it("accepts integers, including integral floats, and returns a Lua integer", function()
      assert.are.equal(3, ok(v.integer(), 3))
      local out = ok(v.integer(), 3.0)
      assert.are.equal(3, out)
      assert.are.equal("integer", math.type(out))
      assert.are.equal(-7, ok(v.integer(), -7.0))
    end)

    it("keeps integral floats outside the integer range as floats", function()
      assert.are.equal(2 ^ 70, ok(v.integer(), 2 ^ 70))
    end)

    it("rejects fractions, non-numbers and non-finite values", function()
      assert.are.equal("must be an integer", message(v.integer(), 1.5))
      local err = fail(v.integer(), "1")
      assert.are.equal("must be an integer", err.message)
      assert.are.equal("integer", err.issues[1].expected)
      assert.are.equal("string", err.issues[1].received)
      assert.are.equal("must be a finite number", message(v.integer(), math.huge))
      assert.are.equal("integer", fail(v.integer(), nil).issues[1].expected)
    end)

    it("collects the integer issue and the bound issues together", function()
      local err = fail(v.integer():max(10), 10.5)
      assert.are.equal(2, #err.issues)
      assert.are.equal("invalid_type", err.issues[1].code)
      assert.are.equal("too_big", err.issues[2].code)
    end)
  end)

  describe("v.string", function()
    it("accepts strings only", function()
      assert.are.equal("hi", ok(v.string(), "hi"))
      assert.are.equal("", ok(v.string(), ""))
      assert.are.equal("must be a string", message(v.string(), 1))
    end)

    it(":min, :max and :length bound the length", function()
      local s = v.string():min(2):max(4)
      assert.are.equal("ab", ok(s, "ab"))
      assert.are.equal("abcd", ok(s, "abcd"))
      local err = fail(s, "a")
      assert.are.equal("must have length >= 2", err.message)
      assert.are.equal("too_small", err.issues[1].code)
      assert.are.equal("string", err.issues[1].type)
      assert.are.equal("must have length <= 4", message(s, "abcde"))
      local exact = v.string():length(3)
      assert.are.equal("abc", ok(exact, "abc"))
      assert.are.equal("must have length 3", message(exact, "ab"))
      assert.are.equal("too_small", fail(exact, "ab").issues[1].code)
      assert.are.equal("too_big", fail(exact, "abcd").issues[1].code)
    end)

    it("counts UTF-8 characters, not bytes", function()
      assert.are.equal("héé", ok(v.string():length(3), "héé"))
    end)

    it(":pattern matches a Lua pattern (unanchored unless ^ $)", function()
      local s = v.string():pattern("^%a+$")
      assert.are.equal("abc", ok(s, "abc"))
      local err = fail(s, "ab1")
      assert.are.equal("must match pattern ^%a+$", err.message)
      assert.are.equal("invalid_string", err.issues[1].code)
      assert.are.equal("abc1", ok(v.string():pattern("%d"), "abc1"))
    end)

    it(":pattern rejects a malformed pattern when the schema is built", function()
      assert.has_error(function() v.string():pattern("[a") end)
    end)

    it("collects length and pattern issues together", function()
      local err = fail(v.string():min(3):pattern("^%d+$"), "a")
      assert.are.equal(2, #err.issues)
      assert.are.equal("must have length >= 3", err.message)
      assert.are.equal("invalid_string", err.issues[2].code)
    end)
  end)

  describe("v.boolean", function()
    it("accepts true and false only", function()
      assert.is_true(ok(v.boolean(), true))
      assert.is_false(ok(v.boolean(), false))
      assert.are.equal("must be a boolean", message(v.boolean(), 0))
      assert.are.equal("must be a boolean", message(v.boolean(), "true"))
    end)
  end)

  describe("v.enum", function()
    it("accepts one of the listed values", function()
      local s = v.enum { "a", "b" }
      assert.are.equal("b", ok(s, "b"))
      local err = fail(s, "c")
      assert.are.equal("must be one of: a, b", err.message)
      assert.are.equal("invalid_enum_value", err.issues[1].code)
      assert.are.same({ "a", "b" }, err.issues[1].options)
      assert.are.equal("c", err.issues[1].received)
      assert.are.equal("must be one of: a, b", message(s, 1))
    end)

    it("does not keep a reference to the caller's list", function()
      local list = { "a" }
      local s = v.enum(list)
      list[1] = "z"
      assert.are.equal("a", ok(s, "a"))
    end)

    it("requires a non-empty list of strings or numbers", function()
      assert.has_error(function() v.enum {} end)
      assert.has_error(function() v.enum { {} } end)
    end)
  end)

  describe("v.literal", function()
    it("accepts exactly the value", function()
      assert.are.equal("move", ok(v.literal("move"), "move"))
      assert.are.equal(42, ok(v.literal(42), 42))
      assert.is_true(ok(v.literal(true), true))
      local err = fail(v.literal("move"), "jump")
      assert.are.equal("must equal move", err.message)
      assert.are.same({ "invalid_literal", "move", "jump" },
        { err.issues[1].code, err.issues[1].expected, err.issues[1].received })
      assert.are.equal("must equal 42", message(v.literal(42), 41))
    end)

    it("rejects nil and tables as the literal", function()
      assert.has_error(function() v.literal(nil) end)
      assert.has_error(function() v.literal({}) end)
    end)
  end)

  describe("v.any", function()
    it("accepts anything, nil included, and returns it as given", function()
      local t = { 1, 2 }
      assert.are.equal(t, ok(v.any(), t))
      assert.are.equal("x", ok(v.any(), "x"))
      assert.is_nil(ok(v.any(), nil))
      assert.are.same({ a = {} }, ok(v.object { a = v.any() }, { a = {} }))
    end)
  end)

  describe("v.array", function()
    it("accepts sequences and returns a new marked array", function()
      local input = { 1, 2, 3 }
      local out = ok(v.array(v.number()), input)
      assert.are.same({ 1, 2, 3 }, out)
      assert.are_not.equal(input, out)
      assert.are.equal("array", getmetatable(out).__jsontype)
    end)

    it("accepts an empty table and a marked empty array", function()
      assert.are.same({}, ok(v.array(v.number()), {}))
      assert.are.same({}, ok(v.array(v.number()), marked("array")))
      assert.are.equal("array", getmetatable(ok(v.array(v.number()), {})).__jsontype)
    end)

    it("rejects objects and non-tables", function()
      local s = v.array(v.number())
      assert.are.equal("must be an array", message(s, { a = 1 }))
      assert.are.equal("must be an array", message(s, { [2] = 1 }))
      assert.are.equal("must be an array", message(s, marked("object")))
      local err = fail(s, "x")
      assert.are.same({ "invalid_type", "array", "string" },
        { err.issues[1].code, err.issues[1].expected, err.issues[1].received })
    end)

    it("reports item issues with 0-based indices, all of them", function()
      local err = fail(v.array(v.number():max(10)), { 1, 20, "x" })
      assert.are.equal("1: must be <= 10", err.message)
      assert.are.equal(2, #err.issues)
      assert.are.same({ 1 }, err.issues[1].path)
      assert.are.same({ 2 }, err.issues[2].path)
      assert.are.equal("must be a number", err.issues[2].message)
    end)

    it(":min, :max and :length bound the number of items", function()
      local s = v.array(v.any()):min(1):max(2)
      assert.are.equal("must have length >= 1", message(s, {}))
      assert.are.equal("must have length <= 2", message(s, { 1, 2, 3 }))
      assert.are.equal("array", fail(s, {}).issues[1].type)
      assert.are.same({ 1, 2 }, ok(s, { 1, 2 }))
      assert.are.equal("must have length 2", message(v.array(v.any()):length(2), { 1 }))
    end)

    it("requires a schema for items", function()
      assert.has_error(function() v.array("number") end)
    end)
  end)

  describe("v.object", function()
    local point = v.object { x = v.number(), y = v.number() }

    it("accepts tables with the fields and returns a new marked object", function()
      local input = { x = 1, y = 2 }
      local out = ok(point, input)
      assert.are.same({ x = 1, y = 2 }, out)
      assert.are_not.equal(input, out)
      assert.are.equal("object", getmetatable(out).__jsontype)
    end)

    it("accepts an empty table and a marked object as objects", function()
      assert.are.same({}, ok(v.object {}, {}))
      assert.are.same({}, ok(v.object {}, marked("object")))
      assert.are.same({ n = 1 }, ok(v.object { n = v.number() }, marked("object", { n = 1 })))
    end)

    it("rejects arrays and non-tables", function()
      assert.are.equal("must be an object", message(point, { 1, 2 }))
      assert.are.equal("must be an object", message(v.object {}, marked("array")))
      local err = fail(point, 5)
      assert.are.same({ "invalid_type", "object", "number" },
        { err.issues[1].code, err.issues[1].expected, err.issues[1].received })
    end)

    it("reports a missing field as required", function()
      local err = fail(point, { x = 1 })
      assert.are.equal("y: is required", err.message)
      assert.are.same({ code = "invalid_type", expected = "number", received = "undefined",
        message = "is required", path = { "y" } }, err.issues[1])
    end)

    it("strips unknown keys by default without touching the input", function()
      local input = { x = 1, y = 2, z = 3, [1] = "a" }
      assert.are.same({ x = 1, y = 2 }, ok(point, input))
      assert.are.equal(3, input.z)
    end)

    it(":strict reports each unknown key at the object's path", function()
      local s = point:strict()
      assert.are.same({ x = 1, y = 2 }, ok(s, { x = 1, y = 2 }))
      local err = fail(s, { x = 1, y = 2, z = 3, a = 4 })
      assert.are.equal("unknown key: a", err.message)
      assert.are.equal(2, #err.issues)
      assert.are.same({ code = "unrecognized_keys", keys = { "a" }, message = "unknown key: a",
        path = {} }, err.issues[1])
      assert.are.equal("unknown key: z", err.issues[2].message)
      local nested = v.object { p = s }
      assert.are.equal("p: unknown key: q", message(nested, { p = { x = 1, y = 2, q = 0 } }))
    end)

    it("collects all issues in sorted key order, message from the first", function()
      local err = fail(v.object { b = v.string(), a = v.number(), c = v.boolean() },
        { a = "no", b = 1, c = true })
      assert.are.equal("a: must be a number", err.message)
      assert.are.equal(2, #err.issues)
      assert.are.same({ "b" }, err.issues[2].path)
    end)

    it("validates the design.md move schema", function()
      local move = v.object { x = v.number():min(0):max(1000), y = v.number():min(0):max(1000) }
      assert.are.same({ x = 10, y = 999.5 }, ok(move, { x = 10, y = 999.5 }))
      local err = fail(move, { x = 2000, y = 5 })
      assert.are.equal("x: must be <= 1000", err.message)
      assert.are.same({ code = "too_big", message = "must be <= 1000", path = { "x" },
        maximum = 1000, inclusive = true, exact = false, type = "number" }, err.issues[1])
      assert.are.equal("y: must be >= 0", message(move, { x = 0, y = -1 }))
      assert.are.equal("y: must be a number", message(move, { x = 0, y = "1" }))
      assert.are.equal("must be an object", message(move, "move"))
      assert.are.equal("object{x:number>=0<=1000,y:number>=0<=1000}", move:describe())
    end)

    it("builds nested dotted paths with 0-based array indices", function()
      local s = v.object { players = v.array(v.object { x = v.number():max(1000) }) }
      local err = fail(s, { players = { { x = 1 }, { x = 2 }, { x = 5000 } } })
      assert.are.equal("players.2.x: must be <= 1000", err.message)
      assert.are.same({ "players", 2, "x" }, err.issues[1].path)
      assert.are.equal("players.0.x: must be <= 1000",
        message(s, { players = { { x = 1001 } } }))
      local deep = v.object { a = v.object { b = v.array(v.array(v.string())) } }
      assert.are.equal("a.b.1.0: must be a string", message(deep, { a = { b = { {}, { 7 } } } }))
    end)

    it("requires field schemas and string field names", function()
      assert.has_error(function() v.object { x = "number" } end)
      assert.has_error(function() v.object { v.number() } end)
      assert.has_error(function() v.object("x") end)
    end)

    it("does not keep a reference to the caller's shape", function()
      local shape = { x = v.number() }
      local s = v.object(shape)
      shape.y = v.number()
      assert.are.same({ x = 1 }, ok(s, { x = 1 }))
    end)
  end)

  describe(":optional", function()
    it("accepts nil and leaves the field out", function()
      local s = v.object { name = v.string():optional(), n = v.number() }
      assert.are.same({ n = 1 }, ok(s, { n = 1 }))
      assert.are.same({ n = 1, name = "a" }, ok(s, { n = 1, name = "a" }))
      assert.are.equal("name: must be a string", message(s, { n = 1, name = 3 }))
      assert.is_nil(ok(v.number():optional(), nil))
    end)

    it("still validates present values", function()
      assert.are.equal("must be <= 3", message(v.number():max(3):optional(), 4))
    end)
  end)

  describe(":default", function()
    it("replaces nil with the default", function()
      local s = v.object { hp = v.number():default(100), tag = v.string():default("x") }
      assert.are.same({ hp = 100, tag = "x" }, ok(s, {}))
      assert.are.same({ hp = 5, tag = "x" }, ok(s, { hp = 5 }))
      assert.is_false(ok(v.boolean():default(false), nil))
    end)

    it("does not replace a present but invalid value", function()
      assert.are.equal("hp: must be a number",
        message(v.object { hp = v.number():default(100) }, { hp = "a" }))
    end)

    it("gives each parse its own copy of a table default, validated", function()
      local s = v.object { opts = v.object { size = v.number():default(1) }:default({}) }
      local a = ok(s, {})
      assert.are.same({ opts = { size = 1 } }, a)
      a.opts.size = 99
      assert.are.same({ opts = { size = 1 } }, ok(s, {}))
      local tags = v.array(v.string()):default({ "a" })
      local t1 = ok(tags, nil)
      t1[2] = "b"
      assert.are.same({ "a" }, ok(tags, nil))
    end)

    it("rejects nil as a default", function()
      assert.has_error(function() v.number():default(nil) end)
    end)
  end)

  describe("v.union", function()
    local s = v.union { v.number(), v.string() }

    it("returns the first option that accepts the value", function()
      assert.are.equal(1, ok(s, 1))
      assert.are.equal("a", ok(s, "a"))
      local shapes = v.union {
        v.object { kind = v.literal("circle"), r = v.number() },
        v.object { kind = v.literal("rect"), w = v.number(), h = v.number() },
      }
      assert.are.same({ kind = "rect", w = 1, h = 2 },
        ok(shapes, { kind = "rect", w = 1, h = 2, r = 3 }))
    end)

    it("reports invalid_union when no option matches the type", function()
      local err = fail(s, true)
      assert.are.equal("must match one of: number, string", err.message)
      assert.are.equal("invalid_union", err.issues[1].code)
      assert.are.equal("boolean", err.issues[1].received)
      assert.are.equal(2, #err.issues[1].unionErrors)
      assert.are.equal("must be a number", err.issues[1].unionErrors[1][1].message)
      local lit = v.union { v.literal("a"), v.literal("b") }
      assert.are.equal("invalid_union", fail(lit, "c").issues[1].code)
    end)

    it("reports the issues of an option whose shape matched", function()
      local u = v.union { v.string(), v.object { x = v.number():max(10) } }
      assert.are.equal("x: must be <= 10", message(u, { x = 11 }))
      assert.are.equal("must be <= 5", message(v.union { v.number():max(5), v.boolean() }, 6))
      local nested = v.object { p = u }
      assert.are.equal("p.x: must be <= 10", message(nested, { p = { x = 11 } }))
    end)

    it("is required unless optional", function()
      assert.are.equal("is required", message(s, nil))
      assert.are.equal("number|string", fail(s, nil).issues[1].expected)
      assert.is_nil(ok(s:optional(), nil))
    end)

    it("requires a non-empty list of schemas", function()
      assert.has_error(function() v.union {} end)
      assert.has_error(function() v.union { v.number(), 3 } end)
    end)
  end)

  describe("modifiers", function()
    it("return new schemas and never mutate the original", function()
      local base = v.number()
      local bounded = base:min(0):max(10)
      local opt = bounded:optional()
      assert.are_not.equal(base, bounded)
      assert.are.equal(50, ok(base, 50))
      assert.are.equal("must be <= 10", message(bounded, 50))
      assert.are.equal("is required", message(bounded, nil))
      assert.is_nil(ok(opt, nil))
      assert.are.equal("number", base:describe())
      assert.are.equal("number>=0<=10", bounded:describe())

      local obj = v.object { a = v.number() }
      local strict = obj:strict()
      assert.are.same({ a = 1 }, ok(obj, { a = 1, b = 2 }))
      assert.are.equal("unknown key: b", message(strict, { a = 1, b = 2 }))

      local str = v.string()
      local pat = str:pattern("^a")
      assert.are.equal("b", ok(str, "b"))
      assert.are.equal("must match pattern ^a", message(pat, "b"))
      local d = str:default("z")
      assert.are.equal("is required", message(str, nil))
      assert.are.equal("z", ok(d, nil))
    end)

    it("can be chained in any order and overridden later", function()
      assert.are.equal(5, ok(v.number():max(3):optional():max(5), 5))
      assert.are.equal("must be an integer", message(v.number():optional():int(), 1.5))
    end)

    it("refuse kinds they do not apply to", function()
      assert.has_error(function() v.boolean():min(1) end)
      assert.has_error(function() v.object {}:max(1) end)
      assert.has_error(function() v.number():length(2) end)
      assert.has_error(function() v.string():int() end)
      assert.has_error(function() v.number():pattern("x") end)
      assert.has_error(function() v.array(v.any()):strict() end)
      assert.has_error(function() v.number():min("1") end)
      assert.has_error(function() v.number():max(0 / 0) end)
    end)
  end)

  describe("errors", function()
    it("have a message and zod-shaped issues that tostring() shows", function()
      local err = fail(v.object { x = v.number() }, { x = "1" })
      assert.are.equal("x: must be a number", tostring(err))
      assert.are.same({ { code = "invalid_type", expected = "number", received = "string",
        message = "must be a number", path = { "x" } } }, err.issues)
    end)

    it("name the host's JSON null sentinel as null", function()
      local null = setmetatable({}, { __name = "null" })
      v.set_null(null)
      local err = fail(v.number(), null)
      v.set_null(nil)
      assert.are.equal("null", err.issues[1].received)
      assert.are.equal("object", fail(v.number(), {}).issues[1].received)
    end)

    it("refuse parse called with a dot", function()
      assert.has_error(function() v.number().parse(1) end)
    end)
  end)

  describe("v.is_schema", function()
    it("recognises schemas only", function()
      assert.is_true(v.is_schema(v.number()))
      assert.is_true(v.is_schema(v.object {}:strict()))
      assert.is_false(v.is_schema({}))
      assert.is_false(v.is_schema(nil))
      assert.is_false(v.is_schema("number"))
    end)
  end)

  describe(":describe", function()
    it("gives a short one-line form", function()
      assert.are.equal("object{x:number<=1000,y:number}",
        v.object { x = v.number():max(1000), y = v.number() }:describe())
      assert.are.equal("integer>=1", v.integer():min(1):describe())
      assert.are.equal("string[1..20]", v.string():min(1):max(20):describe())
      assert.are.equal("string[3]/^%a+$/", v.string():length(3):pattern("^%a+$"):describe())
      assert.are.equal("array<boolean>[..4]?", v.array(v.boolean()):max(4):optional():describe())
      assert.are.equal("enum(a|b)", v.enum { "a", "b" }:describe())
      assert.are.equal("literal(7)", v.literal(7):describe())
      assert.are.equal("(number|string)=0",
        v.union { v.number(), v.string() }:default(0):describe())
      assert.are.equal("object{}:strict", v.object {}:strict():describe())
      assert.are.equal("any", tostring(v.any()))
    end)
  end)

  describe("the module", function()
    it("uses no io, os, debug, load or require", function()
      local f = assert(io.open("lua/lunaroom/schema.lua"))
      local src = f:read("a")
      f:close()
      local code = src:gsub("%-%-[^\n]*", "")
      for _, name in ipairs { "io", "os", "debug", "load", "loadstring", "dofile", "require" } do
        assert.is_nil(code:find("%f[%w_]" .. name .. "%f[^%w_]"), name .. " is used")
      end
    end)

    it("loads in an environment with only the pure standard libraries", function()
      local f = assert(io.open("lua/lunaroom/schema.lua"))
      local src = f:read("a")
      f:close()
      local env = {
        type = type, next = next, ipairs = ipairs, tostring = tostring, tonumber = tonumber,
        error = error, pcall = pcall, rawget = rawget, rawequal = rawequal,
        getmetatable = getmetatable, setmetatable = setmetatable,
        math = math, string = string, table = table, utf8 = utf8,
      }
      setmetatable(env, { __index = function(_, k) error("global " .. k .. " used", 2) end })
      local sv = assert(load(src, "=schema.lua", "t", env))()
      local good, err = sv.object { x = sv.number():max(1) }:parse({ x = 2 })
      assert.is_false(good)
      assert.are.equal("x: must be <= 1", err.message)
    end)
  end)
end)

-- parse's fast path (no issue bookkeeping) must accept exactly what the
-- issue-collecting check accepts and return the same value: random
-- schemas of every kind against random values, both ways compared.
describe("schema fast path", function()
  local v = require("lunaroom").v
  local seed = 12345
  local function rnd(n) -- deterministic: the same cases on every run
    seed = (seed * 1103515245 + 12345) % 2147483648
    return seed % n + 1
  end
  local function rschema(depth)
    local k = rnd(depth > 2 and 7 or 10)
    local s
    if k == 1 then s = v.number()
    elseif k == 2 then s = v.integer()
    elseif k == 3 then s = v.string()
    elseif k == 4 then s = v.boolean()
    elseif k == 5 then s = v.enum { "a", "b", 3 }
    elseif k == 6 then s = v.literal(rnd(2) == 1 and "x" or 2)
    elseif k == 7 then s = v.any()
    elseif k == 8 then s = v.array(rschema(depth + 1))
    elseif k == 9 then s = v.object { a = rschema(depth + 1), b = rschema(depth + 1) }
    else s = v.union { rschema(depth + 1), rschema(depth + 1) } end
    local m = rnd(8)
    if m == 1 and (k <= 3 or k == 8) then s = s:min(rnd(3) - 1) end
    if m == 2 and (k <= 3 or k == 8) then s = s:max(rnd(4)) end
    if m == 3 and (k == 3 or k == 8) then s = s:length(rnd(3) - 1) end
    if m == 4 and k == 3 then s = s:pattern("^[a-c]+$") end
    if m == 5 and k == 9 then s = s:strict() end
    if m == 6 then s = s:optional() end
    if m == 7 and k == 1 then s = s:default(1.5) end
    return s
  end
  local function rvalue(depth)
    local k = rnd(depth > 2 and 8 or 11)
    if k == 1 then return rnd(7) - 3 end
    if k == 2 then return (rnd(9) - 5) / 2 end
    if k == 3 then return ({ 0 / 0, math.huge, -math.huge, 3.0 })[rnd(4)] end
    if k == 4 then return ({ "", "a", "ab", "abc", "x", "héé", "\255" })[rnd(7)] end
    if k == 5 then return rnd(2) == 1 end
    if k == 6 then return nil end
    if k == 7 then return ({ "a", "b", 3, "x", 2 })[rnd(5)] end
    if k == 8 then return {} end
    if k == 9 then local t = {} for i = 1, rnd(4) - 1 do t[i] = rvalue(depth + 1) end return t end
    if k == 10 then return { a = rvalue(depth + 1), b = rvalue(depth + 1), c = rnd(3) == 1 and 1 or nil } end
    return setmetatable({}, { __jsontype = rnd(2) == 1 and "array" or "object" })
  end
  local function same(a, b)
    if type(a) ~= type(b) then return false end
    if type(a) ~= "table" then return a == b or (a ~= a and b ~= b) end
    if getmetatable(a) ~= getmetatable(b) then return false end
    for k, x in pairs(a) do if not same(x, b[k]) then return false end end
    for k in pairs(b) do if a[k] == nil then return false end end
    return true
  end
  it("gives what the slow path gives on 20,000 random cases", function()
    local accepted, refused = 0, 0
    for _ = 1, 20000 do
      local s, x = rschema(0), rvalue(0)
      local ok1, out1 = s:parse(x)
      local ok2, out2 = v._parse_slow(s, x)
      assert.are.equal(ok2, ok1, s:describe())
      if ok1 then
        accepted = accepted + 1
        assert.is_true(same(out1, out2), s:describe())
      else
        refused = refused + 1
        assert.are.equal(out2.message, out1.message)
      end
    end
    assert.is_true(accepted > 2000 and refused > 2000, accepted .. " accepted, " .. refused .. " refused")
  end)

  -- host/lua_schema.c: FAST in C. It answers true, out / false, or nil
  -- (left to the Lua fast path): where it answers, it must be the Lua one.
  it("in C gives what the Lua fast path gives on 50,000 random cases", function()
    local yes, no, left = 0, 0, 0
    for _ = 1, 50000 do
      local s, x = rschema(0), rvalue(0)
      local ok1, out1 = v._fast_c(s, x)
      assert.are_not.equal("none", out1, "the host has core.schema_fast")
      if ok1 == nil then
        left = left + 1
      else
        local ok2, out2 = v._fast_lua(s, x)
        assert.are.equal(ok2, ok1, s:describe())
        if ok1 then
          yes = yes + 1
          assert.is_true(same(out1, out2), s:describe())
        else
          no = no + 1
        end
      end
    end
    assert.is_true(yes > 5000 and no > 5000 and left < 10000, yes .. " accepted, " .. no .. " refused, " .. left .. " left")
  end)

  it("in C: integers, bounds, metamethods, hidden metatables, strictness, depth", function()
    local function both(s, x)
      local ok1, out1 = v._fast_c(s, x)
      local ok2, out2 = v._fast_lua(s, x)
      assert.are.equal(ok2, ok1, s:describe())
      if ok1 then assert.is_true(same(out1, out2), s:describe()) end
      return ok1, out1
    end
    local ok, out = both(v.integer(), 3.0)
    assert.is_true(ok)
    assert.are.equal("integer", math.type(out))
    ok, out = both(v.integer(), 2.0 ^ 63) -- no integer holds it: the float stays
    assert.is_true(ok)
    assert.are.equal("float", math.type(out))
    ok, out = both(v.integer(), -2.0 ^ 63)
    assert.are.equal("integer", math.type(out))
    assert.is_false((both(v.integer(), 2.5)))
    assert.is_false((both(v.number():max(1), 1 + 2 ^ -52)))
    assert.is_true((both(v.number():max(1), 1)))
    assert.is_true((both(v.number():min(0), -0.0)))
    assert.is_false((both(v.number():min(math.mininteger + 1), math.mininteger)))
    assert.is_false((both(v.number(), 0 / 0)))
    assert.is_false((both(v.number(), -math.huge)))
    assert.is_true((both(v.string():max(3), "héé")))       -- 3 characters, 5 bytes
    assert.is_false((both(v.string():max(3), "hé\255")))  -- invalid UTF-8: its bytes count
    assert.is_true((both(v.string():length(0), "")))
    -- values read as Lua reads them: x[k] through __index, #x through __len
    local proxy = setmetatable({}, { __index = function(_, k) return k == "a" and 7 or nil end })
    ok, out = both(v.object { a = v.number() }, proxy)
    assert.are.equal(7, out.a)
    local arr = setmetatable({}, { __jsontype = "array", __len = function() return 2 end,
      __index = function(_, i) return i * 10 end })
    ok, out = both(v.array(v.number()), arr)
    assert.are.same({ 10, 20 }, { out[1], out[2] })
    -- getmetatable's __metatable hides __jsontype
    local hidden = setmetatable({}, { __jsontype = "array", __metatable = "locked" })
    both(v.array(v.any()), hidden)
    both(v.object {}, hidden)
    local shown = setmetatable({}, { __metatable = { __jsontype = "array" } })
    assert.is_false((both(v.object {}, shown)))
    -- strict: a number key, an unknown key
    assert.is_false((both(v.object { a = v.any() }:strict(), { a = 1, [1] = 2 })))
    assert.is_false((both(v.object { a = v.any() }:strict(), { a = 1, b = 2 })))
    assert.is_true((both(v.object { a = v.any() }:strict(), { a = 1 })))
    -- left to Lua: a pattern, a default; deeper than the C path goes
    assert.is_nil((v._fast_c(v.string():pattern("^a"), "a")))
    assert.is_nil((v._fast_c(v.number():default(1), nil)))
    local deep, val = v.number(), 5
    for _ = 1, 150 do deep, val = v.array(deep), { val } end
    assert.is_nil((v._fast_c(deep, val)))
    assert.is_true((deep:parse(val)))
    assert.is_true((both(v.union { v.number(), v.string() }, "s")))
    assert.is_false((both(v.union { v.number(), v.string() }, true)))
  end)

  -- The runtime's parse of an action's value (v._parse_owned): the value is
  -- the C path's output itself when an object schema accepts it; it must
  -- equal what the copying paths give, and stay untouched when refused or
  -- left to Lua.
  it("of a value nobody else holds gives what parse gives on 20,000 random cases", function()
    local function copy(x)
      if type(x) ~= "table" then return x end
      local t = {}
      for k, val in pairs(x) do t[k] = copy(val) end
      return setmetatable(t, getmetatable(x))
    end
    local inplace = 0
    for _ = 1, 20000 do
      local s = rschema(0)
      local x = rvalue(0)
      if type(x) == "table" and getmetatable(x) == nil and rnd(2) == 1 then x.zz = rnd(3) end -- an unknown key
      local mine, keep = copy(x), copy(x)
      local ok1, out1 = s:parse(x)
      local ok2, out2 = v._parse_owned(s, mine)
      assert.are.equal(ok1, ok2, s:describe())
      if ok1 then
        assert.is_true(same(out1, out2), s:describe())
        if type(mine) == "table" and rawequal(out2, mine) then inplace = inplace + 1 end
      else
        assert.is_true(same(mine, keep), "a refused value is left as it came: " .. s:describe())
      end
    end
    assert.is_true(inplace > 300, inplace .. " parsed in place")
  end)

  it("of a value nobody else holds: in place, unknown keys cleared, nothing changed when refused", function()
    local s = v.object { x = v.number():max(10), tags = v.array(v.string()), o = v.string():optional() }
    local t = { x = 3, tags = { "a" }, extra = true, [1] = "n" }
    local tags = t.tags
    local ok, out = v._parse_owned(s, t)
    assert.is_true(ok)
    assert.are.equal(t, out)
    assert.are.same({ x = 3, tags = { "a" } }, { x = out.x, tags = { out.tags[1] } })
    assert.is_nil(rawget(out, "extra"))
    assert.is_nil(rawget(out, 1))
    assert.are_not.equal(tags, out.tags) -- nested values are the schema's outputs
    assert.are.equal(getmetatable(select(2, s:parse { x = 1, tags = {} })), getmetatable(out))
    local bad = { x = 11, tags = {}, extra = 1 }
    assert.is_false((v._parse_owned(s, bad)))
    assert.are.same({ x = 11, tags = {}, extra = 1 }, bad)
    local strict = v.object { a = v.number() }:strict()
    local u = { a = 1, b = 2 }
    assert.is_false((v._parse_owned(strict, u)))
    assert.are.same({ a = 1, b = 2 }, u)
    -- left to Lua (a pattern) or held by a metatable: a copy, the value untouched
    local p = { s = "zz" }
    ok, out = v._parse_owned(v.object { s = v.string():pattern("^z+$") }, p)
    assert.is_true(ok)
    assert.are_not.equal(p, out)
    local m = setmetatable({ a = 1 }, { __index = function() return 2 end })
    ok, out = v._parse_owned(v.object { a = v.number(), b = v.number() }, m)
    assert.is_true(ok)
    assert.are_not.equal(m, out)
    assert.are.equal(2, out.b)
  end)

  it("in C: a schema is compiled once, also one that holds itself", function()
    local s = v.object { n = v.number() }
    for i = 1, 3 do assert.is_true((v._fast_c(s, { n = i }))) end
    -- a schema that holds itself (built by hand: the DSL cannot): nesting past
    -- the C path's depth is left to Lua, the shallow values are answered
    local self = v.object { n = v.number():optional() }
    rawset(self, "keys", { "n", "next" })
    rawget(self, "fields").next = v.union { v.literal(0), self }
    assert.is_true((v._fast_c(self, { n = 1, next = { next = 0 } })))
    assert.is_false((v._fast_c(self, { n = "x" })))
    local deep = 0
    for _ = 1, 150 do deep = { next = deep } end
    assert.is_nil((v._fast_c(self, deep)))
  end)

  it("in C: a compile stopped by the handler's memory limit leaves the schema to Lua, not half read", function()
    local sandbox = require "lunaroom.sandbox"
    local testing = require "lunaroom.testing"
    local def = assert(sandbox.load_room_source([[
local lr = require "lunaroom"
local fields = {}
for i = 1, 5000 do fields["f" .. i] = lr.v.number():optional() end
local s = lr.v.object(fields)
return lr.room { path = "mc", memory = 200000, state = { n = 0 },
  actions = { p = function(room)
    room.n = room.n + 1
    local ok, out = s:parse { f7 = 7 }
    assert(ok and out.f7 == 7)
  end } }
]], "@mc.lua", nil))
    local t = testing.room(def)
    local c = t:client { id = "a" }
    c:send("p") -- compiling 5,000 fields takes more than the call may allocate
    local e = c:last("error")
    assert.is_truthy(e and e.value.message:find("memory limit exceeded", 1, true), e and e.value.message)
    assert.are.equal(0, t.room.n)
    c:clear()
    c:send("p") -- the node cached before its children answers nil: the Lua path parses
    assert.is_nil(c:last("error"))
    assert.are.equal(1, t.room.n)
    t:close()
  end)

  it("in C is charged to the handler's budget", function()
    local sandbox = require "lunaroom.sandbox"
    local testing = require "lunaroom.testing"
    local def = assert(sandbox.load_room_source([[
local lr = require "lunaroom"
local big = {}
for i = 1, 2000000 do big[i] = i end
local s = lr.v.array(lr.v.number())
return lr.room { path = "sb", budget = 1000000, state = { n = 0 },
  actions = { big = function(room) room.n = 1; s:parse(big) end,
    huge = function(room) -- a length no loop could walk: refused by the charge, before the loop
      room.n = 2
      s:parse(setmetatable({}, { __len = function() return math.maxinteger end }))
    end } }
]], "@sb.lua", nil))
    local t = testing.room(def)
    local c = t:client { id = "a" }
    for _, action in ipairs { "big", "huge" } do
      c:clear()
      c:send(action)
      local e = c:last("error")
      assert.is_truthy(e and e.value.message:find("instruction budget exceeded", 1, true), e and e.value.message)
      assert.are.equal(0, t.room.n)
    end
    t:close()
  end)
end)
