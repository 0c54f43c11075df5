/*
 * test_log.c - C unit tests of log.c: lr_log_parts writes the same line as
 * lr_log with the equivalent format (the join line is built without printf).
 */
#include <stdlib.h>
#include <string.h>

#include "../log.h"
#include "test.h"

TEST(log_parts_writes_the_line_lr_log_writes) {
  lr_log_capture_clear();
  lr_log_capture(1);
  const char *line[] = {"conn ", "abc123", " room ", "main/demo", ": open from ", "127.0.0.1"};
  lr_log_parts(LR_LOG_INFO, line, 6);
  lr_info("conn %s room %s: open from %s", "abc123", "main/demo", "127.0.0.1");
  const char *empty[] = {"a", NULL, "", "b"};
  lr_log_parts(LR_LOG_WARN, empty, 4);
  /* longer than the 4096-byte message buffer: truncated at the same byte */
  size_t big = 5000;
  char *s = malloc(big + 1);
  memset(s, 'x', big);
  s[big] = '\0';
  const char *longp[] = {"head ", s, " tail"};
  lr_log_parts(LR_LOG_INFO, longp, 3);
  lr_info("head %s tail", s);
  free(s);
  ASSERT_EQ_STR("info conn abc123 room main/demo: open from 127.0.0.1", lr_log_captured(0));
  ASSERT_EQ_STR(lr_log_captured(0), lr_log_captured(1));
  ASSERT_EQ_STR("warn ab", lr_log_captured(2));
  ASSERT(lr_log_captured(3) && strlen(lr_log_captured(3)) == strlen("info ") + 4095);
  ASSERT_EQ_STR(lr_log_captured(3), lr_log_captured(4));
  lr_log_capture_clear();
  lr_log_capture(0);
}
