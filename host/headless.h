/*
 * headless.h - the in-process transport of the test host (headless.c).
 *
 * Owns: lr_headless_register.
 * Must not: be included by the engine files.
 */
#ifndef LR_HEADLESS_H
#define LR_HEADLESS_H

#include <lua.h>

/* Add the headless transport's functions (hl_*, http, http_take) and its
 * handle metatable to the module table on top of the stack. [-0,+0] */
void lr_headless_register(lua_State *L);

#endif
