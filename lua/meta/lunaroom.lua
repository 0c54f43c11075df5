---@meta lunaroom
-- Editor annotations (LuaLS / EmmyLua) for the lunaroom room API: point
-- LuaLS at this folder ("workspace.library": ["/usr/share/lunaroom/meta"],
-- or lua/meta in a source tree). Never loaded at run time.
-- spec/meta_spec.lua checks that every name here is exported and every
-- export is here.

---@class lunaroom.Field
---@class lunaroom.Schema: lunaroom.SchemaBuilder
---@class lunaroom.Definition

---@class lunaroom.Conn
---@field id string           the session's private id
---@field state table         per-connection state (state.publicId)

---@class lunaroom.Request
---@field method string
---@field path string
---@field query string
---@field headers table<string, string>
---@field params table<string, string>
---@field body string?
---@field json fun(): any

---@class lunaroom.RoomDef
---@field path string                         room id pattern, e.g. "game-{id}"
---@field party string?                       default "main"
---@field state table<string, lunaroom.Field|table>?
---@field actions table<string, function|{schema: lunaroom.SchemaBuilder?, guards: function[]?, run: function}>?
---@field requests table<string, function|{schema: lunaroom.SchemaBuilder?, guards: function[]?, run: function}>?
---@field guards function[]?
---@field throttleSync integer?
---@field hibernate boolean?
---@field waits {max: integer?, timeout: integer?, handlerTimeout: integer?}?  handlers that wait (lunaroom.io)
---@field onCreate fun(room: lunaroom.Room)?
---@field onJoin fun(room: lunaroom.Room, user: table, conn: lunaroom.Conn)?
---@field onLeave fun(room: lunaroom.Room, user: table, conn: lunaroom.Conn)?
---@field onReload fun(room: lunaroom.Room, oldVersion: string)?

---The lunaroom module (`local lr = require "lunaroom"`).
---@class lunaroom
local lr = {}

---Declare a room; validates the definition.
---@param def lunaroom.RoomDef
---@return lunaroom.Definition
function lr.room(def) end

---A synced (sent to clients and stored) field with a default value.
---@param default any
---@param opts {persist: boolean?, sync: boolean?}?
---@return lunaroom.Field
function lr.sync(default, opts) end

---A stored but never sent field.
---@param default any
---@return lunaroom.Field
function lr.persist(default) end

---True while the user has a socket open. Synced, not stored.
---@return lunaroom.Field
function lr.connected() end

---What one entry of a users collection holds.
---@param fields table<string, lunaroom.Field|table>
---@return lunaroom.Schema
function lr.schema(fields) end

---A users collection keyed by publicId.
---@param schema lunaroom.Schema
---@return lunaroom.Field
function lr.users(schema) end

---Mark a Lua table as a JSON array (needed for empty arrays).
---@generic T: table
---@param t T?
---@return T
function lr.array(t) end

---Deep snapshot of a room, user or synced object: its persisted fields.
---@param obj table
---@return table
function lr.snapshot(obj) end

---Hydrate a room, user or synced object from a snapshot (clients get a patch).
---@param obj table
---@param snapshot table
function lr.load(obj, snapshot) end

---@param x any
---@return boolean
function lr.is_field(x) end

---@param x any
---@return boolean
function lr.is_schema(x) end

---@param x any
---@return boolean
function lr.is_room(x) end

---The JSON null (a field set to lr.null is sent as null).
---@type lightuserdata
lr.null = nil

---Names a room's state fields may not use (room methods and internals), as a set.
---@type table<string, boolean>
lr.RESERVED = nil

---Metatables of the descriptors (for tools; room code rarely needs them).
---@type table
lr.FIELD = nil
---@type table
lr.SCHEMA = nil
---@type table
lr.ROOM = nil

---JSON with the host's codec (integers up to 2^63 and floats round-trip).
---@class lunaroom.json
lr.json = {}

---@param value any
---@return string
function lr.json.encode(value) end

---@param text string
---@return any value, string? err
function lr.json.decode(text) end

---HS256 JSON Web Tokens (libjwt).
---@class lunaroom.jwt
lr.jwt = {}

---@param token string
---@param secret string
---@return table? claims, string? err
function lr.jwt.verify(token, secret) end

---@param claims table
---@param secret string
---@param opts {expiresIn: integer|string|false?}?
---@return string token
function lr.jwt.sign(claims, secret, opts) end

---The token of an `Authorization: Bearer ...` header (or nil).
---@param req lunaroom.Request|table
---@return string?
function lr.jwt.bearer(req) end

---Validation schemas (zod-like).
---@class lunaroom.v
lr.v = {}

---@class lunaroom.SchemaBuilder
local Schema = {}
---@param n number
---@return lunaroom.SchemaBuilder
function Schema:min(n) end
---@param n number
---@return lunaroom.SchemaBuilder
function Schema:max(n) end
---@param n integer
---@return lunaroom.SchemaBuilder
function Schema:length(n) end
---@return lunaroom.SchemaBuilder
function Schema:int() end
---@param p string a Lua pattern
---@return lunaroom.SchemaBuilder
function Schema:pattern(p) end
---@return lunaroom.SchemaBuilder
function Schema:strict() end
---@return lunaroom.SchemaBuilder
function Schema:optional() end
---@param x any
---@return lunaroom.SchemaBuilder
function Schema:default(x) end
---@param value any
---@return boolean ok, any value_or_error {message, issues} on failure
function Schema:parse(value) end
---@return string
function Schema:describe() end

---@return lunaroom.SchemaBuilder
function lr.v.any() end
---@return lunaroom.SchemaBuilder
function lr.v.number() end
---@return lunaroom.SchemaBuilder
function lr.v.integer() end
---@return lunaroom.SchemaBuilder
function lr.v.string() end
---@return lunaroom.SchemaBuilder
function lr.v.boolean() end
---@param values any[]
---@return lunaroom.SchemaBuilder
function lr.v.enum(values) end
---@param x any
---@return lunaroom.SchemaBuilder
function lr.v.literal(x) end
---@param item lunaroom.SchemaBuilder
---@return lunaroom.SchemaBuilder
function lr.v.array(item) end
---@param shape table<string, lunaroom.SchemaBuilder>
---@return lunaroom.SchemaBuilder
function lr.v.object(shape) end
---@param options lunaroom.SchemaBuilder[]
---@return lunaroom.SchemaBuilder
function lr.v.union(options) end
---@param x any
---@return boolean
function lr.v.is_schema(x) end
---(host) the null sentinel schemas accept.
---@param null any
function lr.v.set_null(null) end
---(host) the fast path of parse in C (core.schema_fast); nil: the Lua one alone.
---@param factory fun(array_mt: table, object_mt: table, null: any): function|nil
function lr.v.set_fast(factory) end

---What handlers get as `room`: the state fields of the definition, and:
---@class lunaroom.Room
---@field id string                room id
---@field params table<string, string>  captures of the path pattern
---@field autoSync boolean         false: patches wait for room:applySync()
---@field env table<string, string> selected environment variables
---@field storage table            the room's storage (get/put/delete/list)
---@field parties table            room-to-room HTTP: room.parties.main:get(id):fetch(path)
local Room = {}
---Send one packet to one connection.
---@param conn lunaroom.Conn
---@param value any
function Room:send(conn, value) end
---Send one packet to every connection (but `except`).
---@param value any
---@param except lunaroom.Conn?
function Room:broadcast(value, except) end
---Send the pending state patch now.
function Room:applySync() end
---@return lunaroom.Conn[]
function Room:connections() end
---@return integer ms
function Room:now() end
---Close every connection and drop the room.
function Room:dispose() end
---@param ... any
function Room:log(...) end
---Call fn(room) after ms; returns an id for room:cancel.
---@param ms integer
---@param fn fun(room: lunaroom.Room)
---@return integer id
function Room:timer(ms, fn) end
---@param id integer
function Room:cancel(id) end
---Move a connection's session to another room (maybe on another server).
---@param conn lunaroom.Conn
---@param target string
---@param opts {url: string?, party: string?}?
---@param done fun(room: lunaroom.Room, token: string?, err: string?)?
function Room:sessionTransfer(conn, target, opts, done) end

---The testing helpers (`require "lunaroom.testing"`, under `lunaroom test`).
---@class lunaroom.testing
local testing = {}
---@type lightuserdata
testing.null = nil
---@param value any
---@return string
function testing.encode(value) end
---@param text string
---@return any
function testing.decode(text) end
---How much slower than a plain build this process runs (100 under valgrind, else 1): multiply wall-clock bounds by it.
---@type number
testing.slowdown = 1
---Log lines written since the last call.
---@return string[]
function testing.logs() end
---A headless server with one room.
---@param src string|lunaroom.Definition|lunaroom.RoomDef
---@param opts {id: string?, storage: string?, seed: integer?, env: table?, rooms: table?, create: boolean?}?
---@return lunaroom.TestRoom
function testing.room(src, opts) end
---Stop a test room's server and start it again on the same storage
---(with new code when src is given).
---@param t lunaroom.TestRoom
---@param src (string|lunaroom.RoomDef)?
---@return lunaroom.TestRoom
function testing.restart(t, src) end

---@class lunaroom.TestRoom
---@field room lunaroom.Room
---@field storage lunaroom.StorageView
local T = {}
---A fake WebSocket client.
---@param opts {id: string?, query: table?, headers: table?, party: string?, room: string?, discard: boolean?}?
---@return lunaroom.TestClient
function T:client(opts) end
---@param fn function
function T:pass(fn) end
---Move the virtual clock (timers fire).
---@param ms integer
function T:advance(ms) end
---@return integer
function T:now() end
---@param method string
---@param path string
---@param opts {body: any?, headers: table?, party: string?, room: string?}?
---@return {status: integer, body: string, json: any, headers: table}
function T:http(method, path, opts) end
---@param id string
---@return lunaroom.Room
function T:instance(id) end
---Make the next n storage writes fail.
---@param n integer
function T:fail_storage(n) end
function T:close() end
---Hot-reload the room's code.
---@param src string|lunaroom.RoomDef
function T:reload(src) end
---A fake HTTP service answering lunaroom.io.request on the virtual clock:
---function(req) -> answer, delay_ms | {["METHOD url"] = answer|function}. nil answer: pending.
---@param service function|table
---@return lunaroom.TestRoom
function T:http_service(service) end
---Requests of the fake service waiting for p:respond(answer, delay_ms).
---@return {request: table, respond: fun(self, answer: table|integer, delay: integer?)}[]
function T:http_pending() end
---Handlers of the room (all: of the process) that wait now.
---@param all boolean?
---@return integer
function T:waiting(all) end

---@class lunaroom.TestClient
---@field packets table[]
---@field raw string[]
---@field closed {code: integer, reason: string}?
---@field conn lunaroom.Conn?
---@field publicId string?
local Client = {}
---@param action string
---@param value any
function Client:send(action, value) end
---@param text string
function Client:send_raw(text) end
---@return table[]
function Client:take() end
function Client:clear() end
---@param type_ string?
---@return table?
function Client:last(type_) end
function Client:close() end

---@class lunaroom.StorageView
local StorageView = {}
---@param key string
---@return any
function StorageView:get(key) end
---@param prefix string?
---@return table
function StorageView:entries(prefix) end
---@param prefix string?
---@return string[]
function StorageView:list(prefix) end
---@return integer
function StorageView:count() end

return lr
