/*
 * test.h - the C unit test harness: registration and assertion macros.
 *
 * Owns: TEST() registration (constructor functions) and ASSERT_* macros that
 * print both sides. Must not: depend on any host module.
 *
 * Usage, in host/tests/test_<module>.c:
 *   #include "test.h"
 *   TEST(value_set_marks_dirty) { ASSERT_EQ_INT(1, 1); }
 */
#ifndef LR_TEST_H
#define LR_TEST_H

#include <stdio.h>
#include <string.h>

typedef void (*lr_test_fn)(void);
void lr_test_register(const char *name, const char *file, lr_test_fn fn);
extern int lr_test_failed; /* set by the ASSERT macros of the running test */

#define TEST(name)                                                                                 \
  static void test_##name(void);                                                                   \
  __attribute__((constructor)) static void register_##name(void) {                                 \
    lr_test_register(#name, __FILE__, test_##name);                                                \
  }                                                                                                \
  static void test_##name(void)

#define LR_TEST_FAIL(...)                                                                          \
  do {                                                                                             \
    fprintf(stderr, "    %s:%d: ", __FILE__, __LINE__);                                            \
    fprintf(stderr, __VA_ARGS__);                                                                  \
    fprintf(stderr, "\n");                                                                         \
    lr_test_failed = 1;                                                                            \
    return;                                                                                        \
  } while (0)

#define ASSERT(c)                                                                                  \
  do {                                                                                             \
    if (!(c)) LR_TEST_FAIL("assertion failed: %s", #c);                                            \
  } while (0)
#define ASSERT_EQ_INT(a, b)                                                                        \
  do {                                                                                             \
    long long a_ = (long long)(a), b_ = (long long)(b);                                            \
    if (a_ != b_) LR_TEST_FAIL("%s == %s: %lld != %lld", #a, #b, a_, b_);                          \
  } while (0)
#define ASSERT_EQ_STR(a, b)                                                                        \
  do {                                                                                             \
    const char *a_ = (a), *b_ = (b);                                                               \
    if (!a_ || !b_ || strcmp(a_, b_) != 0)                                                         \
      LR_TEST_FAIL("%s == %s:\n      got      %s\n      expected %s", #a, #b, a_ ? a_ : "(null)",  \
                   b_ ? b_ : "(null)");                                                            \
  } while (0)

#endif
