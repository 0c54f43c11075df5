/*
 * log.h - one-line log records on stderr (human text by default, JSON lines
 * with --log-format json).
 *
 * Owns: formatting and the output stream of log lines.
 * Must not: allocate per line beyond a stack buffer, or log secrets (callers
 * never pass them).
 */
#ifndef LR_LOG_H
#define LR_LOG_H

#include <stddef.h>

enum { LR_LOG_DEBUG = 0, LR_LOG_INFO, LR_LOG_WARN, LR_LOG_ERROR };

void lr_log_set_level(int level);
/* Capture mode (specs): lines go to an in-memory list (the last 256) instead
 * of stderr. lr_log_captured(i) returns line i (0-based) or NULL. */
void lr_log_capture(int on);
const char *lr_log_captured(long i);
void lr_log_capture_clear(void);
void lr_log_set_json(int on);
/* Log one line. msg is printf-style. */
void lr_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Log one line: the n strings of parts joined (NULL counts as ""), the same
 * text as lr_log with "%s%s..." without printf's cost (a line per join). */
void lr_log_parts(int level, const char *const *parts, size_t n);

/* Log one line of a refusal that a client can repeat at will (no such room,
 * too many connections, ...): per key, at most `burst` lines (default 10)
 * per window (default 1000 ms); the rest are counted and summarised as
 * "suppressed K similar lines (key) in the last N ms" before the next line
 * once the window is over. key is short (47 bytes are kept). */
void lr_log_limited(int level, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Write the pending summaries now (shutdown). */
void lr_log_flush_suppressed(void);
/* Tests: the limiter's burst and window (also forgets every key). */
void lr_log_set_limit(unsigned burst, long window_ms);

#define lr_warn_limited(key, ...) lr_log_limited(LR_LOG_WARN, key, __VA_ARGS__)

#define lr_info(...) lr_log(LR_LOG_INFO, __VA_ARGS__)
#define lr_warn(...) lr_log(LR_LOG_WARN, __VA_ARGS__)
#define lr_error(...) lr_log(LR_LOG_ERROR, __VA_ARGS__)
#define lr_debug(...) lr_log(LR_LOG_DEBUG, __VA_ARGS__)

#endif
