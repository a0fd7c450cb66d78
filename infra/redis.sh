#!/usr/bin/env bash
# A Redis server for the Feast online store (params.yaml features.online_store: {kind: redis}), on
# loopback, in memory only (no snapshots, no append-only file: materialize reloads a restarted one).
#   infra/redis.sh install          Debian's redis-server, when redis-server is not on PATH (apt-get, as root)
#   infra/redis.sh start DIR [PORT] start one on 127.0.0.1:PORT (default: a free port); DIR gets redis.pid,
#                                   redis.port and redis.log; waits until PING answers, prints 127.0.0.1:PORT
#   infra/redis.sh stop DIR         kill the server whose PID is in DIR/redis.pid (that PID only)
set -euo pipefail

die() { echo "infra/redis.sh: $*" >&2; exit 1; }

install_redis() {
  command -v redis-server >/dev/null && return
  [ "$(id -u)" = 0 ] || die "redis-server is not installed and installing it needs root: run 'apt-get install -y redis-server' as root"
  command -v apt-get >/dev/null || die "redis-server is not installed and there is no apt-get: install Redis 7 yourself"
  # Waits for the dpkg lock: two test workers may start at once. A fresh machine has no package lists.
  local apt=(apt-get -q -y -o DPkg::Lock::Timeout=300)
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install redis-server >/dev/null 2>&1 ||
    { "${apt[@]}" update >/dev/null && DEBIAN_FRONTEND=noninteractive "${apt[@]}" install redis-server >/dev/null; } ||
    die "apt-get install redis-server failed"
}

# Alive and not a zombie (a container's PID 1 may never reap the daemon's exit).
running() {
  kill -0 "$1" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
  local dir=$1 port=${2:-}
  [ -n "$dir" ] || die "usage: infra/redis.sh start DIR [PORT]"
  install_redis
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  [ ! -s "$dir/redis.pid" ] || ! kill -0 "$(cat "$dir/redis.pid")" 2>/dev/null ||
    die "$dir/redis.pid: a server is running already: infra/redis.sh stop $dir first"
  port=${port:-$(free_port)}
  rm -f "$dir/redis.pid" "$dir/redis.port"
  redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --daemonize yes \
    --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" ||
    die "redis-server did not start on port $port: see $dir/redis.log"
  for _ in $(seq 100); do
    if [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = PONG ] && [ -s "$dir/redis.pid" ]; then
      echo "$port" > "$dir/redis.port"
      echo "127.0.0.1:$port"
      return
    fi
    sleep 0.1
  done
  die "redis-server on port $port does not answer PING after 10 s: see $dir/redis.log"
}

stop() {
  local dir=$1 pid
  [ -s "$dir/redis.pid" ] || die "$dir/redis.pid is missing: no server started there"
  pid=$(cat "$dir/redis.pid")
  # Only a redis-server: a stale file may name a PID reused by another process.
  if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = redis-server ]; then
    kill "$pid"
    for _ in $(seq 100); do running "$pid" || break; sleep 0.1; done
    ! running "$pid" || die "redis-server $pid did not stop after 10 s"
  fi
  rm -f "$dir/redis.pid" "$dir/redis.port"
}

case "${1:-}" in
  install) install_redis ;;
  start) shift; start "${1:-}" "${2:-}" ;;
  stop) shift; [ -n "${1:-}" ] || die "usage: infra/redis.sh stop DIR"; stop "$1" ;;
  *) die "usage: infra/redis.sh install | start DIR [PORT] | stop DIR" ;;
esac
