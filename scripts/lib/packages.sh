# scripts/lib/packages.sh: the Debian packages the project needs, and the one way they are
# installed. Sourced by scripts/stack (the servers) and scripts/test (the servers, the build's
# and the tests' tools); it defines functions only. Expects info and die to be defined.
#
# A package is wanted only when what it provides is missing, so that a machine set up another
# way (a server built from source, a JDK from elsewhere) is left alone, and a second run is a
# no-op that needs no root.

PG_BIN=/usr/lib/postgresql/15/bin

# The local stack's servers and the tools scripts/stack calls.
stack_packages() {
  [[ -x "$PG_BIN/postgres" && -x "$PG_BIN/pg_ctl" ]] || echo postgresql-15
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null || echo redis-server
  command -v ss >/dev/null || echo iproute2
}

# What building the workspace needs beyond Rust: rdkafka's bundled librdkafka wants a C
# toolchain, make, pkg-config and zlib; cmake, OpenSSL and SASL only when the lock file pulls in
# the crates that use them.
build_packages() {
  local root="$1" lock="$1/Cargo.lock" pkg
  for pkg in build-essential pkg-config zlib1g-dev; do
    dpkg -s "$pkg" >/dev/null 2>&1 || echo "$pkg"
  done
  if [[ -f "$lock" ]]; then
    grep -q '^name = "cmake"$' "$lock" && ! dpkg -s cmake >/dev/null 2>&1 && echo cmake
    grep -q '^name = "openssl-sys"$' "$lock" && ! dpkg -s libssl-dev >/dev/null 2>&1 && echo libssl-dev
    grep -q '^name = "sasl2-sys"$' "$lock" && ! dpkg -s libsasl2-dev >/dev/null 2>&1 && echo libsasl2-dev
  fi
  return 0
}

# Java runs Kafka, and Maven fetches its jars (once: not needed once they are there).
kafka_packages() {
  local jars="$1"
  command -v java >/dev/null || echo openjdk-17-jre-headless
  [[ -d "$jars" ]] || command -v mvn >/dev/null || echo maven
  return 0
}

# What the test suite runs besides cargo: schemathesis (a Python virtualenv) and the AsyncAPI
# parser (npm).
test_packages() {
  dpkg -s python3-venv >/dev/null 2>&1 || echo python3-venv
  command -v npm >/dev/null || echo npm
  return 0
}

# install_packages PACKAGE...: apt-get install them (nothing to do without arguments). Needs
# root. The packages' maintainer scripts must not start servers of their own (Debian's
# postgresql and redis-server would take 5432 and 6379): policy-rc.d exit 101 = "do not start".
install_packages() {
  (($# > 0)) || return 0
  command -v apt-get >/dev/null || die "missing packages ($*) and no apt-get to install them"
  [[ $EUID -eq 0 ]] || die "missing packages ($*): run as root, or install them: apt-get install -y $*"
  info "installing with apt-get: $*"
  local created_policy=0 rc=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" || rc=$?
  if ((rc != 0)); then
    info "apt-get install failed; refreshing the package lists (apt-get update) and retrying"
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" && rc=0 || rc=$?
  fi
  ((created_policy)) && rm -f /usr/sbin/policy-rc.d
  ((rc == 0)) || die "apt-get install $* failed"
}
