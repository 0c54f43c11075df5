/*
 * test_addr_rate.c - per-address token buckets (addr_rate.c): refill,
 * address normalisation, and a table full of other addresses.
 */
#include <stdio.h>

#include "addr_rate.h"
#include "test.h"

TEST(addr_rate_bucket_refills) {
  lr_addr_rate *ar = lr_addr_rate_new(2, 3);
  for (int i = 0; i < 3; i++)
    ASSERT(lr_addr_rate_take(ar, "192.0.2.1", 0));
  ASSERT(!lr_addr_rate_take(ar, "192.0.2.1", 0));
  ASSERT(lr_addr_rate_take(ar, "192.0.2.2", 0)); /* another address */
  ASSERT(!lr_addr_rate_take(ar, "192.0.2.1", 499));
  ASSERT(lr_addr_rate_take(ar, "192.0.2.1", 500)); /* 2/s: one token per 500 ms */
  ASSERT(!lr_addr_rate_take(ar, "192.0.2.1", 500));
  ASSERT(lr_addr_rate_take(ar, NULL, 500)); /* in-process: not counted */
  ASSERT(lr_addr_rate_take(ar, "", 500));
  lr_addr_rate_set(ar, 0, 1); /* off */
  for (int i = 0; i < 100; i++)
    ASSERT(lr_addr_rate_take(ar, "192.0.2.1", 500));
  lr_addr_rate_free(ar);
}

TEST(addr_rate_ipv6_by_prefix_and_mapped_ipv4) {
  lr_addr_rate *ar = lr_addr_rate_new(1, 2);
  ASSERT(lr_addr_rate_take(ar, "2001:db8::1", 0));
  ASSERT(lr_addr_rate_take(ar, "2001:db8::ffff:2", 0));
  ASSERT(!lr_addr_rate_take(ar, "2001:db8:0:0:1::3", 0)); /* same /64 */
  ASSERT(lr_addr_rate_take(ar, "2001:db8:0:1::1", 0));    /* next /64 */
  ASSERT(lr_addr_rate_take(ar, "::ffff:198.51.100.1", 0));
  ASSERT(lr_addr_rate_take(ar, "198.51.100.1", 0));
  ASSERT(!lr_addr_rate_take(ar, "198.51.100.1", 0)); /* mapped and plain are one address */
  lr_addr_rate_free(ar);
}

TEST(addr_rate_many_addresses_fixed_memory) {
  /* 100,000 addresses through a table of 8192 slots: each gets its burst;
   * an address seen again right away is still limited unless its slot was
   * handed to a newcomer (then it starts full, as a new address would). */
  lr_addr_rate *ar = lr_addr_rate_new(1, 1);
  char a[64];
  int refused = 0;
  for (int i = 0; i < 100000; i++) {
    snprintf(a, sizeof a, "10.%d.%d.%d", (i >> 16) & 255, (i >> 8) & 255, i & 255);
    ASSERT(lr_addr_rate_take(ar, a, 0));
    if (!lr_addr_rate_take(ar, a, 0)) refused++;
  }
  ASSERT_EQ_INT(100000, refused);
  lr_addr_rate_free(ar);
}
