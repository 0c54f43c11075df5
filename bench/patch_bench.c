/*
 * patch_bench.c - microbenchmark of the sync hot path: scalar writes through
 * lr_state_set into a 100-player room state, then one lr_json_encode_patch
 * into a reused buffer and lr_state_clear_dirty, as a flush would do.
 *
 * Owns: nothing but its own figures. Must not: assert anything (it prints
 * patches/s and bytes per patch; correctness lives in host/tests).
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "json.h"

#define NPLAYERS 100

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Eight characters from [A-Za-z0-9], like a signe publicId (deterministic). */
static void make_id(char id[9], uint32_t *seed) {
  static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  for (int i = 0; i < 8; i++) {
    *seed = *seed * 1103515245u + 12345u;
    id[i] = alphabet[(*seed >> 16) % 62];
  }
  id[8] = '\0';
}

static lr_node *build_state(char ids[NPLAYERS][9]) {
  lr_node *root = lr_node_new(LR_OBJECT), *players = lr_node_new(LR_OBJECT);
  uint32_t seed = 42;
  for (int i = 0; i < NPLAYERS; i++) {
    make_id(ids[i], &seed);
    char name[32];
    snprintf(name, sizeof name, "Player %d", i);
    lr_node *p = lr_node_new(LR_OBJECT);
    lr_obj_put(p, "x", 1, lr_node_int(i * 10));
    lr_obj_put(p, "y", 1, lr_node_int(i * 5));
    lr_obj_put(p, "score", 5, lr_node_int(0));
    lr_obj_put(p, "name", 4, lr_node_string(name, strlen(name)));
    lr_obj_put(players, ids[i], 8, p);
  }
  lr_obj_put(root, "players", 7, players);
  lr_obj_put(root, "gameState", 9, lr_node_string("waiting", 7));
  return root;
}

typedef struct result {
  double patches_per_s, bytes_per_patch, ns_per_patch;
  unsigned long patches;
} result;

/* One flush window: `movers` players (starting at *next, round robin) move,
 * then the sync patch is encoded into out and both channels are cleared, the
 * way a room with unthrottled sync and a storage flush per tick would. */
static size_t window(lr_node *root, lr_node *players, char ids[NPLAYERS][9], int movers,
                     int64_t *tick, int *next, lr_buf *out) {
  lr_node vx = {.type = LR_INT, .refs = 1}, vy = {.type = LR_INT, .refs = 1};
  for (int m = 0; m < movers; m++) {
    lr_node *p = lr_obj_get(players, ids[*next], 8);
    *next = (*next + 1) % NPLAYERS;
    vx.u.i = ++*tick % 100000;
    vy.u.i = (*tick * 7) % 100000 + 100000;
    lr_state_set(p, "x", 1, &vx, 0);
    lr_state_set(p, "y", 1, &vy, 0);
  }
  lr_buf_reset(out);
  lr_json_encode_patch(root, LR_CH_SYNC, out);
  lr_state_clear_dirty(root, LR_CH_SYNC);
  lr_state_clear_dirty(root, LR_CH_PERSIST);
  return out->len;
}

static result run(lr_node *root, char ids[NPLAYERS][9], int movers, double seconds, lr_buf *out) {
  lr_node *players = lr_obj_get(root, "players", 7);
  int64_t tick = 0;
  int next = 0;
  unsigned long n = 0;
  size_t bytes = 0;
  double t0 = now(), t;
  do {
    for (int i = 0; i < 256; i++, n++)
      bytes += window(root, players, ids, movers, &tick, &next, out);
    t = now() - t0;
  } while (t < seconds);
  return (result){n / t, (double)bytes / (double)n, t * 1e9 / (double)n, n};
}

int main(void) {
  char ids[NPLAYERS][9];
  lr_node *root = build_state(ids);
  lr_buf out;
  lr_buf_init(&out);

  run(root, ids, 1, 0.1, &out); /* warm-up: caches, buffer capacity */
  result one = run(root, ids, 1, 1.0, &out);
  char sample[256];
  snprintf(sample, sizeof sample, "%s", lr_buf_cstr(&out));
  result all = run(root, ids, NPLAYERS, 1.0, &out);

  printf("patch_bench: %d players, 8-char ids, scalar x/y writes, sync patch, clear dirty\n",
         NPLAYERS);
  printf("  one user moves, one patch:    %10.0f patches/s  %7.1f ns/patch  %6.1f bytes/patch"
         "  (%lu patches)\n",
         one.patches_per_s, one.ns_per_patch, one.bytes_per_patch, one.patches);
  printf("  all %d users move, one patch: %10.0f patches/s  %7.1f ns/patch  %6.1f bytes/patch"
         "  (%lu patches)\n",
         NPLAYERS, all.patches_per_s, all.ns_per_patch, all.bytes_per_patch, all.patches);
  printf("  sample one-user patch: %s\n", sample);

  lr_buf_free(&out);
  lr_node_release(root);
  return 0;
}
