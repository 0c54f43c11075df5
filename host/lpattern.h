/*
 * lpattern.h - string.find/match/gmatch/gsub with every matcher step charged
 * to the running handler's instruction budget (see lpattern.c).
 *
 * Owns: the pattern functions. Must not: know rooms.
 */
#ifndef LR_LPATTERN_H
#define LR_LPATTERN_H

#include <lua.h>

/* Set find, match, gmatch and gsub in the table at idx (the string table:
 * strings' methods reach them through the string metatable too). */
void lr_pattern_install(lua_State *L, int idx);

#endif
