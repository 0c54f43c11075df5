/*
 * rand.h - random bytes and random ids.
 *
 * Owns: the process CSPRNG pool (kernel getrandom(2), refilled a block at a
 * time so the join path does not pay a syscall per id), the unbiased mapping
 * of random bytes onto an id alphabet (rejection sampling, never `% k`), and
 * the seeded deterministic generator the headless test host uses so specs
 * are reproducible.
 * Must not: hand out ids from the seeded generator to anything but the
 * headless test host (lr_server_new only seeds with a virtual clock; `serve`
 * never does), fall back to a weaker source when getrandom fails (it aborts),
 * or be called from more than one thread (the pool is not locked; the host
 * has one loop and never forks).
 */
#ifndef LR_RAND_H
#define LR_RAND_H

#include <stddef.h>
#include <stdint.h>

/* n bytes from the kernel CSPRNG (through the pool). */
void lr_rand_bytes(void *out, size_t n);

/* The deterministic generator of the headless test host (xorshift128+: fast
 * and reproducible, and predictable from its output, which is why it is never
 * used for a server that talks to the network). */
typedef struct lr_test_rng {
  uint64_t s[2];
} lr_test_rng;
void lr_test_rng_seed(lr_test_rng *g, uint64_t seed);
uint64_t lr_test_rng_next(lr_test_rng *g);

/* n characters drawn uniformly from alphabet (1..256 distinct bytes), then a
 * NUL. det NULL: the CSPRNG (every server that serves the network);
 * otherwise the seeded test generator. */
void lr_rand_id(lr_test_rng *det, char *out, size_t n, const char *alphabet);

/* Id sizes. Secrets (a private session id the server makes up, transfer
 * tokens) carry at least 128 bits: 22 characters of base62 = 130.9 bits. */
#define LR_ALPHA62 "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
#define LR_ALPHA36 "0123456789abcdefghijklmnopqrstuvwxyz"
#define LR_SECRET_ID_LEN 22

#endif
