#!/bin/sh
# pg.sh - a throwaway PostgreSQL for tests, benchmarks and the README
# walkthrough (Debian's postgresql package; `make deps` installs it).
#
#   spec/cluster/pg.sh start DIR [PORT]   initdb in DIR/data (if missing), start the server
#                                          on a unix socket in DIR and on 127.0.0.1:PORT
#                                          (PORT default: a free one), print its URL
#   spec/cluster/pg.sh stop DIR           stop it (fast shutdown); DIR is kept
#   spec/cluster/pg.sh url DIR            print the URL of a started server
#
# Owns: one PostgreSQL instance per DIR, run as an unprivileged user (as root:
# the `postgres` system user of the package, else `nobody`), trust
# authentication for local connections only (socket and loopback), database
# "lunaroom". Must not: touch the system cluster (/var/lib/postgresql) or
# listen on anything but 127.0.0.1.
# PG_FSYNC=off turns fsync off (faster tests; benchmarks keep it on).
set -eu

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop|url DIR [PORT]" >&2; exit 2; }

bin=${PG_BIN:-}
if [ -z "$bin" ]; then
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && bin=$d; done
fi
[ -n "$bin" ] && [ -x "$bin/initdb" ] || {
  echo "pg.sh: no PostgreSQL server found (/usr/lib/postgresql/*/bin): run 'sudo make deps'" >&2
  exit 1
}

# As root, run the server as a system user (initdb and postgres refuse root).
as_user() {
  if [ "$(id -u)" = 0 ]; then
    if id postgres >/dev/null 2>&1; then u=postgres; else u=nobody; fi
    runuser -u "$u" -- "$@"
  else
    "$@"
  fi
}

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
url() { echo "postgresql://postgres@127.0.0.1:$(cat "$dir/port")/lunaroom"; }

case "$cmd" in
start)
  port=${3:-}
  # A free loopback port below the kernel's ephemeral range (32768+ by
  # default, where --port 0 servers and outgoing sockets land): random ones
  # until nothing answers there.
  pick_port() {
    port=
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      p=$(( 20000 + $(od -An -N2 -tu2 /dev/urandom | tr -d ' ') % 12000 ))
      if ! (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then port=$p; break; fi
    done
    [ -n "$port" ] || { echo "pg.sh: no free port" >&2; exit 1; }
  }
  fixed=$port
  [ -n "$port" ] || pick_port
  if [ "$(id -u)" = 0 ]; then
    if id postgres >/dev/null 2>&1; then chown postgres "$dir"; else chown nobody "$dir"; fi
  fi
  chmod 755 "$dir"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    as_user "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 \
      --no-sync >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
  fi
  # The port may be taken between the check and the bind: a picked one is
  # picked again (up to 5 tries), a given one fails.
  for try in 1 2 3 4 5; do
    echo "$port" >"$dir/port"
    if as_user "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 start -o \
      "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=${PG_FSYNC:-on} -c max_connections=100" \
      >/dev/null; then
      break
    fi
    if [ -n "$fixed" ] || [ "$try" = 5 ] || ! grep -q "already in use" "$dir/server.log"; then
      cat "$dir/server.log" >&2
      exit 1
    fi
    echo "pg.sh: port $port taken meanwhile, another one" >&2
    pick_port
  done
  "$bin/psql" -h "$dir" -p "$port" -U postgres -d postgres -qAt \
    -c "SELECT 1 FROM pg_database WHERE datname = 'lunaroom'" | grep -q 1 ||
    "$bin/createdb" -h "$dir" -p "$port" -U postgres lunaroom
  url
  ;;
stop)
  [ -f "$dir/data/postmaster.pid" ] || exit 0
  as_user "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null
  ;;
url)
  url
  ;;
*)
  echo "usage: $0 start|stop|url DIR [PORT]" >&2
  exit 2
  ;;
esac
