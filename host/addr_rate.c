/*
 * addr_rate.c - token buckets keyed by client address, in fixed memory (see
 * addr_rate.h): room creations and new sessions per address.
 *
 * Owns: the bucket table (LR_AR_SLOTS slots, open addressing over
 * LR_AR_PROBE neighbours, a hash keyed with random bytes so an outsider
 * cannot aim addresses at one slot) and address normalisation.
 * Must not: log, allocate after creation, or know what a token pays for.
 */
#include "addr_rate.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "buf.h"

#define LR_AR_SLOTS 8192 /* 8192 * 40 bytes = 320 KiB per table */
#define LR_AR_PROBE 8

typedef struct {
  uint8_t key[16];
  uint8_t len; /* 0 = free */
  double tokens;
  int64_t at;
} slot;

struct lr_addr_rate {
  double rate, burst;
  uint64_t k0, k1;
  slot slots[LR_AR_SLOTS];
};

lr_addr_rate *lr_addr_rate_new(double rate, double burst) {
  lr_addr_rate *ar = lr_xcalloc(1, sizeof *ar);
  uint64_t k[2] = {0, 0};
  if (getrandom(k, sizeof k, GRND_NONBLOCK) != (ssize_t)sizeof k) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    k[0] ^= (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ULL;
    k[1] ^= (uint64_t)(uintptr_t)ar;
  }
  ar->k0 = k[0];
  ar->k1 = k[1];
  lr_addr_rate_set(ar, rate, burst);
  return ar;
}

void lr_addr_rate_free(lr_addr_rate *ar) {
  free(ar);
}

void lr_addr_rate_set(lr_addr_rate *ar, double rate, double burst) {
  ar->rate = rate > 0 ? rate : 0;
  ar->burst = burst >= 1 ? burst : 1;
}

double lr_addr_rate_rate(const lr_addr_rate *ar) {
  return ar->rate;
}

double lr_addr_rate_burst(const lr_addr_rate *ar) {
  return ar->burst;
}

/* The bytes that identify addr: 4 for IPv4 (and IPv4-mapped IPv6), the /64
 * prefix for IPv6 (one subscriber usually holds a whole /64), else the
 * first 16 bytes of the text. Returns the length. */
static uint8_t addr_key(const char *addr, uint8_t out[16]) {
  struct in_addr a4;
  struct in6_addr a6;
  if (inet_pton(AF_INET, addr, &a4) == 1) {
    memcpy(out, &a4, 4);
    return 4;
  }
  if (inet_pton(AF_INET6, addr, &a6) == 1) {
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(a6.s6_addr, mapped, 12) == 0) {
      memcpy(out, a6.s6_addr + 12, 4);
      return 4;
    }
    memcpy(out, a6.s6_addr, 8);
    out[8] = 6; /* never equal to an IPv4 key or a text key of length 9 */
    return 9;
  }
  size_t n = strnlen(addr, 16);
  memcpy(out, addr, n);
  return (uint8_t)(n == 9 ? 10 : n); /* a text key never has length 9 */
}

static uint64_t mix(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

static uint32_t key_hash(const lr_addr_rate *ar, const uint8_t *k, uint8_t len) {
  uint64_t h = ar->k0 ^ len;
  for (uint8_t i = 0; i < len; i++)
    h = mix(h ^ k[i] ^ ((uint64_t)i << 8));
  return (uint32_t)(mix(h ^ ar->k1) % LR_AR_SLOTS);
}

static double refilled(const lr_addr_rate *ar, const slot *sl, int64_t now) {
  double t = sl->tokens + (double)(now - sl->at) * ar->rate / 1000.0;
  return t > ar->burst ? ar->burst : t;
}

bool lr_addr_rate_take(lr_addr_rate *ar, const char *addr, int64_t now_ms) {
  if (ar->rate <= 0 || !addr || !*addr) return true;
  uint8_t k[16] = {0};
  uint8_t len = addr_key(addr, k);
  uint32_t h = key_hash(ar, k, len);
  slot *found = NULL, *spare = NULL;
  double spare_tokens = -1;
  for (uint32_t i = 0; i < LR_AR_PROBE; i++) {
    slot *sl = &ar->slots[(h + i) % LR_AR_SLOTS];
    if (sl->len == len && memcmp(sl->key, k, len) == 0) {
      found = sl;
      break;
    }
    /* A free slot, or the bucket nearest to full (a full one is as good as
     * new: its address lost nothing by forgetting it). */
    double t = sl->len ? refilled(ar, sl, now_ms) : ar->burst + 1;
    if (t > spare_tokens) {
      spare = sl;
      spare_tokens = t;
    }
  }
  if (!found) {
    found = spare;
    memcpy(found->key, k, sizeof k);
    found->len = len;
    found->tokens = ar->burst;
    found->at = now_ms;
  } else {
    found->tokens = refilled(ar, found, now_ms);
    found->at = now_ms;
  }
  if (found->tokens < 1) return false;
  found->tokens -= 1;
  return true;
}
