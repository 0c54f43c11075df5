/*
 * memprobe.c - an LD_PRELOAD library for bench/memory.mjs: a thread that
 * answers every line written to the FIFO named by MEMPROBE_FIFO with one
 * line appended to the file MEMPROBE_OUT: malloc's bytes in use
 * (mallinfo2 uordblks), in mmapped blocks (hblkhd) and the main arena size.
 * Unlike RSS these do not depend on which heap pages the OS took back, so
 * a per-connection or per-room figure repeats to within a few bytes.
 *
 * Owns: nothing of the server it is loaded into (it reads malloc's
 * counters only, and unsets its variables so children do not load it).
 * Must not: be linked into anything; glibc only (mallinfo2, glibc 2.33+).
 * Built by bench/memory.mjs: cc -O2 -shared -fPIC -o build/bench/memprobe.so
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static char fifo_path[512], out_path[512];

static void *probe_loop(void *arg) {
  (void)arg;
  for (;;) {
    FILE *f = fopen(fifo_path, "r"); /* blocks until the driver opens it */
    if (!f) return NULL;
    char line[64];
    while (fgets(line, sizeof line, f)) {
      struct mallinfo2 mi = mallinfo2();
      FILE *o = fopen(out_path, "a");
      if (!o) continue;
      fprintf(o, "%zu %zu %zu\n", mi.uordblks, mi.hblkhd, mi.arena);
      fclose(o);
    }
    fclose(f);
  }
  return NULL;
}

__attribute__((constructor)) static void memprobe_init(void) {
  const char *fifo = getenv("MEMPROBE_FIFO"), *out = getenv("MEMPROBE_OUT");
  if (!fifo || !out) return;
  snprintf(fifo_path, sizeof fifo_path, "%s", fifo);
  snprintf(out_path, sizeof out_path, "%s", out);
  unsetenv("MEMPROBE_FIFO");
  unsetenv("MEMPROBE_OUT");
  unsetenv("LD_PRELOAD");
  pthread_t t;
  if (pthread_create(&t, NULL, probe_loop, NULL) == 0) pthread_detach(t);
}
