#!/usr/bin/env bash
# The test command (README "Two commands"): installs what the suite needs and a fresh machine
# lacks, then runs `cargo test` with any arguments given.
#   redis-server  required: the Redis store tests start their own on ephemeral ports
#                 (apt-get install redis-server; macOS: brew install redis)
#   nginx         required: the auth-only mode test puts nginx (auth_request) in front of
#                 keygate (apt-get install nginx)
#   h2load        optional: the HTTP/2 abuse test's legitimate load (apt-get install
#                 nghttp2-client); without it that test uses an in-process client
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1; }
install() {
  have apt-get || return 1
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq "$1" >/dev/null
  elif have sudo && sudo -n true 2>/dev/null; then
    sudo apt-get update -qq && sudo apt-get install -y -qq "$1" >/dev/null
  else
    return 1
  fi
}

if ! have redis-server; then
  echo "tests/run.sh: redis-server is not on PATH; installing the redis-server package" >&2
  if ! install redis-server; then
    echo "error: the tests need redis-server; install it (apt-get install redis-server, or brew install redis) and run tests/run.sh again" >&2
    exit 1
  fi
fi
# nginx: the auth-only mode test runs deploy/authz/nginx.conf with auth_request (Debian's
# nginx package is built with it); /usr/sbin is not on every user's PATH.
if ! have nginx && [ ! -x /usr/sbin/nginx ]; then
  echo "tests/run.sh: nginx is not installed; installing the nginx package" >&2
  if ! install nginx; then
    echo "error: the tests need nginx (apt-get install nginx) and run tests/run.sh again" >&2
    exit 1
  fi
fi
if ! have h2load && ! install nghttp2-client; then
  echo "note: h2load is not installed (apt-get install nghttp2-client); the HTTP/2 abuse test uses its in-process client" >&2
fi
# The slow-connection flood test opens ~2,000 descriptors (it shrinks to fit a lower limit).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

exec cargo test "$@"
