#!/bin/sh
# flowtap sidecar: the nat rules that send a pod's outgoing TCP to `flowtap proxy --mode transparent`.
#
# The init container runs this once, as root with NET_ADMIN and NET_RAW, in the pod's network
# namespace (the tests run the same file inside a network namespace of their own). It makes one
# chain, FLOWTAP_OUTPUT, hooked into the nat table's OUTPUT chain, for IPv4 and (when available)
# IPv6:
#
#   -A OUTPUT -p tcp -j FLOWTAP_OUTPUT
#   -A FLOWTAP_OUTPUT -o lo -j RETURN                       loopback and the pod's own addresses
#   -A FLOWTAP_OUTPUT -d 127.0.0.0/8 -j RETURN              (::1/128 for IPv6)
#   -A FLOWTAP_OUTPUT -d <excluded> -j RETURN               the API server, FLOWTAP_EXCLUDE_CIDRS
#   -A FLOWTAP_OUTPUT -p tcp -m multiport --dports 80,443 -m owner ! --uid-owner <proxy uid>
#                     -j REDIRECT --to-ports 15001
#
# The owner match is what keeps the proxy's own upstream connections from being redirected back
# to it: the flowtap container must run as FLOWTAP_PROXY_UID, and the application must not.
#
# Usage: init-redirect.sh [install|remove|show]     (default: install; each is idempotent)
#
# Environment:
#   FLOWTAP_PROXY_UID        uid of the flowtap container (required for install)
#   FLOWTAP_PROXY_PORT       port of `--mode transparent` (default 15001)
#   FLOWTAP_REDIRECT_PORTS   destination ports to capture, comma-separated, at most 15
#                            (default 80,443)
#   FLOWTAP_EXCLUDE_CIDRS    destinations never redirected, comma-separated, IPv4 and IPv6 mixed
#                            (the API server's service IP or the service CIDR, telemetry
#                            backends). KUBERNETES_SERVICE_HOST, which Kubernetes sets in every
#                            container, is always excluded too.
#   FLOWTAP_IPV6             auto | on | off (default auto: IPv6 rules when ip6tables works here)
#   FLOWTAP_IPTABLES         auto | iptables | iptables-nft | iptables-legacy (default auto:
#                            `iptables`, or `iptables-legacy` when the default backend cannot
#                            use the nat table, as on kernels without nf_tables)
#   FLOWTAP_CA_FROM          optional (install): a directory with ca.pem and ca-key.pem, the
#                            mounted CA Secret. They are copied into FLOWTAP_CA_DIR (an emptyDir
#                            shared with the flowtap container), owned by FLOWTAP_PROXY_UID, the
#                            key with mode 0600: a Secret volume's files belong to root, and
#                            flowtap refuses a key that others may read. Needs CAP_CHOWN.
#   FLOWTAP_CA_DIR           where the copy goes (default /flowtap/ca)
#
# Exit status: 0 done, 64 bad configuration (the message names the variable), 1 iptables failed.
set -eu

CHAIN=FLOWTAP_OUTPUT
ACTION=${1:-install}
PROXY_UID=${FLOWTAP_PROXY_UID:-}
PROXY_PORT=${FLOWTAP_PROXY_PORT:-15001}
PORTS=${FLOWTAP_REDIRECT_PORTS:-80,443}
EXCLUDE=${FLOWTAP_EXCLUDE_CIDRS:-}
IPV6=${FLOWTAP_IPV6:-auto}
BACKEND=${FLOWTAP_IPTABLES:-auto}
CA_FROM=${FLOWTAP_CA_FROM:-}
CA_DIR=${FLOWTAP_CA_DIR:-/flowtap/ca}

say() { printf 'flowtap-init: %s\n' "$*" >&2; }
bad() { say "$*"; exit 64; }

is_port() {
  case $1 in '' | *[!0-9]*) return 1 ;; esac
  [ "$1" -ge 1 ] && [ "$1" -le 65535 ]
}

# --- check the configuration before touching anything ----------------------------------------
case $ACTION in install | remove | show) ;; *) bad "unknown action '$ACTION' (install, remove or show)" ;; esac
if [ "$ACTION" = install ]; then
  case $PROXY_UID in
    '') bad "FLOWTAP_PROXY_UID is not set: give the uid the flowtap container runs as" ;;
    *[!0-9]*) bad "FLOWTAP_PROXY_UID='$PROXY_UID' is not a numeric uid" ;;
  esac
  [ "$PROXY_UID" -ne 0 ] || bad "FLOWTAP_PROXY_UID=0: run flowtap as a dedicated non-root uid, or root's traffic (and maybe the application's) escapes capture"
  is_port "$PROXY_PORT" || bad "FLOWTAP_PROXY_PORT='$PROXY_PORT' is not a port"
  n=0
  for p in $(printf '%s' "$PORTS" | tr ',' ' '); do
    is_port "$p" || bad "FLOWTAP_REDIRECT_PORTS='$PORTS': '$p' is not a port"
    [ "$p" != "$PROXY_PORT" ] || bad "FLOWTAP_REDIRECT_PORTS contains the proxy's own port $PROXY_PORT"
    n=$((n + 1))
  done
  [ "$n" -ge 1 ] || bad "FLOWTAP_REDIRECT_PORTS is empty"
  [ "$n" -le 15 ] || bad "FLOWTAP_REDIRECT_PORTS has $n ports; multiport takes at most 15"
  PORTS=$(printf '%s' "$PORTS" | tr -d ' ')
  if [ -n "$CA_FROM" ]; then
    for f in ca.pem ca-key.pem; do
      [ -r "$CA_FROM/$f" ] || bad "FLOWTAP_CA_FROM=$CA_FROM: no readable $f (is the CA Secret mounted there?)"
    done
  fi
fi
case $IPV6 in auto | on | off) ;; *) bad "FLOWTAP_IPV6='$IPV6' (auto, on or off)" ;; esac

V4_EXCLUDE=""
V6_EXCLUDE=""
for c in $(printf '%s' "$EXCLUDE,${KUBERNETES_SERVICE_HOST:-}" | tr ',' ' '); do
  case $c in
    *[!0-9a-fA-F:./]*) bad "FLOWTAP_EXCLUDE_CIDRS: '$c' is not an address or CIDR" ;;
    *:*) V6_EXCLUDE="$V6_EXCLUDE $c" ;;
    *.*) V4_EXCLUDE="$V4_EXCLUDE $c" ;;
    *) bad "FLOWTAP_EXCLUDE_CIDRS: '$c' is not an address or CIDR" ;;
  esac
done

# --- the CA for the proxy uid ------------------------------------------------------------------
if [ "$ACTION" = install ] && [ -n "$CA_FROM" ]; then
  mkdir -p "$CA_DIR"
  umask 077
  cp "$CA_FROM/ca.pem" "$CA_DIR/ca.pem.tmp"
  cp "$CA_FROM/ca-key.pem" "$CA_DIR/ca-key.pem.tmp"
  # Mode first, owner last: once the files belong to the proxy uid, root needs CAP_FOWNER to chmod.
  chmod 0644 "$CA_DIR/ca.pem.tmp"
  chmod 0600 "$CA_DIR/ca-key.pem.tmp"
  chown "$PROXY_UID" "$CA_DIR/ca.pem.tmp" "$CA_DIR/ca-key.pem.tmp"
  mv -f "$CA_DIR/ca.pem.tmp" "$CA_DIR/ca.pem"
  mv -f "$CA_DIR/ca-key.pem.tmp" "$CA_DIR/ca-key.pem"
  say "CA copied to $CA_DIR for uid $PROXY_UID"
fi

# --- which iptables ---------------------------------------------------------------------------
works() { "$1" -w -t nat -S OUTPUT >/dev/null 2>&1; }
case $BACKEND in
  auto)
    if command -v iptables >/dev/null 2>&1 && works iptables; then
      V4=iptables V6=ip6tables
    elif command -v iptables-legacy >/dev/null 2>&1 && works iptables-legacy; then
      V4=iptables-legacy V6=ip6tables-legacy
    else
      say "neither iptables nor iptables-legacy can use the nat table here (NET_ADMIN missing? no nat support in the kernel?)"
      iptables -w -t nat -S OUTPUT || true
      exit 1
    fi ;;
  iptables) V4=iptables V6=ip6tables ;;
  iptables-nft) V4=iptables-nft V6=ip6tables-nft ;;
  iptables-legacy) V4=iptables-legacy V6=ip6tables-legacy ;;
  *) bad "FLOWTAP_IPTABLES='$BACKEND' (auto, iptables, iptables-nft or iptables-legacy)" ;;
esac
works "$V4" || { say "$V4 cannot use the nat table"; "$V4" -w -t nat -S OUTPUT; exit 1; }

FAMILIES=v4
case $IPV6 in
  on)
    works "$V6" || { say "FLOWTAP_IPV6=on but $V6 cannot use the nat table"; "$V6" -w -t nat -S OUTPUT; exit 1; }
    FAMILIES="v4 v6" ;;
  auto)
    if [ -e /proc/net/if_inet6 ] && command -v "$V6" >/dev/null 2>&1 && works "$V6"; then
      FAMILIES="v4 v6"
    elif [ -n "$V6_EXCLUDE" ] || [ "$ACTION" = install ]; then
      say "no IPv6 nat here: IPv4 rules only"
    fi ;;
esac

# --- the rules --------------------------------------------------------------------------------
remove() {   # $1: iptables command
  while "$1" -w -t nat -C OUTPUT -p tcp -j "$CHAIN" >/dev/null 2>&1; do
    "$1" -w -t nat -D OUTPUT -p tcp -j "$CHAIN"
  done
  if "$1" -w -t nat -S "$CHAIN" >/dev/null 2>&1; then
    "$1" -w -t nat -F "$CHAIN"
    "$1" -w -t nat -X "$CHAIN"
  fi
}

install() {   # $1: iptables command, $2: loopback range, $3: excluded destinations
  ipt=$1
  if "$ipt" -w -t nat -S "$CHAIN" >/dev/null 2>&1; then
    "$ipt" -w -t nat -F "$CHAIN"
  else
    "$ipt" -w -t nat -N "$CHAIN"
  fi
  "$ipt" -w -t nat -A "$CHAIN" -o lo -j RETURN
  "$ipt" -w -t nat -A "$CHAIN" -d "$2" -j RETURN
  for d in $3; do
    "$ipt" -w -t nat -A "$CHAIN" -d "$d" -j RETURN
  done
  "$ipt" -w -t nat -A "$CHAIN" -p tcp -m multiport --dports "$PORTS" \
    -m owner ! --uid-owner "$PROXY_UID" -j REDIRECT --to-ports "$PROXY_PORT"
  "$ipt" -w -t nat -C OUTPUT -p tcp -j "$CHAIN" >/dev/null 2>&1 ||
    "$ipt" -w -t nat -A OUTPUT -p tcp -j "$CHAIN"
}

show() {   # $1: iptables command
  "$1" -w -t nat -S OUTPUT | grep -- "$CHAIN" || true
  "$1" -w -t nat -S "$CHAIN" 2>/dev/null || true
}

for f in $FAMILIES; do
  if [ "$f" = v4 ]; then ipt=$V4 lo=127.0.0.0/8 excl=$V4_EXCLUDE; else ipt=$V6 lo=::1/128 excl=$V6_EXCLUDE; fi
  case $ACTION in
    install)
      install "$ipt" "$lo" "$excl"
      say "$ipt: tcp to ports $PORTS redirected to :$PROXY_PORT, except uid $PROXY_UID, loopback${excl:+ and$excl}" ;;
    remove)
      remove "$ipt"
      say "$ipt: $CHAIN removed" ;;
  esac
  [ "$ACTION" = remove ] || show "$ipt"
done
