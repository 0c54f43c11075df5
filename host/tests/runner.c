/*
 * runner.c - runs every registered C unit test (optionally filtered by a
 * substring given on the command line) and prints "N passed, N failed".
 * Must not: contain tests itself.
 */
#include <stdlib.h>

#include "test.h"

typedef struct {
  const char *name, *file;
  lr_test_fn fn;
} entry;

static entry *tests;
static int ntests, captests;
int lr_test_failed;

void lr_test_register(const char *name, const char *file, lr_test_fn fn) {
  if (ntests == captests) {
    captests = captests ? captests * 2 : 64;
    tests = realloc(tests, sizeof(entry) * (size_t)captests);
    if (!tests) abort();
  }
  tests[ntests++] = (entry){name, file, fn};
}

static int by_name(const void *a, const void *b) {
  const entry *x = a, *y = b;
  int c = strcmp(x->file, y->file);
  return c ? c : strcmp(x->name, y->name);
}

int main(int argc, char **argv) {
  int passed = 0, failed = 0;
  qsort(tests, (size_t)ntests, sizeof(entry), by_name);
  for (int i = 0; i < ntests; i++) {
    if (argc > 1 && !strstr(tests[i].name, argv[1])) continue;
    lr_test_failed = 0;
    tests[i].fn();
    if (lr_test_failed) {
      failed++;
      fprintf(stderr, "FAIL %s\n", tests[i].name);
    } else {
      passed++;
      printf("ok   %s\n", tests[i].name);
    }
  }
  printf("unit: %d passed, %d failed\n", passed, failed);
  free(tests);
  return failed ? 1 : 0;
}
