#!/usr/bin/env bash
# Makes sure the local PostgreSQL (127.0.0.1:5432, with a `test` database) and Redis
# (127.0.0.1:6379) are up; starts them with the machine's own commands when they are installed
# but stopped, then waits up to 20 s for both to answer.
#
# Without arguments it always succeeds: the tests that need a service skip with a message when
# it is absent (unless CI is set, see sequencer/tests/services). With --require (what .ci/run
# passes) it fails with a message naming each service that is still unreachable.
set -uo pipefail

require=false
case "${1:-}" in
  --require) require=true ;;
  "") ;;
  *) echo "usage: $0 [--require]" >&2; exit 2 ;;
esac

pg_up() {
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -h 127.0.0.1 -p 5432 -q
  else
    (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null
  fi
}

redis_up() {
  if command -v redis-cli >/dev/null 2>&1; then
    [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]
  else
    # Without redis-cli: speak the inline protocol over bash's /dev/tcp.
    (
      exec 3<>/dev/tcp/127.0.0.1/6379 || exit 1
      printf 'PING\r\n' >&3
      IFS= read -r -t 2 line <&3 && [ "${line%$'\r'}" = "+PONG" ]
    ) 2>/dev/null
  fi
}

if ! pg_up; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
fi
if ! redis_up; then
  if command -v redis-server >/dev/null 2>&1; then
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  fi
fi

for _ in $(seq 1 40); do
  pg_up && redis_up && break
  sleep 0.5
done

# The tests connect to the `test` database (sequencer/tests/pg) and make their own from there.
if pg_up && command -v psql >/dev/null 2>&1; then
  if ! psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" \
    2>/dev/null | grep -q 1; then
    psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -qc "CREATE DATABASE test" || true
  fi
fi

missing=()
if pg_up; then echo "PostgreSQL: up on 127.0.0.1:5432"; else missing+=("PostgreSQL on 127.0.0.1:5432"); fi
if redis_up; then echo "Redis: up on 127.0.0.1:6379"; else missing+=("Redis on 127.0.0.1:6379"); fi
for m in ${missing[@]+"${missing[@]}"}; do
  echo "$m is not reachable" >&2
done
if $require && [ ${#missing[@]} -gt 0 ]; then
  echo "error: the PostgreSQL and Redis tests need these services and fail without them under CI;" \
    "install them (PostgreSQL with a passwordless \`postgres\` user over TCP) so this script can start them" >&2
  exit 1
fi
exit 0
