/*
 * log.c - writes log lines to stderr with a UTC timestamp and a level.
 * Must not: buffer lines across calls (each line is one write).
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

void lr_log(int level, const char *fmt, ...) {
  if (level < min_level && !capture) return;
  char msg[4096], line[8192], ts[40];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
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
  struct timeval tv;
  gettimeofday(&tv, NULL);
  struct tm tm;
  gmtime_r(&tv.tv_sec, &tm);
  size_t n = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(ts + n, sizeof ts - n, ".%03dZ", (int)(tv.tv_usec / 1000));
  int len;
  if (json_lines) {
    /* Escape the message as a JSON string. */
    char esc[sizeof msg * 2];
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
    len = snprintf(line, sizeof line, "%s %-5s %s\n", ts, level_name(level), msg);
  }
  if (len > (int)sizeof line - 1) len = (int)sizeof line - 1;
  ssize_t w = write(2, line, (size_t)len);
  (void)w;
}
