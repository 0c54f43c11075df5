/*
 * addr_rate.h - token buckets keyed by client address, in fixed memory: how
 * many rooms one address may create, how many new sessions it may open.
 *
 * Owns: address normalisation (IPv4; IPv6 by its /64 prefix; an IPv4-mapped
 * IPv6 address as IPv4) and one bucket per address in a table of fixed size.
 * Must not: log, know rooms or sessions, or allocate per call.
 */
#ifndef LR_ADDR_RATE_H
#define LR_ADDR_RATE_H

#include <stdbool.h>
#include <stdint.h>

typedef struct lr_addr_rate lr_addr_rate;

/* rate: tokens per second (0 = no limit), burst: bucket size (>= 1). */
lr_addr_rate *lr_addr_rate_new(double rate, double burst);
void lr_addr_rate_free(lr_addr_rate *ar);
void lr_addr_rate_set(lr_addr_rate *ar, double rate, double burst);
double lr_addr_rate_rate(const lr_addr_rate *ar);
double lr_addr_rate_burst(const lr_addr_rate *ar);
/* Take one token of addr's bucket at now_ms. true: allowed (always, when
 * the rate is 0 or addr is NULL or ""). Linear in strlen(addr), no
 * allocation. When every slot an address may use holds a bucket still
 * refilling, the fullest of them is given to the newcomer. */
bool lr_addr_rate_take(lr_addr_rate *ar, const char *addr, int64_t now_ms);

#endif
