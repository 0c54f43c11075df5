/*
 * genlib.h - what the two load generators of the benchmarks share
 * (bench/loadgen: libwebsockets client; bench/fastgen: its own epoll RFC 6455
 * client): the clock, the server's CPU and RSS from /proc, the latency
 * histogram, the loopback-only URL check, rate sweeps, a measured step's
 * figures and verdict, the run of a phase until saturation, and the table and
 * JSON output. Owns: the output format both generators print (compare.mjs
 * reads that JSON). Must not: know about sockets, frames or the wire
 * protocol; those stay in each generator.
 */
#ifndef LR_BENCH_GENLIB_H
#define LR_BENCH_GENLIB_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#define GEN_MAX_STEPS 40

/* The generator's name (the prefix of its messages) and --quiet. */
extern const char *gen_prog;
extern bool gen_quiet;

/* Print "<prog>: <message>" on stderr and exit with status 2. */
void gen_die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/* The same without exiting, unless --quiet. */
void gen_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

uint64_t gen_now_us(void);       /* monotonic clock, microseconds */
double gen_self_cpu_s(void);     /* this process's user + system CPU, seconds */
double gen_proc_cpu_s(long pid); /* pid's user + system CPU, seconds; -1 if unknown */
long gen_proc_rss_kb(long pid);  /* pid's resident set, KiB; -1 if unknown */

/* Log-linear histogram of microseconds: exact below 128, then 64 buckets per
 * power of two (under 1.6% error). */
#define GEN_H_SUB 64
#define GEN_H_BUCKETS (128 + 40 * GEN_H_SUB)
typedef struct {
  uint64_t n, max, sum;
  uint64_t b[GEN_H_BUCKETS];
} gen_hist;

int gen_h_index(uint64_t v);
static inline void gen_h_add(gen_hist *h, uint64_t v, uint64_t count) {
  h->b[gen_h_index(v)] += count;
  h->n += count;
  h->sum += v * count;
  if (v > h->max) h->max = v;
}
/* The p-quantile in milliseconds (-1 when empty). */
double gen_h_pct_ms(const gen_hist *h, double p);

/* ws://HOST:PORT or http://HOST:PORT (IPv6 in brackets). Every address HOST
 * resolves to must be loopback, or the generator refuses (exits 2). Fills
 * host (hostcap bytes), *port, the address to connect to (IPv4 preferred)
 * and its text form (addr, INET6_ADDRSTRLEN bytes; may be NULL). */
void gen_parse_url(const char *url, char *host, size_t hostcap, int *port,
                   struct sockaddr_storage *sa, socklen_t *salen, char *addr);

/* One measured load step. Figures that could not be taken are -1 (null in
 * the JSON). */
typedef struct {
  double offered;   /* actions/s scheduled */
  double sent;      /* actions/s written */
  double actions;   /* actions/s whose effect came back */
  double delivered; /* packets/s received by all clients */
  double mbps;      /* MB/s received */
  double p50, p90, p99, max_ms, mean_ms;
  uint64_t samples;
  double cpu_s, cpu_per_100k, srv_cpu_pct, lg_cpu_pct;
  uint64_t backlog; /* actions (x readers in a fan-out) not seen back after the drain */
  bool retried;     /* the first attempt missed only on latency; this is the second */
  bool refined;     /* a bisection step between the last step that held and the first miss */
  bool ok;
  const char *why;
} gen_step;

typedef struct {
  const char *name;
  double rates[GEN_MAX_STEPS];
  int nrates, nsteps, sat;
  int refine; /* --refine K: K bisection steps after the first miss (0: none) */
  gen_step steps[GEN_MAX_STEPS];
  const char *sat_why;
} gen_phase;

/* The rates of a phase: a sweep FROM:FACTOR:MAX, else a list "a,b,c", else
 * one step at rate (when rate > 0). */
void gen_parse_rates(gen_phase *ph, const char *sweep, const char *list, double rate);

/* Fill a step's latency, CPU and verdict from its window: lat holds the
 * latencies, el the window in seconds, acts the actions seen back in it,
 * srv0/srv1 the server's CPU (or -1) and lg0/lg1 the generator's, around the
 * window. s->offered, sent, actions, delivered, mbps and backlog are set by
 * the caller before. */
void gen_step_finish(gen_step *s, const gen_hist *lat, double el, uint64_t acts, double srv0,
                     double srv1, double lg0, double lg1);

/* Run the steps of a phase until saturation: p99 > 100 ms, under 90% of the
 * offered actions, a backlog, or (plateau) a step 20% faster that does not
 * bring 5% more. A step that kept up but missed only on latency is run once
 * more and the second result counts (one scheduling hiccup on a shared
 * machine does that). */
void gen_run_phase(gen_phase *ph, gen_step (*run)(double rate), const volatile bool *interrupted,
                   bool plateau);

/* "%.2f" below 10 ms, "%.1f" above, "-" for unknown. */
void gen_fmt_ms(char *b, size_t n, double v);
/* A phase as a Markdown table on stdout, and its saturation line. */
void gen_print_phase(const gen_phase *ph);

/* JSON output: gen_json_begin opens FILE ("-" = stdout) and the top object;
 * the writers add members to the object open now; gen_json_end closes it. */
void gen_json_begin(const char *file);
void gen_json_end(void);
void gen_jkey(const char *k);
void gen_jnum(const char *k, double v); /* negative, NaN or inf -> null */
void gen_jint(const char *k, long long v);
void gen_jstr(const char *k, const char *v);
void gen_jbool(const char *k, bool v);
void gen_jopen(const char *k); /* k NULL: a value, e.g. in an array */
void gen_jclose(void);
void gen_json_phase(const gen_phase *ph);

#endif
