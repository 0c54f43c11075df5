/*
 * test_hash.c - unit tests of hash.h: the FNV-1a vectors (32 and 64 bits,
 * continued over pieces as the storage room maps hash "ns" 0xff "room"),
 * and LR_CHAIN_REHASH (every entry lands in its new bucket, none is lost,
 * the chains keep the order the copies in room.c and storage_memory.c gave).
 * Must not: depend on any other host module.
 */
#include <stdint.h>
#include <stdlib.h>

#include "hash.h"
#include "test.h"

TEST(hash_fnv1a_vectors) {
  /* Published FNV-1a test vectors (draft-eastlake-fnv). */
  ASSERT_EQ_INT(lr_fnv1a(LR_FNV1A_INIT, "", 0), 0x811c9dc5u);
  ASSERT_EQ_INT(lr_fnv1a(LR_FNV1A_INIT, "a", 1), 0xe40c292cu);
  ASSERT_EQ_INT(lr_fnv1a(LR_FNV1A_INIT, "foobar", 6), 0xbf9cf968u);
  /* The published 64-bit offset basis is 14695981039346656037; the host's
   * has always been 1469598103934665603 (a digit short, see hash.h). */
  const uint64_t basis = 0xcbf29ce484222325ULL;
  ASSERT(lr_fnv1a64(basis, "a", 1) == 0xaf63dc4c8601ec8cULL);
  ASSERT(lr_fnv1a64(basis, "foobar", 6) == 0x85944171f73967e8ULL);
  ASSERT(LR_FNV1A64_INIT == 1469598103934665603ULL);
  ASSERT(lr_fnv1a64(LR_FNV1A64_INIT, "", 0) == 1469598103934665603ULL);
  /* Continuing over pieces is hashing their concatenation. */
  uint32_t h = lr_fnv1a(lr_fnv1a(LR_FNV1A_INIT, "ns", 2), "\xff", 1);
  ASSERT_EQ_INT(lr_fnv1a(h, "room", 4), lr_fnv1a(LR_FNV1A_INIT, "ns\xffroom", 7));
  uint64_t g = lr_fnv1a64(lr_fnv1a64(LR_FNV1A64_INIT, "foo", 3), "bar", 3);
  ASSERT(g == lr_fnv1a64(LR_FNV1A64_INIT, "foobar", 6));
}

typedef struct ent {
  unsigned key;
  struct ent *link;
} ent;

static size_t ent_bucket(const ent *e, size_t nb) {
  return e->key % nb;
}

TEST(hash_chain_rehash_moves_every_entry) {
  enum { N = 200 };
  ent *all = calloc(N, sizeof *all);
  size_t nb = 4;
  ent **b = calloc(nb, sizeof *b);
  for (unsigned i = 0; i < N; i++) {
    all[i].key = i * 7919u;
    size_t h = ent_bucket(&all[i], nb);
    all[i].link = b[h];
    b[h] = &all[i];
  }
  for (int round = 0; round < 3; round++) {
    size_t nn = nb * 4;
    LR_CHAIN_REHASH(ent, b, nb, nn, link, ent_bucket);
    nb = nn;
    size_t seen = 0;
    for (size_t i = 0; i < nb; i++) {
      unsigned last = 0;
      int first = 1;
      for (ent *e = b[i]; e; e = e->link) {
        ASSERT_EQ_INT(ent_bucket(e, nb), i);
        /* Each new bucket takes one old chain, reversed (every entry is
         * pushed in front): built newest first, the chains run oldest first
         * after one rehash, newest first after two, ... */
        if (!first) ASSERT(round % 2 == 0 ? e->key > last : e->key < last);
        last = e->key;
        first = 0;
        seen++;
      }
    }
    ASSERT_EQ_INT(seen, N);
  }
  free(b);
  free(all);
}
