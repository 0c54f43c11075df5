/*
 * test_rand.c - unit tests of rand.c: the getrandom pool, the unbiased
 * mapping onto an alphabet, the seeded generator of the headless test host,
 * and that servers on the real clock never use it.
 * Must not: depend on a particular random outcome beyond what a uniform
 * source gives with overwhelming probability (bounds at p < 1e-6).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "engine.h"
#include "rand.h"
#include "test.h"

TEST(rand_bytes_across_the_pool) {
  /* 3 x 700 bytes cross the 512-byte pool refill; no two draws alike */
  unsigned char a[700], b[700], c[700];
  lr_rand_bytes(a, sizeof a);
  lr_rand_bytes(b, sizeof b);
  lr_rand_bytes(c, sizeof c);
  ASSERT(memcmp(a, b, sizeof a) != 0 && memcmp(b, c, sizeof b) != 0);
  int zeros = 0;
  for (size_t i = 0; i < sizeof b; i++)
    zeros += b[i] == 0;
  ASSERT(zeros < 30); /* a pool byte is zeroed after use: never handed out twice */
}

/* Chi-square of n draws over alphabet alpha must stay under a p < 1e-6 bound. */
static double chi2(lr_test_rng *det, const char *alpha, int n) {
  size_t k = strlen(alpha);
  long count[256] = {0};
  char out[101];
  for (int i = 0; i < n / 100; i++) {
    lr_rand_id(det, out, 100, alpha);
    for (int j = 0; j < 100; j++)
      count[(unsigned char)out[j]]++;
  }
  double e = (double)n / (double)k, x = 0;
  for (size_t i = 0; i < k; i++) {
    double o = (double)count[(unsigned char)alpha[i]];
    x += (o - e) * (o - e) / e;
  }
  return x;
}

TEST(rand_id_is_uniform) {
  /* `% k` on a byte would give the first 256 % k characters one extra
   * share: for k = 62 the first 8 would come 21% more often than the rest,
   * a chi-square in the thousands here. Rejection sampling gives none. */
  const char *alphas[] = {"abc", LR_ALPHA62, LR_ALPHA36};
  for (int a = 0; a < 3; a++) {
    double k = (double)strlen(alphas[a]);
    double bound = (k - 1) + 8 * sqrt(2 * (k - 1));
    double x = chi2(NULL, alphas[a], 300000);
    if (x >= bound) LR_TEST_FAIL("alphabet %d: chi-square %.1f >= %.1f", a, x, bound);
  }
}

TEST(rand_test_generator_is_reproducible) {
  lr_test_rng g1, g2;
  lr_test_rng_seed(&g1, 42);
  lr_test_rng_seed(&g2, 42);
  char a[23], b[23];
  lr_rand_id(&g1, a, 22, LR_ALPHA62);
  lr_rand_id(&g2, b, 22, LR_ALPHA62);
  ASSERT_EQ_STR(a, b);
  ASSERT_EQ_INT(22, strlen(a));
}

TEST(rand_servers_on_the_real_clock_ignore_the_seed) {
  lr_server *s1 = lr_server_new(NULL, NULL, false, false, 42);
  lr_server *s2 = lr_server_new(NULL, NULL, false, false, 42);
  lr_server *v1 = lr_server_new(NULL, NULL, false, true, 42);
  lr_server *v2 = lr_server_new(NULL, NULL, false, true, 42);
  ASSERT(!s1->rng_seeded && !s2->rng_seeded && v1->rng_seeded && v2->rng_seeded);
  char a[23], b[23], c[23], d[23];
  lr_random_id(s1, a, 22, LR_ALPHA62);
  lr_random_id(s2, b, 22, LR_ALPHA62);
  lr_random_id(v1, c, 22, LR_ALPHA62);
  lr_random_id(v2, d, 22, LR_ALPHA62);
  lr_server_free(s1);
  lr_server_free(s2);
  lr_server_free(v1);
  lr_server_free(v2);
  ASSERT(strcmp(a, b) != 0);
  ASSERT_EQ_STR(c, d);
}
