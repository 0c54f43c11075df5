/*
 * genlib.c - what the two load generators share (see genlib.h): clock, /proc
 * readings, histogram, loopback-only URLs, rate sweeps, a step's figures and
 * verdict, the phase runner, and the table/JSON output. Owns: the output
 * format. Must not: touch sockets or the wire protocol.
 */
#include "genlib.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

const char *gen_prog = "gen";
bool gen_quiet;

static void vsay(const char *fmt, va_list ap) {
  fprintf(stderr, "%s: ", gen_prog);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
}

void gen_die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsay(fmt, ap);
  va_end(ap);
  exit(2);
}

void gen_note(const char *fmt, ...) {
  if (gen_quiet) return;
  va_list ap;
  va_start(ap, fmt);
  vsay(fmt, ap);
  va_end(ap);
}

/* ---------------------------------------------------------------- time, /proc */

uint64_t gen_now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

double gen_self_cpu_s(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
         ru.ru_stime.tv_usec / 1e6;
}

double gen_proc_cpu_s(long pid) {
  if (pid <= 0) return -1;
  char path[64], buf[2048];
  snprintf(path, sizeof path, "/proc/%ld/stat", pid);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  char *p = strrchr(buf, ')'); /* the command name may hold spaces */
  if (!p) return -1;
  unsigned long long ut = 0, st = 0; /* fields 14 and 15 */
  if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
    return -1;
  return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

long gen_proc_rss_kb(long pid) {
  if (pid <= 0) return -1;
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%ld/status", pid);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  long kb = -1;
  while (fgets(line, sizeof line, f))
    if (!strncmp(line, "VmRSS:", 6)) {
      kb = strtol(line + 6, NULL, 10);
      break;
    }
  fclose(f);
  return kb;
}

/* ---------------------------------------------------------------- histogram */

int gen_h_index(uint64_t v) {
  if (v < 128) return (int)v;
  int e = 63 - __builtin_clzll(v), shift = e - 6; /* e >= 7 */
  int i = 128 + (e - 7) * GEN_H_SUB + (int)((v >> shift) - GEN_H_SUB);
  return i < GEN_H_BUCKETS ? i : GEN_H_BUCKETS - 1;
}

static uint64_t h_value(int i) { /* middle of bucket i */
  if (i < 128) return (uint64_t)i;
  int e = (i - 128) / GEN_H_SUB + 7, m = (i - 128) % GEN_H_SUB + GEN_H_SUB, shift = e - 6;
  return ((uint64_t)m << shift) + ((1ull << shift) >> 1);
}

double gen_h_pct_ms(const gen_hist *h, double p) {
  if (!h->n) return -1;
  uint64_t want = (uint64_t)ceil(p * (double)h->n), acc = 0;
  if (want < 1) want = 1;
  for (int i = 0; i < GEN_H_BUCKETS; i++) {
    acc += h->b[i];
    if (acc >= want) {
      uint64_t v = h_value(i);
      return (double)(v > h->max ? h->max : v) / 1000.0;
    }
  }
  return (double)h->max / 1000.0;
}

/* ---------------------------------------------------------------- URL */

void gen_parse_url(const char *url, char *host, size_t hostcap, int *port,
                   struct sockaddr_storage *sa, socklen_t *salen, char *addr) {
  const char *p = url;
  if (!strncmp(p, "ws://", 5))
    p += 5;
  else if (!strncmp(p, "http://", 7))
    p += 7;
  else
    gen_die("--url must be ws://HOST:PORT (no TLS: loopback only)");
  const char *hs = p, *he;
  if (*p == '[') {
    hs = p + 1;
    he = strchr(hs, ']');
    if (!he) gen_die("bad URL %s", url);
    p = he + 1;
  } else {
    for (he = p; *he && *he != ':' && *he != '/'; he++)
      ;
    p = he;
  }
  if (he == hs || (size_t)(he - hs) >= hostcap) gen_die("bad host in %s", url);
  memcpy(host, hs, (size_t)(he - hs));
  host[he - hs] = 0;
  if (*p != ':') gen_die("--url needs a port: %s", url);
  *port = atoi(p + 1);
  if (*port <= 0 || *port > 65535) gen_die("bad port in %s", url);
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
  int e = getaddrinfo(host, NULL, &hints, &res);
  if (e || !res) gen_die("cannot resolve %s: %s", host, gai_strerror(e));
  bool have = false;
  for (struct addrinfo *a = res; a; a = a->ai_next) {
    bool loop = false;
    char s[INET6_ADDRSTRLEN] = "";
    if (a->ai_family == AF_INET) {
      struct in_addr in = ((struct sockaddr_in *)a->ai_addr)->sin_addr;
      loop = (ntohl(in.s_addr) >> 24) == 127;
      inet_ntop(AF_INET, &in, s, sizeof s);
    } else if (a->ai_family == AF_INET6) {
      struct in6_addr in6 = ((struct sockaddr_in6 *)a->ai_addr)->sin6_addr;
      loop = IN6_IS_ADDR_LOOPBACK(&in6);
      inet_ntop(AF_INET6, &in6, s, sizeof s);
    }
    if (!loop) {
      freeaddrinfo(res);
      gen_die("refusing %s (%s): the load generator only targets loopback addresses", host, s);
    }
    if (!have || a->ai_family == AF_INET) {
      memcpy(sa, a->ai_addr, a->ai_addrlen);
      *salen = a->ai_addrlen;
      if (addr) snprintf(addr, INET6_ADDRSTRLEN, "%s", s);
      have = true;
    }
  }
  freeaddrinfo(res);
  if (sa->ss_family == AF_INET)
    ((struct sockaddr_in *)sa)->sin_port = htons((uint16_t)*port);
  else
    ((struct sockaddr_in6 *)sa)->sin6_port = htons((uint16_t)*port);
}

/* ---------------------------------------------------------------- steps */

void gen_parse_rates(gen_phase *ph, const char *sweep, const char *list, double rate) {
  if (sweep) {
    double a = 0, f = 0, m = 0;
    if (sscanf(sweep, "%lf:%lf:%lf", &a, &f, &m) != 3 || a <= 0 || f <= 1 || m < a)
      gen_die("a sweep is FROM:FACTOR:MAX with FACTOR > 1");
    for (double r = a; r <= m * 1.0001 && ph->nrates < GEN_MAX_STEPS; r *= f)
      ph->rates[ph->nrates++] = r;
  } else if (list) {
    char *dup = strdup(list), *save = NULL;
    if (!dup) gen_die("out of memory");
    for (char *t = strtok_r(dup, ",", &save); t && ph->nrates < GEN_MAX_STEPS;
         t = strtok_r(NULL, ",", &save))
      if (atof(t) > 0) ph->rates[ph->nrates++] = atof(t);
    free(dup);
  } else if (rate > 0) {
    ph->rates[ph->nrates++] = rate;
  }
}

void gen_step_finish(gen_step *s, const gen_hist *lat, double el, uint64_t acts, double srv0,
                     double srv1, double lg0, double lg1) {
  s->samples = lat->n;
  s->p50 = gen_h_pct_ms(lat, 0.50);
  s->p90 = gen_h_pct_ms(lat, 0.90);
  s->p99 = gen_h_pct_ms(lat, 0.99);
  s->max_ms = lat->n ? (double)lat->max / 1000.0 : -1;
  s->mean_ms = lat->n ? (double)lat->sum / (double)lat->n / 1000.0 : -1;
  if (srv0 >= 0 && srv1 >= 0) {
    s->cpu_s = srv1 - srv0;
    s->srv_cpu_pct = 100.0 * s->cpu_s / el;
    s->cpu_per_100k = acts ? s->cpu_s * 100000.0 / (double)acts : -1;
  } else {
    s->cpu_s = s->cpu_per_100k = s->srv_cpu_pct = -1;
  }
  s->lg_cpu_pct = 100.0 * (lg1 - lg0) / el;
  s->ok = false;
  if (!s->samples)
    s->why = "no packet came back";
  else if (s->p99 > 100.0)
    s->why = "p99 > 100 ms";
  else if (s->actions < 0.9 * s->offered)
    s->why = "throughput < 90% of offered";
  else if (s->backlog)
    s->why = "backlog did not drain";
  else
    s->ok = true, s->why = "ok";
}

/* One step at rate (again once when it kept up but missed on latency
 * only), appended to ph. */
static gen_step step_at(gen_phase *ph, gen_step (*run)(double rate), double rate,
                        const volatile bool *interrupted, bool refined) {
  gen_step s = run(rate);
  if (!s.ok && s.samples && s.actions >= 0.9 * s.offered && !*interrupted) {
    gen_note("%s %.0f/s: %s, running the step again", ph->name, s.offered, s.why);
    s = run(rate);
    s.retried = true;
  }
  s.refined = refined;
  ph->steps[ph->nsteps++] = s;
  gen_note("%s %.0f/s: %.0f actions/s, %.0f packets/s, p50 %.2f ms, p99 %.2f ms, gen CPU %.0f%%, "
           "server CPU %.0f%%: %s%s",
           ph->name, s.offered, s.actions, s.delivered, s.p50, s.p99, s.lg_cpu_pct, s.srv_cpu_pct,
           s.why, refined ? " (refining)" : "");
  return s;
}

/* A sweep steps by its factor: the figure it reports may be up to a
 * factor below the rate the server holds. --refine K bisects (in the log)
 * between the last rate that held and the first that missed, K times; the
 * best step is the highest rate that held. */
static void refine(gen_phase *ph, gen_step (*run)(double rate), double lo, double hi,
                   const volatile bool *interrupted) {
  for (int i = 0; i < ph->refine && ph->nsteps < GEN_MAX_STEPS && !*interrupted; i++) {
    double r = sqrt(lo * hi);
    gen_step s = step_at(ph, run, r, interrupted, true);
    if (s.ok) {
      lo = r;
      ph->sat = ph->nsteps - 1;
    } else {
      hi = r;
      ph->sat_why = s.why;
    }
  }
}

void gen_run_phase(gen_phase *ph, gen_step (*run)(double rate), const volatile bool *interrupted,
                   bool plateau) {
  ph->sat = -1;
  for (int k = 0; k < ph->nrates && !*interrupted; k++) {
    gen_step s = step_at(ph, run, ph->rates[k], interrupted, false);
    if (!s.ok) {
      ph->sat_why = s.why;
      if (k > 0 && ph->sat >= 0) refine(ph, run, ph->rates[k - 1], ph->rates[k], interrupted);
      break;
    }
    ph->sat = ph->nsteps - 1;
    if (plateau && k > 0 && s.actions < 1.05 * ph->steps[k - 1].actions &&
        ph->rates[k] > 1.2 * ph->rates[k - 1]) {
      ph->sat_why = "throughput plateau";
      break;
    }
  }
  if (!ph->sat_why && ph->nrates > 1) ph->sat_why = "not saturated at the largest rate";
}

/* ---------------------------------------------------------------- table */

void gen_fmt_ms(char *b, size_t n, double v) {
  if (v < 0)
    snprintf(b, n, "-");
  else if (v < 10)
    snprintf(b, n, "%.2f", v);
  else
    snprintf(b, n, "%.1f", v);
}

void gen_print_phase(const gen_phase *ph) {
  char a[32], b[32], c[32];
  printf("%s:\n| offered/s | sent/s | actions/s | delivered/s | MB/s | p50 ms | p99 ms | max ms | "
         "srv CPU%% | srv CPU s/100k | gen CPU%% | verdict |\n"
         "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
         ph->name);
  for (int k = 0; k < ph->nsteps; k++) {
    const gen_step *s = &ph->steps[k];
    gen_fmt_ms(a, sizeof a, s->p50);
    gen_fmt_ms(b, sizeof b, s->p99);
    gen_fmt_ms(c, sizeof c, s->max_ms);
    printf("| %.0f | %.0f | %.0f | %.0f | %.2f | %s | %s | %s | %.0f | %.3f | %.0f | %s%s%s |\n",
           s->offered, s->sent, s->actions, s->delivered, s->mbps, a, b, c, s->srv_cpu_pct,
           s->cpu_per_100k, s->lg_cpu_pct, s->refined ? "refining: " : "", s->why,
           k == ph->sat && ph->nrates > 1 ? " (best)" : "");
  }
  if (ph->nrates > 1) {
    if (ph->sat >= 0)
      printf("saturation: %.0f actions/s, %.0f delivered/s, p99 %.2f ms (then: %s)\n",
             ph->steps[ph->sat].actions, ph->steps[ph->sat].delivered, ph->steps[ph->sat].p99,
             ph->sat_why ? ph->sat_why : "-");
    else
      printf("saturation: below the first step (%s)\n", ph->sat_why ? ph->sat_why : "-");
  }
}

/* ---------------------------------------------------------------- JSON */

static FILE *jf;
static bool jfirst;

void gen_json_begin(const char *file) {
  jf = strcmp(file, "-") ? fopen(file, "w") : stdout;
  if (!jf) gen_die("cannot write %s: %s", file, strerror(errno));
  gen_jopen(NULL);
}

void gen_json_end(void) {
  gen_jclose();
  fputc('\n', jf);
  if (jf != stdout) fclose(jf);
  jf = NULL;
}

void gen_jkey(const char *k) {
  fprintf(jf, "%s\"%s\":", jfirst ? "" : ",", k);
  jfirst = false;
}

void gen_jnum(const char *k, double v) {
  gen_jkey(k);
  if (v < 0 || isnan(v) || isinf(v))
    fputs("null", jf);
  else
    fprintf(jf, "%.6g", v);
}

void gen_jint(const char *k, long long v) {
  gen_jkey(k);
  fprintf(jf, "%lld", v);
}

void gen_jstr(const char *k, const char *v) {
  gen_jkey(k);
  fputc('"', jf);
  for (const char *p = v; *p; p++)
    if (*p == '"' || *p == '\\')
      fprintf(jf, "\\%c", *p);
    else if ((unsigned char)*p < 0x20)
      fprintf(jf, "\\u%04x", *p);
    else
      fputc(*p, jf);
  fputc('"', jf);
}

void gen_jbool(const char *k, bool v) {
  gen_jkey(k);
  fputs(v ? "true" : "false", jf);
}

void gen_jopen(const char *k) {
  if (k) gen_jkey(k);
  fputc('{', jf);
  jfirst = true;
}

void gen_jclose(void) {
  fputc('}', jf);
  jfirst = false;
}

static void json_step(const char *k, const gen_step *s) {
  gen_jopen(k);
  gen_jnum("offered", s->offered);
  gen_jnum("sent", s->sent);
  gen_jnum("actions_per_s", s->actions);
  gen_jnum("delivered_per_s", s->delivered);
  gen_jnum("mb_per_s", s->mbps);
  gen_jnum("p50_ms", s->p50);
  gen_jnum("p90_ms", s->p90);
  gen_jnum("p99_ms", s->p99);
  gen_jnum("max_ms", s->max_ms);
  gen_jnum("mean_ms", s->mean_ms);
  gen_jint("samples", (long long)s->samples);
  gen_jnum("server_cpu_s", s->cpu_s);
  gen_jnum("server_cpu_pct", s->srv_cpu_pct);
  gen_jnum("cpu_s_per_100k_actions", s->cpu_per_100k);
  gen_jnum("loadgen_cpu_pct", s->lg_cpu_pct);
  gen_jint("backlog", (long long)s->backlog);
  gen_jbool("retried", s->retried);
  gen_jbool("refined", s->refined);
  gen_jbool("ok", s->ok);
  gen_jstr("verdict", s->why);
  gen_jclose();
}

void gen_json_phase(const gen_phase *ph) {
  gen_jopen(ph->name);
  gen_jkey("steps");
  fputc('[', jf);
  for (int k = 0; k < ph->nsteps; k++) {
    if (k) fputc(',', jf);
    jfirst = true;
    json_step(NULL, &ph->steps[k]);
  }
  fputc(']', jf);
  jfirst = false;
  if (ph->sat >= 0)
    json_step("saturation", &ph->steps[ph->sat]);
  else {
    gen_jkey("saturation");
    fputs("null", jf);
  }
  gen_jstr("saturation_reason", ph->sat_why ? ph->sat_why : "");
  gen_jclose();
}
