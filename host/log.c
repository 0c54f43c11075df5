/*
 * log.c - writes log lines to stderr with a UTC timestamp and a level, and
 * rate-limits the lines of refused requests and sockets (lr_log_limited):
 * per reason, at most `burst` lines per window, then one summary line
 * "suppressed K similar lines (reason)" once the window is over.
 * Must not: buffer lines across calls (each line is one write; a summary is
 * written just before the next line, or by lr_log_flush_suppressed), or
 * allocate for the limiter (a fixed table of reasons).
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static int min_level = LR_LOG_INFO;
static int json_lines;
static int capture;
#define NCAP 256
static char *captured[NCAP];
static long ncaptured;

void lr_log_capture(int on) {
  capture = on;
}
const char *lr_log_captured(long i) {
  return i < ncaptured ? captured[i] : NULL;
}
void lr_log_capture_clear(void) {
  for (long i = 0; i < ncaptured; i++)
    free(captured[i]);
  ncaptured = 0;
}

void lr_log_set_level(int level) {
  min_level = level;
}
void lr_log_set_json(int on) {
  json_lines = on;
}

static const char *level_name(int level) {
  switch (level) {
  case LR_LOG_DEBUG:
    return "debug";
  case LR_LOG_INFO:
    return "info";
  case LR_LOG_WARN:
    return "warn";
  default:
    return "error";
  }
}

static void emit(int level, const char *msg);

/* ------------------------------------------------------------ limiter */

#define NREASONS 32
typedef struct {
  char key[48]; /* the reason, copied ("" = free slot) */
  int level;
  int64_t window_start;
  unsigned lines;     /* written in this window */
  unsigned long supp; /* suppressed in this window */
} reason_slot;
static reason_slot reasons[NREASONS];
static int nreasons;
static unsigned limit_burst = 10;
static int64_t limit_window_ms = 1000;
static bool any_suppressed;

void lr_log_set_limit(unsigned burst, long window_ms) {
  limit_burst = burst ? burst : 10;
  limit_window_ms = window_ms > 0 ? window_ms : 1000;
  memset(reasons, 0, sizeof reasons);
  nreasons = 0;
  any_suppressed = false;
}

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void summary(reason_slot *r, int64_t now) {
  char msg[200];
  snprintf(msg, sizeof msg, "suppressed %lu similar lines (%.47s) in the last %lld ms", r->supp,
           r->key, (long long)(now - r->window_start));
  r->supp = 0;
  emit(r->level, msg);
}

/* Write the summaries of windows that are over (force: all of them). */
static void flush_due(int64_t now, bool force) {
  if (!any_suppressed) return;
  any_suppressed = false;
  for (int i = 0; i < nreasons; i++) {
    reason_slot *r = &reasons[i];
    if (!r->supp) continue;
    if (force || now - r->window_start >= limit_window_ms) {
      summary(r, now);
      r->window_start = now;
      r->lines = 0;
    } else {
      any_suppressed = true;
    }
  }
}

void lr_log_flush_suppressed(void) {
  flush_due(mono_ms(), true);
}

void lr_log_limited(int level, const char *key, const char *fmt, ...) {
  if (level < min_level && !capture) return;
  int64_t now = mono_ms();
  flush_due(now, false);
  reason_slot *r = NULL;
  for (int i = 0; i < nreasons && !r; i++)
    if (strncmp(reasons[i].key, key, sizeof reasons[i].key - 1) == 0) r = &reasons[i];
  if (!r) {
    /* A full table shares its last slot: still bounded, never unlimited. */
    r = &reasons[nreasons < NREASONS ? nreasons++ : NREASONS - 1];
    if (strncmp(r->key, key, sizeof r->key - 1) != 0) {
      if (r->supp) summary(r, now);
      snprintf(r->key, sizeof r->key, "%s", key);
      r->window_start = now;
      r->lines = 0;
      r->supp = 0;
    }
  }
  r->level = level;
  if (now - r->window_start >= limit_window_ms) {
    if (r->supp) summary(r, now);
    r->window_start = now;
    r->lines = 0;
  }
  if (r->lines >= limit_burst) {
    r->supp++;
    any_suppressed = true;
    return;
  }
  r->lines++;
  char msg[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  emit(level, msg);
}

/* ------------------------------------------------------------ lines */

void lr_log(int level, const char *fmt, ...) {
  if (level < min_level && !capture) return;
  char msg[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (any_suppressed) flush_due(mono_ms(), false);
  emit(level, msg);
}

void lr_log_parts(int level, const char *const *parts, size_t n) {
  if (level < min_level && !capture) return;
  char msg[4096]; /* truncated where lr_log's vsnprintf would */
  size_t at = 0;
  for (size_t i = 0; i < n && at < sizeof msg - 1; i++) {
    const char *p = parts[i] ? parts[i] : "";
    size_t l = strnlen(p, sizeof msg - 1 - at);
    memcpy(msg + at, p, l);
    at += l;
  }
  msg[at] = '\0';
  if (any_suppressed) flush_due(mono_ms(), false);
  emit(level, msg);
}

/* "2026-01-02T03:04:05.678Z" into ts (at least 25 bytes); returns its
 * length. The part to the second is formatted once a second, not per line:
 * a join writes a line, and strftime cost more than the rest of it. */
static size_t timestamp(char *ts) {
  static time_t sec = -1;
  static char cached[24];
  static size_t cl;
  struct timeval tv;
  gettimeofday(&tv, NULL);
  if (tv.tv_sec != sec) {
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    cl = strftime(cached, sizeof cached, "%Y-%m-%dT%H:%M:%S", &tm);
    sec = tv.tv_sec;
  }
  int ms = (int)(tv.tv_usec / 1000);
  memcpy(ts, cached, cl);
  ts[cl] = '.';
  ts[cl + 1] = (char)('0' + ms / 100);
  ts[cl + 2] = (char)('0' + ms / 10 % 10);
  ts[cl + 3] = (char)('0' + ms % 10);
  ts[cl + 4] = 'Z';
  ts[cl + 5] = '\0';
  return cl + 5;
}

static void emit(int level, const char *msg) {
  char line[8192];
  if (capture) {
    if (ncaptured == NCAP) {
      free(captured[0]);
      memmove(captured, captured + 1, (NCAP - 1) * sizeof *captured);
      ncaptured--;
    }
    size_t n = strlen(msg) + 8;
    captured[ncaptured] = malloc(n);
    if (captured[ncaptured]) snprintf(captured[ncaptured++], n, "%s %s", level_name(level), msg);
    return;
  }
  char ts[40];
  size_t tl = timestamp(ts);
  int len;
  if (json_lines) {
    /* Escape the message as a JSON string. */
    char esc[4096 * 2];
    size_t j = 0;
    for (const unsigned char *p = (const unsigned char *)msg; *p && j < sizeof esc - 8; p++) {
      if (*p == '"' || *p == '\\') {
        esc[j++] = '\\';
        esc[j++] = (char)*p;
      } else if (*p < 0x20) {
        j += (size_t)snprintf(esc + j, sizeof esc - j, "\\u%04x", *p);
      } else {
        esc[j++] = (char)*p;
      }
    }
    esc[j] = 0;
    len = snprintf(line, sizeof line, "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":\"%s\"}\n", ts,
                   level_name(level), esc);
  } else {
    /* "TS LEVEL MSG\n" as snprintf's "%s %-5s %s\n" wrote it, by hand. */
    const char *lv = level_name(level);
    size_t vl = strlen(lv), ml = strlen(msg), at;
    memcpy(line, ts, tl);
    at = tl;
    line[at++] = ' ';
    memcpy(line + at, lv, vl);
    at += vl;
    while (vl++ < 5)
      line[at++] = ' ';
    line[at++] = ' ';
    if (ml > sizeof line - at - 1) ml = sizeof line - at - 1;
    memcpy(line + at, msg, ml);
    at += ml;
    if (at < sizeof line - 1) line[at++] = '\n';
    len = (int)at;
  }
  if (len > (int)sizeof line - 1) len = (int)sizeof line - 1;
  ssize_t w = write(2, line, (size_t)len);
  (void)w;
}
