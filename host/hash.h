/*
 * hash.h - the host's hashing: FNV-1a (32 and 64 bits) and the rehash of a
 * chained hash table.
 *
 * Owns: lr_fnv1a, lr_fnv1a64, LR_CHAIN_REHASH (every string hash and every
 * chained table's growth in host/ goes through these).
 * Must not: know what is hashed (rooms, keys, addresses) or choose when a
 * table grows (its owner does).
 */
#ifndef LR_HASH_H
#define LR_HASH_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "buf.h"

/* FNV-1a over n bytes of p, continuing from h (LR_FNV1A_INIT to start):
 * room tables, object index, address table, storage room maps. */
#define LR_FNV1A_INIT 2166136261u
static inline uint32_t lr_fnv1a(uint32_t h, const void *p, size_t n) {
  const unsigned char *s = p;
  for (size_t i = 0; i < n; i++)
    h = (h ^ s[i]) * 16777619u;
  return h;
}

/* The 64-bit FNV-1a, continuing from h (LR_FNV1A64_INIT to start): code
 * versions (core.hash), the memory store's room map. LR_FNV1A64_INIT is not
 * the published offset basis (14695981039346656037) but that number a digit
 * short, as both former copies had it: kept, so that the code versions
 * core.hash gives do not change. */
#define LR_FNV1A64_INIT 1469598103934665603ULL
static inline uint64_t lr_fnv1a64(uint64_t h, const void *p, size_t n) {
  const unsigned char *s = p;
  for (size_t i = 0; i < n; i++)
    h = (h ^ s[i]) * 1099511628211ULL;
  return h;
}

/* Move the entries of the chained table `buckets` (T **, nold buckets, each
 * entry linked through its field `next`) into a new array of nnew buckets,
 * free the old array and store the new one in `buckets`. bucket_of(e, nnew)
 * is the new bucket of entry e. Entries keep their relative order per old
 * bucket (each is pushed in front of its new chain), as before the merge of
 * room.c's and storage_memory.c's copies. The caller stores nnew. */
#define LR_CHAIN_REHASH(T, buckets, nold, nnew, next, bucket_of)                                   \
  do {                                                                                             \
    T **lr_nb_ = lr_xcalloc((nnew), sizeof *lr_nb_);                                               \
    for (size_t lr_i_ = 0; lr_i_ < (size_t)(nold); lr_i_++) {                                      \
      T *lr_e_ = (buckets)[lr_i_];                                                                 \
      while (lr_e_) {                                                                              \
        T *lr_n_ = lr_e_->next;                                                                    \
        size_t lr_h_ = (size_t)bucket_of(lr_e_, (nnew));                                           \
        lr_e_->next = lr_nb_[lr_h_];                                                               \
        lr_nb_[lr_h_] = lr_e_;                                                                     \
        lr_e_ = lr_n_;                                                                             \
      }                                                                                            \
    }                                                                                              \
    free(buckets);                                                                                 \
    (buckets) = lr_nb_;                                                                            \
  } while (0)

#endif
