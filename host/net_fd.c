/*
 * net_fd.c - fd watches: another library's socket (e.g. libpq's) polled by
 * the one event loop (net.h lr_net_watch_fd).
 *
 * Owns: the watch list, the raw-file vhost of the loop's context, the dups
 * lws closes; lr_net_poll_watched while no loop runs; the same watches as
 * the engine's lr_loop_fds (net_loop_fds, handed over by lr_net_run).
 * Must not: close the caller's fd, or run a callback from inside another
 * watch's teardown.
 */
#include "net_int.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

/* ======================= fd watches (lr_net_watch_fd) ======================= */

/* Another library's socket on this loop: lws polls a dup of the fd as a raw
 * file on a vhost of its own that listens on nothing (so no HTTP request or
 * WebSocket subprotocol can ever reach net_fd_callback). The dup is what lws
 * closes; the caller's fd is never touched. */
struct lr_net_watch {
  lr_net_watch *next, **pprev; /* net_watches; pprev NULL once unwatched */
  int fd;
  struct lws *wsi; /* NULL while no loop runs */
  bool want_write;
  int busy;  /* inside its callback */
  bool dead; /* unwatched during its callback: freed when it returns */
  lr_net_fd_cb cb;
  void *ud;
};
static lr_net_watch *net_watches;
static struct lws_vhost *net_fd_vh; /* set while a loop runs */

/* Run w's callback; 1 when w was unwatched meanwhile (and is now freed). */
static int net_fd_fire(lr_net_watch *w, int ev) {
  w->busy++;
  w->cb(w->ud, ev);
  w->busy--;
  if (!w->dead || w->busy) return 0;
  if (w->wsi) lws_set_opaque_user_data(w->wsi, NULL);
  free(w);
  return 1;
}

static int net_fd_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                           size_t len) {
  (void)user, (void)in, (void)len;
  lr_net_watch *w = wsi ? lws_get_opaque_user_data(wsi) : NULL;
  switch (reason) {
  case LWS_CALLBACK_RAW_RX_FILE:
    if (!w) return -1; /* unwatched: close the dup */
    return net_fd_fire(w, POLLIN) ? -1 : 0;
  case LWS_CALLBACK_RAW_WRITEABLE_FILE:
    if (!w) return -1;
    if (!w->want_write) return 0;
    w->want_write = false;
    return net_fd_fire(w, POLLOUT) ? -1 : 0;
  case LWS_CALLBACK_RAW_CLOSE_FILE:
    if (!w) return 0;
    lws_set_opaque_user_data(wsi, NULL);
    w->wsi = NULL;
    if (net_fd_vh) net_fd_fire(w, POLLHUP); /* not while the context goes away */
    return 0;
  default:
    return 0;
  }
}

static const struct lws_protocols net_fd_protocols[] = {
    {"lunaroom-fd", net_fd_callback, 0, 0, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

static void net_fd_adopt(lr_net_watch *w) {
  int d = fcntl(w->fd, F_DUPFD_CLOEXEC, 0);
  if (d < 0) {
    lr_error("fd watch: dup(%d): %s", w->fd, strerror(errno));
    return;
  }
  lws_adopt_desc_t info;
  memset(&info, 0, sizeof info);
  info.vh = net_fd_vh;
  info.type = LWS_ADOPT_RAW_FILE_DESC;
  info.fd.filefd = d;
  info.vh_prot_name = "lunaroom-fd";
  info.opaque = w;
  w->wsi = lws_adopt_descriptor_vhost_via_info(&info); /* closes d on failure */
  if (!w->wsi) {
    lr_error("fd watch: libwebsockets refused fd %d", w->fd);
    return;
  }
  if (w->want_write) lws_callback_on_writable(w->wsi);
}

lr_net_watch *lr_net_watch_fd(int fd, lr_net_fd_cb cb, void *ud) {
  if (fd < 0 || !cb) return NULL;
  lr_net_watch *w = lr_xcalloc(1, sizeof *w);
  w->fd = fd;
  w->cb = cb;
  w->ud = ud;
  w->next = net_watches;
  if (w->next) w->next->pprev = &w->next;
  w->pprev = &net_watches;
  net_watches = w;
  if (net_fd_vh) net_fd_adopt(w);
  return w;
}

void lr_net_watch_write(lr_net_watch *w, int on) {
  if (!w || w->dead) return;
  w->want_write = on != 0;
  if (on && w->wsi) lws_callback_on_writable(w->wsi);
}

void lr_net_unwatch_fd(lr_net_watch *w) {
  if (!w || w->dead) return;
  *w->pprev = w->next;
  if (w->next) w->next->pprev = w->pprev;
  w->pprev = NULL;
  w->dead = true;
  if (w->busy) return; /* net_fd_fire frees it, and closes the dup */
  if (w->wsi) {
    lws_set_opaque_user_data(w->wsi, NULL);
    lws_set_timeout(w->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
  }
  free(w);
}

int lr_net_poll_watched(int timeout_ms) {
  if (net_fd_vh) return 0;
  struct pollfd fds[64];
  lr_net_watch *ws[64];
  int n = 0;
  for (lr_net_watch *w = net_watches; w && n < 64; w = w->next) {
    fds[n] =
        (struct pollfd){.fd = w->fd, .events = (short)(POLLIN | (w->want_write ? POLLOUT : 0))};
    ws[n++] = w;
  }
  if (n == 0) {
    if (timeout_ms > 0) usleep((useconds_t)timeout_ms * 1000);
    return 0;
  }
  if (poll(fds, (nfds_t)n, timeout_ms) <= 0) return 0;
  int fired = 0;
  for (int i = 0; i < n; i++)
    ws[i]->busy++; /* a callback may unwatch the others */
  for (int i = 0; i < n; i++) {
    lr_net_watch *w = ws[i];
    short re = fds[i].revents;
    if (w->dead || !re) continue;
    int ev = re & (POLLERR | POLLHUP | POLLNVAL) ? POLLHUP : (re & POLLIN ? POLLIN : 0);
    if (ev) {
      w->cb(w->ud, ev);
      fired++;
    }
    if (!w->dead && (re & POLLOUT) && w->want_write) {
      w->want_write = false;
      w->cb(w->ud, POLLOUT);
      fired++;
    }
  }
  for (int i = 0; i < n; i++)
    if (--ws[i]->busy == 0 && ws[i]->dead) free(ws[i]);
  return fired;
}

/* The same watches as the engine's lr_loop_fds (server.h): a store's
 * database socket reaches this loop through the engine, never through
 * net.h (lr_net_run hands them to the server it runs). */
static void *net_fds_watch(int fd, void (*cb)(void *ud, int revents), void *ud) {
  return lr_net_watch_fd(fd, cb, ud);
}
static void net_fds_write(void *w, int on) {
  lr_net_watch_write(w, on);
}
static void net_fds_unwatch(void *w) {
  lr_net_unwatch_fd(w);
}
const lr_loop_fds net_loop_fds = {net_fds_watch, net_fds_write, net_fds_unwatch};

/* The loop starts: a vhost for the watches, and every watch made before. */
void net_fd_start(struct lws_context *ctx) {
  struct lws_context_creation_info vi;
  memset(&vi, 0, sizeof vi);
  vi.port = CONTEXT_PORT_NO_LISTEN;
  vi.protocols = net_fd_protocols;
  vi.vhost_name = "lunaroom-fd";
  net_fd_vh = lws_create_vhost(ctx, &vi);
  if (!net_fd_vh) {
    lr_error("fd watch: cannot create its vhost");
    return;
  }
  for (lr_net_watch *w = net_watches; w; w = w->next)
    if (!w->wsi) net_fd_adopt(w);
}

/* The context is about to be destroyed (it closes the dups): the watches
 * stay, served by lr_net_poll_watched from now on. */
void net_fd_stop(void) {
  net_fd_vh = NULL;
  for (lr_net_watch *w = net_watches; w; w = w->next) {
    if (w->wsi) lws_set_opaque_user_data(w->wsi, NULL);
    w->wsi = NULL;
  }
}
