/*
 * rand.c - random bytes and ids: the getrandom(2) pool, rejection sampling
 * onto an alphabet, and the seeded generator of the headless test host.
 * Must not: use the seeded generator unless the caller passes it (only the
 * headless test host's server has one, see lr_server_new), or degrade to a
 * weaker source: if the kernel cannot give random bytes the process aborts.
 */
#include "rand.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define POOL 512 /* one getrandom call per ~20 ids of 22 characters */

static unsigned char pool[POOL];
static size_t pool_pos = POOL;

static void fill(unsigned char *p, size_t n) {
  while (n) {
    ssize_t r = getrandom(p, n, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      fprintf(stderr, "lunaroom: getrandom failed: %s\n", strerror(errno));
      abort();
    }
    p += r;
    n -= (size_t)r;
  }
}

void lr_rand_bytes(void *out, size_t n) {
  unsigned char *o = out;
  while (n) {
    if (pool_pos == POOL) {
      fill(pool, POOL);
      pool_pos = 0;
    }
    size_t k = POOL - pool_pos < n ? POOL - pool_pos : n;
    memcpy(o, pool + pool_pos, k);
    memset(pool + pool_pos, 0, k); /* a byte handed out is not kept */
    pool_pos += k;
    o += k;
    n -= k;
  }
}

void lr_test_rng_seed(lr_test_rng *g, uint64_t seed) {
  g->s[0] = seed ^ 0x5DEECE66DULL;
  g->s[1] = (seed << 7) ^ 0xB5AD4ECEDA1CE2A9ULL;
  for (int i = 0; i < 8; i++)
    lr_test_rng_next(g);
}

uint64_t lr_test_rng_next(lr_test_rng *g) {
  uint64_t s1 = g->s[0];
  const uint64_t s0 = g->s[1];
  g->s[0] = s0;
  s1 ^= s1 << 23;
  g->s[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
  return g->s[1] + s0;
}

void lr_rand_id(lr_test_rng *det, char *out, size_t n, const char *alphabet) {
  size_t k = strlen(alphabet);
  if (k == 0 || k > 256) abort();
  /* Bytes >= limit are drawn again: limit is the largest multiple of k that
   * fits in a byte, so every character is equally likely. */
  unsigned limit = 256u - 256u % (unsigned)k;
  unsigned char buf[64];
  size_t have = 0, used = 0, i = 0;
  while (i < n) {
    if (used == have) {
      have = n - i + 8 < sizeof buf ? n - i + 8 : sizeof buf;
      if (det) {
        for (size_t j = 0; j < have; j += 8) {
          uint64_t v = lr_test_rng_next(det);
          for (size_t b = 0; b < 8 && j + b < have; b++)
            buf[j + b] = (unsigned char)(v >> (8 * b));
        }
      } else {
        lr_rand_bytes(buf, have);
      }
      used = 0;
    }
    unsigned b = buf[used++];
    if (b < limit) out[i++] = alphabet[b % k];
  }
  out[n] = '\0';
}
