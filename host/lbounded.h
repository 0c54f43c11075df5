/*
 * lbounded.h - the standard-library C functions whose running time depends on
 * their arguments, wrapped so that the work is charged to the running
 * handler's instruction budget before it is done (see lbounded.c).
 *
 * Owns: the wrappers and the __gc guard of setmetatable. Must not: know rooms.
 */
#ifndef LR_LBOUNDED_H
#define LR_LBOUNDED_H

#include <lua.h>

/* Replace, process-wide, the pattern functions (lpattern.h), string.rep,
 * table.move/concat/unpack/insert/remove/sort, the utf8 scanners and
 * setmetatable (which refuses a metatable with a __gc field) by their
 * bounded versions. Host code keeps working: without an armed budget
 * nothing is limited. Call once after luaL_openlibs. */
void lr_bounded_install(lua_State *L);

#endif
