/*
 * lpattern.c - Lua pattern matching with a step limit: string.find, match,
 * gmatch and gsub with the semantics of Lua 5.4's (see the reference
 * manual, §6.4.1), written for this host so that every step of the matcher
 * is charged to the instruction budget of the running handler.
 *
 * The backtracking matcher of stock Lua runs inside one C call, where the
 * instruction-count hook never fires: ("a"):rep(50000):find(".-b") takes
 * seconds. Here each step (one character tried against one pattern item, one
 * loop turn, one candidate position) costs one instruction, and the call is
 * stopped with the budget error once the budget is spent. Outside a budget
 * (host code at start-up, specs) the steps are not limited.
 *
 * Owns: the matcher and the four string functions built on it.
 * Must not: allocate outside the Lua stack (errors longjmp out), keep state
 * across calls other than a gmatch iterator's, or know rooms.
 */
#include "lpattern.h"

#include <ctype.h>
#include <stdint.h>
#include <string.h>

#include <lauxlib.h>

#include "lua_vm.h"

#define ESC '%'
#define SPECIALS "^$*+?.([%-"
#define MAXCAPS 32
#define MAXDEPTH 200
#define CAP_UNFINISHED (-1)
#define CAP_POSITION (-2)

typedef struct mstate {
  const char *src, *src_end; /* subject */
  const char *p_end;         /* end of the pattern */
  lua_State *L;
  int depth;    /* C recursion left */
  int level;    /* captures open or closed */
  int64_t left; /* steps left before the budget is re-checked */
  int64_t got;  /* steps granted at the last sync */
  struct {
    const char *init;
    ptrdiff_t len;
  } cap[MAXCAPS];
} mstate;

/* Charge the steps used since the last sync and take a fresh allowance. */
static void sync_budget(mstate *ms) {
  int64_t used = ms->got - ms->left;
  if (used > 0) lr_vm_charge(ms->L, used);
  ms->got = ms->left = lr_vm_budget_left(ms->L);
}

static void out_of_steps(mstate *ms) {
  sync_budget(ms); /* raises when the budget is spent */
  if (ms->left <= 0) lr_vm_charge(ms->L, 1);
}

#define STEP(ms)                                                                                   \
  do {                                                                                             \
    if (--(ms)->left <= 0) out_of_steps(ms);                                                       \
  } while (0)
#define STEPS(ms, n)                                                                               \
  do {                                                                                             \
    if (((ms)->left -= (n)) <= 0) out_of_steps(ms);                                                \
  } while (0)

static void ms_init(mstate *ms, lua_State *L, const char *s, size_t ls, const char *p, size_t lp) {
  ms->L = L;
  ms->src = s;
  ms->src_end = s + ls;
  ms->p_end = p + lp;
  ms->got = ms->left = lr_vm_budget_left(L);
}

static void ms_reset(mstate *ms) {
  ms->level = 0;
  ms->depth = MAXDEPTH;
}

static const char *match(mstate *ms, const char *s, const char *p);

/* The end of the single-character class at p. */
static const char *class_end(mstate *ms, const char *p) {
  char c = *p++;
  if (c == ESC) {
    if (p == ms->p_end) luaL_error(ms->L, "malformed pattern (ends with '%%')");
    return p + 1;
  }
  if (c == '[') {
    if (*p == '^') p++;
    do { /* the first character after [ or [^ is always part of the set */
      if (p == ms->p_end) luaL_error(ms->L, "malformed pattern (missing ']')");
      c = *p++;
      if (c == ESC && p < ms->p_end) p++;
    } while (*p != ']');
    return p + 1;
  }
  return p;
}

static int class_has(int c, int cl) {
  int r;
  switch (tolower(cl)) {
  case 'a':
    r = isalpha(c);
    break;
  case 'c':
    r = iscntrl(c);
    break;
  case 'd':
    r = isdigit(c);
    break;
  case 'g':
    r = isgraph(c);
    break;
  case 'l':
    r = islower(c);
    break;
  case 'p':
    r = ispunct(c);
    break;
  case 's':
    r = isspace(c);
    break;
  case 'u':
    r = isupper(c);
    break;
  case 'w':
    r = isalnum(c);
    break;
  case 'x':
    r = isxdigit(c);
    break;
  case 'z': /* deprecated in the manual, still in 5.4 */
    r = c == 0;
    break;
  default:
    return cl == c;
  }
  if (isupper(cl)) r = !r;
  return r != 0;
}

/* p at '[', ec at the closing ']'. */
static int set_has(mstate *ms, int c, const char *p, const char *ec) {
  int yes = 1;
  if (p[1] == '^') {
    yes = 0;
    p++;
  }
  while (++p < ec) {
    STEP(ms);
    if (*p == ESC) {
      p++;
      if (class_has(c, (unsigned char)*p)) return yes;
    } else if (p[1] == '-' && p + 2 < ec) {
      p += 2;
      if ((unsigned char)p[-2] <= c && c <= (unsigned char)*p) return yes;
    } else if ((unsigned char)*p == c) {
      return yes;
    }
  }
  return !yes;
}

/* Does the character at s match the class p..ep? */
static int single(mstate *ms, const char *s, const char *p, const char *ep) {
  STEP(ms);
  if (s >= ms->src_end) return 0;
  int c = (unsigned char)*s;
  switch (*p) {
  case '.':
    return 1;
  case ESC:
    return class_has(c, (unsigned char)p[1]);
  case '[':
    return set_has(ms, c, p, ep - 1);
  default:
    return (unsigned char)*p == c;
  }
}

static const char *balance(mstate *ms, const char *s, const char *p) {
  if (p >= ms->p_end - 1) luaL_error(ms->L, "malformed pattern (missing arguments to '%%b')");
  if (s >= ms->src_end || *s != *p) return NULL;
  char open = p[0], close = p[1];
  int n = 1;
  while (++s < ms->src_end) {
    STEP(ms);
    if (*s == close) {
      if (--n == 0) return s + 1;
    } else if (*s == open) {
      n++;
    }
  }
  return NULL;
}

/* Greedy: as many as possible, then back off one at a time. */
static const char *expand_max(mstate *ms, const char *s, const char *p, const char *ep) {
  ptrdiff_t i = 0;
  while (single(ms, s + i, p, ep))
    i++;
  for (; i >= 0; i--) {
    const char *r = match(ms, s + i, ep + 1);
    if (r) return r;
  }
  return NULL;
}

/* Lazy: as few as possible, one more at a time. */
static const char *expand_min(mstate *ms, const char *s, const char *p, const char *ep) {
  for (;;) {
    const char *r = match(ms, s, ep + 1);
    if (r) return r;
    if (!single(ms, s, p, ep)) return NULL;
    s++;
  }
}

static const char *open_capture(mstate *ms, const char *s, const char *p, ptrdiff_t what) {
  if (ms->level >= MAXCAPS) luaL_error(ms->L, "too many captures");
  ms->cap[ms->level].init = s;
  ms->cap[ms->level].len = what;
  ms->level++;
  const char *r = match(ms, s, p);
  if (!r) ms->level--;
  return r;
}

static const char *close_capture(mstate *ms, const char *s, const char *p) {
  int l = ms->level - 1;
  while (l >= 0 && ms->cap[l].len != CAP_UNFINISHED)
    l--;
  if (l < 0) luaL_error(ms->L, "invalid pattern capture");
  ms->cap[l].len = s - ms->cap[l].init;
  const char *r = match(ms, s, p);
  if (!r) ms->cap[l].len = CAP_UNFINISHED;
  return r;
}

static int capture_index(mstate *ms, int d) {
  int l = d - '1';
  if (l < 0 || l >= ms->level || ms->cap[l].len == CAP_UNFINISHED)
    luaL_error(ms->L, "invalid capture index %%%d", l + 1);
  return l;
}

static const char *back_reference(mstate *ms, const char *s, int d) {
  int l = capture_index(ms, d);
  size_t len = (size_t)ms->cap[l].len;
  STEPS(ms, 1 + (int64_t)(len >> 4));
  if ((size_t)(ms->src_end - s) >= len && memcmp(ms->cap[l].init, s, len) == 0) return s + len;
  return NULL;
}

/* Kept whole (sizes.lua allows it): the port of lstrlib.c match(), diffable with Lua's. */
static const char *match(mstate *ms, const char *s, const char *p) {
  if (ms->depth-- == 0) luaL_error(ms->L, "pattern too complex");
  while (p != ms->p_end) {
    STEP(ms);
    switch (*p) {
    case '(':
      s = p[1] == ')' ? open_capture(ms, s, p + 2, CAP_POSITION)
                      : open_capture(ms, s, p + 1, CAP_UNFINISHED);
      goto done;
    case ')':
      s = close_capture(ms, s, p + 1);
      goto done;
    case '$':
      if (p + 1 != ms->p_end) goto item;
      s = s == ms->src_end ? s : NULL;
      goto done;
    case ESC:
      if (p[1] == 'b') {
        s = balance(ms, s, p + 2);
        if (s) {
          p += 4;
          continue;
        }
        goto done;
      }
      if (p[1] == 'f') {
        p += 2;
        if (*p != '[') luaL_error(ms->L, "missing '[' after '%%f' in pattern");
        const char *ep = class_end(ms, p);
        int prev = s == ms->src ? 0 : (unsigned char)s[-1];
        int cur = s < ms->src_end ? (unsigned char)*s : 0;
        if (!set_has(ms, prev, p, ep - 1) && set_has(ms, cur, p, ep - 1)) {
          p = ep;
          continue;
        }
        s = NULL;
        goto done;
      }
      if (isdigit((unsigned char)p[1])) {
        s = back_reference(ms, s, (unsigned char)p[1]);
        if (s) {
          p += 2;
          continue;
        }
        goto done;
      }
      goto item;
    default:
    item : {
      const char *ep = class_end(ms, p);
      if (!single(ms, s, p, ep)) {
        if (*ep == '*' || *ep == '?' || *ep == '-') { /* zero repetitions are fine */
          p = ep + 1;
          continue;
        }
        s = NULL;
        goto done;
      }
      switch (*ep) {
      case '?': {
        const char *r = match(ms, s + 1, ep + 1);
        if (r) {
          s = r;
          goto done;
        }
        p = ep + 1;
        continue;
      }
      case '+':
        s = expand_max(ms, s + 1, p, ep);
        goto done;
      case '*':
        s = expand_max(ms, s, p, ep);
        goto done;
      case '-':
        s = expand_min(ms, s, p, ep);
        goto done;
      default:
        s++;
        p = ep;
        continue;
      }
    }
    }
  }
done:
  ms->depth++;
  return s;
}

/* Capture i of the match s..e (i == 0 with no captures: the whole match). */
static void push_capture(mstate *ms, int i, const char *s, const char *e) {
  if (i >= ms->level) {
    if (i != 0) luaL_error(ms->L, "invalid capture index %%%d", i + 1);
    lua_pushlstring(ms->L, s, (size_t)(e - s));
    return;
  }
  ptrdiff_t len = ms->cap[i].len;
  if (len == CAP_UNFINISHED) luaL_error(ms->L, "unfinished capture");
  if (len == CAP_POSITION)
    lua_pushinteger(ms->L, (lua_Integer)(ms->cap[i].init - ms->src) + 1);
  else
    lua_pushlstring(ms->L, ms->cap[i].init, (size_t)len);
}

static int push_captures(mstate *ms, const char *s, const char *e) {
  int n = ms->level == 0 && s ? 1 : ms->level;
  luaL_checkstack(ms->L, n, "too many captures");
  for (int i = 0; i < n; i++)
    push_capture(ms, i, s, e);
  return n;
}

static size_t start_pos(lua_Integer pos, size_t len) {
  if (pos > 0) return (size_t)pos;
  if (pos == 0) return 1;
  if (pos < -(lua_Integer)len) return 1;
  return len + (size_t)pos + 1;
}

static int no_specials(const char *p, size_t lp) {
  size_t off = 0;
  do { /* strpbrk stops at a zero byte: look past each one */
    if (strpbrk(p + off, SPECIALS)) return 0;
    off += strlen(p + off) + 1;
  } while (off <= lp);
  return 1;
}

/* Plain search: each candidate position costs a step (plus one per 16
 * bytes compared). */
static const char *find_plain(mstate *ms, const char *s, size_t ls, const char *p, size_t lp) {
  if (lp == 0) return s;
  if (lp > ls) return NULL;
  const char *end = s + (ls - lp) + 1;
  while (s < end) {
    const char *hit = memchr(s, *p, (size_t)(end - s));
    if (!hit) return NULL;
    STEPS(ms, 1 + (int64_t)(lp >> 4) + ((hit - s) >> 6));
    if (memcmp(hit + 1, p + 1, lp - 1) == 0) return hit;
    s = hit + 1;
  }
  return NULL;
}

static int find_aux(lua_State *L, int find) {
  size_t ls, lp;
  const char *s = luaL_checklstring(L, 1, &ls);
  const char *p = luaL_checklstring(L, 2, &lp);
  size_t init = start_pos(luaL_optinteger(L, 3, 1), ls) - 1;
  if (init > ls) {
    luaL_pushfail(L);
    return 1;
  }
  mstate ms;
  ms_init(&ms, L, s, ls, p, lp);
  if (find && (lua_toboolean(L, 4) || no_specials(p, lp))) {
    const char *hit = find_plain(&ms, s + init, ls - init, p, lp);
    sync_budget(&ms);
    if (hit) {
      lua_pushinteger(L, (lua_Integer)(hit - s) + 1);
      lua_pushinteger(L, (lua_Integer)(hit - s) + (lua_Integer)lp);
      return 2;
    }
  } else {
    const char *s1 = s + init;
    int anchor = *p == '^';
    if (anchor) {
      p++;
      lp--;
      ms.p_end = p + lp;
    }
    do {
      ms_reset(&ms);
      STEP(&ms);
      const char *e = match(&ms, s1, p);
      if (e) {
        sync_budget(&ms);
        if (find) {
          lua_pushinteger(L, (lua_Integer)(s1 - s) + 1);
          lua_pushinteger(L, (lua_Integer)(e - s));
          return push_captures(&ms, NULL, NULL) + 2;
        }
        return push_captures(&ms, s1, e);
      }
    } while (s1++ < ms.src_end && !anchor);
    sync_budget(&ms);
  }
  luaL_pushfail(L);
  return 1;
}

static int l_find(lua_State *L) {
  return find_aux(L, 1);
}
static int l_match(lua_State *L) {
  return find_aux(L, 0);
}

typedef struct gmatch_state {
  const char *at, *last; /* next start; end of the last match */
  const char *p;
  mstate ms;
} gmatch_state;

static int gmatch_next(lua_State *L) {
  gmatch_state *g = lua_touserdata(L, lua_upvalueindex(3));
  g->ms.L = L;
  g->ms.got = g->ms.left = lr_vm_budget_left(L);
  for (const char *at = g->at; at <= g->ms.src_end; at++) {
    ms_reset(&g->ms);
    STEP(&g->ms);
    const char *e = match(&g->ms, at, g->p);
    if (e && e != g->last) {
      g->at = g->last = e;
      sync_budget(&g->ms);
      return push_captures(&g->ms, at, e);
    }
  }
  g->at = g->ms.src_end + 1;
  sync_budget(&g->ms);
  return 0;
}

static int l_gmatch(lua_State *L) {
  size_t ls, lp;
  const char *s = luaL_checklstring(L, 1, &ls);
  const char *p = luaL_checklstring(L, 2, &lp);
  size_t init = start_pos(luaL_optinteger(L, 3, 1), ls) - 1;
  if (init > ls) init = ls + 1;
  lua_settop(L, 2);
  gmatch_state *g = lua_newuserdatauv(L, sizeof *g, 0);
  ms_init(&g->ms, L, s, ls, p, lp);
  g->at = s + init;
  g->last = NULL;
  g->p = p;
  lua_pushcclosure(L, gmatch_next, 3); /* keeps s and p alive */
  return 1;
}

/* The replacement string (argument 3) for the match s..e. */
static void add_string(mstate *ms, luaL_Buffer *b, const char *s, const char *e) {
  lua_State *L = ms->L;
  size_t l;
  const char *r = lua_tolstring(L, 3, &l);
  STEPS(ms, 1 + (int64_t)(l >> 4));
  const char *pc;
  while ((pc = memchr(r, ESC, l)) != NULL) {
    luaL_addlstring(b, r, (size_t)(pc - r));
    pc++;
    if (*pc == ESC) {
      luaL_addchar(b, *pc);
    } else if (isdigit((unsigned char)*pc)) {
      if (*pc == '0') {
        luaL_addlstring(b, s, (size_t)(e - s));
      } else {
        push_capture(ms, *pc - '1', s, e);
        luaL_tolstring(L, -1, NULL);
        lua_remove(L, -2);
        luaL_addvalue(b);
      }
    } else {
      luaL_error(L, "invalid use of '%c' in replacement string", ESC);
    }
    l -= (size_t)(pc + 1 - r);
    r = pc + 1;
  }
  luaL_addlstring(b, r, l);
}

/* Returns whether the match was replaced. */
static int add_value(mstate *ms, luaL_Buffer *b, const char *s, const char *e, int tr) {
  lua_State *L = ms->L;
  if (tr == LUA_TFUNCTION) {
    sync_budget(ms); /* the function's own instructions count too */
    lua_pushvalue(L, 3);
    int n = push_captures(ms, s, e);
    lua_call(L, n, 1);
    ms->got = ms->left = lr_vm_budget_left(L);
  } else if (tr == LUA_TTABLE) {
    push_capture(ms, 0, s, e);
    sync_budget(ms);
    lua_gettable(L, 3);
    ms->got = ms->left = lr_vm_budget_left(L);
  } else {
    add_string(ms, b, s, e);
    return 1;
  }
  if (!lua_toboolean(L, -1)) {
    lua_pop(L, 1);
    luaL_addlstring(b, s, (size_t)(e - s));
    return 0;
  }
  if (!lua_isstring(L, -1))
    return luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
  luaL_addvalue(b);
  return 1;
}

static int l_gsub(lua_State *L) {
  size_t ls, lp;
  const char *src = luaL_checklstring(L, 1, &ls);
  const char *p = luaL_checklstring(L, 2, &lp);
  const char *last = NULL;
  int tr = lua_type(L, 3);
  lua_Integer max = luaL_optinteger(L, 4, (lua_Integer)ls + 1);
  luaL_argexpected(
      L, tr == LUA_TNUMBER || tr == LUA_TSTRING || tr == LUA_TFUNCTION || tr == LUA_TTABLE, 3,
      "string/function/table");
  int anchor = *p == '^';
  if (anchor) {
    p++;
    lp--;
  }
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  mstate ms;
  ms_init(&ms, L, src, ls, p, lp);
  lua_Integer n = 0;
  int changed = 0;
  while (n < max) {
    ms_reset(&ms);
    STEP(&ms);
    const char *e = match(&ms, src, p);
    if (e && e != last) {
      n++;
      changed = add_value(&ms, &b, src, e, tr) | changed;
      src = last = e;
    } else if (src < ms.src_end) {
      luaL_addchar(&b, *src++);
    } else {
      break;
    }
    if (anchor) break;
  }
  sync_budget(&ms);
  if (!changed) {
    lua_pushvalue(L, 1);
  } else {
    luaL_addlstring(&b, src, (size_t)(ms.src_end - src));
    luaL_pushresult(&b);
  }
  lua_pushinteger(L, n);
  return 2;
}

static const luaL_Reg fns[] = {
    {"find", l_find}, {"match", l_match}, {"gmatch", l_gmatch}, {"gsub", l_gsub}, {NULL, NULL}};

void lr_pattern_install(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  for (const luaL_Reg *f = fns; f->name; f++) {
    lua_pushcfunction(L, f->func);
    lua_setfield(L, idx, f->name);
  }
}
