#!/usr/bin/env bash
# payauth against nginx `proxy_pass`, on one machine, over loopback.
#
# An nginx upstream answers a Number-style 301-byte JSON (and the REST Authenticate). In front of
# it, measured in alternating rounds with the same wrk load:
#   - nginx `proxy_pass` with upstream keepalive and a static `SessKey` header;
#   - `payauth run`, one Number REST gateway with HMAC signing on (a signed `SessKey` per call).
# Each round prints req/s, p50, p99 and the CPU time the proxy process(es) spent per request;
# the end prints the medians and payauth's ratios to nginx, and payauth's peak RSS.
#
# With --bare, a third contender runs in the same rounds: examples/bare_proxy.rs, a hyper proxy
# with payauth's runtime layout and nothing else (the floor of the HTTP stack payauth uses).
# With --signed, another: nginx doing payauth's per-call work of signing, a `SessKey` header in
# payauth's signed format with an HMAC-SHA256 computed per request in the proxy (Debian's
# libnginx-mod-http-lua; bench/nginx-sign.lua calls OpenSSL's HMAC through LuaJIT's FFI, and is
# checked against the vendor's test vector before anything is measured).
#
# Usage: bench/vs-nginx.sh [--rounds N] [--duration SECS] [--connections C] [--threads T]
#                          [--nginx-workers N] [--payauth-workers N] [--logs on|off] [--bare]
#                          [--signed] [--callgrind SECS] [--also BIN]
# With --also BIN, another payauth binary (an earlier build, say) runs as the contender `also`
# with the same config in the same rounds: an A/B of two builds within one run.
# With --callgrind SECS, no timed rounds: payauth and the bare proxy run under valgrind's
# callgrind, which counts instructions (the same count in every run, whatever else the machine
# does), each under SECS of the same wrk load after a warm-up; the end prints instructions per
# request of each, their ratio, and payauth's functions by inclusive instructions per request.
# Defaults: 3 rounds of 10 s, wrk -t2 -c64, nginx with 2 workers, payauth with its default
# workers (the available parallelism), access logs on for both (each to a file).
#
# Needs nginx and wrk (Debian's packages: installed with apt-get when missing and run as root),
# python3 (to pick free ports and to summarise), and builds payauth with `cargo build --release`
# (or runs the binary named by PAYAUTH_BIN).
# Only 127.0.0.1 is used; every load run is bounded by --duration.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=3 DURATION=10 CONNECTIONS=64 THREADS=2 NGINX_WORKERS=2 PAYAUTH_WORKERS="" LOGS=on BARE=no
SIGNED=no CALLGRIND="" ALSO=""
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --connections) CONNECTIONS=$2; shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        --nginx-workers) NGINX_WORKERS=$2; shift 2 ;;
        --payauth-workers) PAYAUTH_WORKERS=$2; shift 2 ;;
        --logs) LOGS=$2; shift 2 ;;
        --bare) BARE=yes; shift ;;
        --signed) SIGNED=yes; shift ;;
        --callgrind) CALLGRIND=$2; BARE=yes; SIGNED=no; shift 2 ;;
        --also) ALSO=$2; shift 2 ;;
        -h|--help) sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "vs-nginx: unknown argument $1 (see --help)" >&2; exit 64 ;;
    esac
done

need() {
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing $2 (Debian's package)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq "$2" >/dev/null 2>&1 || { apt-get update -qq >/dev/null; apt-get install -y -qq "$2" >/dev/null; }
        # The package may start a system instance; this script starts its own.
        (service nginx stop || true) >/dev/null 2>&1
    fi
    command -v "$1" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin" command -v "$1" >/dev/null 2>&1 || {
        echo "vs-nginx: $1 is missing; install Debian's $2 package" >&2; exit 1; }
}
export PATH="$PATH:/usr/sbin"
need nginx nginx-light
need wrk wrk
need python3 python3
LUA_MODULE=/usr/lib/nginx/modules/ngx_http_lua_module.so
if [ "$SIGNED" = yes ] && [ ! -f "$LUA_MODULE" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing libnginx-mod-http-lua (Debian's package)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq libnginx-mod-http-lua >/dev/null 2>&1 || { apt-get update -qq >/dev/null; apt-get install -y -qq libnginx-mod-http-lua >/dev/null; }
        (service nginx stop || true) >/dev/null 2>&1
    fi
    [ -f "$LUA_MODULE" ] || { echo "vs-nginx: --signed needs Debian's libnginx-mod-http-lua" >&2; exit 1; }
fi

if [ -n "${PAYAUTH_BIN:-}" ]; then
    PAYAUTH=$PAYAUTH_BIN   # a binary built otherwise (for example with debug info, to profile)
else
    echo "== building payauth (release)"
    cargo build --release --quiet --bin payauth
    PAYAUTH=$PWD/target/release/payauth
fi
if [ "$BARE" = yes ]; then
    cargo build --release --quiet --example bare_proxy
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/payauth-vs-nginx.XXXXXX")
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

read -r UPSTREAM_PORT NGINX_PORT PAYAUTH_PORT ADMIN_PORT BARE_PORT SIGNED_PORT ALSO_PORT ALSO_ADMIN_PORT < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(8)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
EOF
)

# A 301-byte answer in the vendor's shape (no 5030/5050 in it).
ANSWER='{"CreditCardSale_ManualResult":{"FunctionOk":true,"AuthSuccess":true,"ErrCode":0,"ErrMsg":"","RespMsg":"APPROVED","TxID":"T1234567890","TxApprovalNumber":"831000","TxAmount":"10.00","TxnDate":"2026-12-02T05:00:00","AVSResult":"Y","CVVResult":"M","CardBrand":"VISA","Last4":"1111","Pad":"xxxxxxxxxxxxxxxxxxxx"}}'
AUTH_ANSWER='{"AuthenticateResult":{"AuthSuccess":true,"ErrCode":0,"ErrMsg":"","FunctionOk":true,"RespMsg":"SessKey Expires|1/1/2030 0:00:00 AM","SessKey":"B9F24903C3BA4770AE303032303541303032353437","ThisUser":{"ID":2547}}}'
SALE_BODY='{"Amount":10.00,"CardNumber":"4111111111111111","ExpMonth":"12","ExpYear":"2030","CVV":"123","Description":"vs-nginx"}'

access_log() { # $1: file
    if [ "$LOGS" = on ]; then echo "access_log $1;"; else echo "access_log off;"; fi
}

mkdir -p "$WORK/upstream" "$WORK/proxy" "$WORK/signed" "$WORK/state" "$WORK/also-state"
cat >"$WORK/upstream/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/upstream/nginx.pid;
error_log $WORK/upstream/error.log warn;
daemon off;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/upstream;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$UPSTREAM_PORT;
        default_type application/json;
        location = /APIcardProcREST/v1.0.0/Authenticate { return 200 '$AUTH_ANSWER'; }
        location / { return 200 '$ANSWER'; }
    }
}
EOF
cat >"$WORK/proxy/nginx.conf" <<EOF
worker_processes $NGINX_WORKERS;
pid $WORK/proxy/nginx.pid;
error_log $WORK/proxy/error.log warn;
daemon off;
events { worker_connections 4096; }
http {
    $(access_log "$WORK/proxy/access.log")
    client_body_temp_path $WORK/proxy;
    proxy_temp_path $WORK/proxy;
    keepalive_requests 1000000;
    upstream gateway {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://gateway;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header SessKey "B9F24903C3BA4770AE303032303541303032353437";
        }
    }
}
EOF

# The same proxy, signing each call as payauth does (key, secret and user id as payauth's below).
SESS_KEY=B9F24903C3BA4770AE303032303541303032353437
HMAC_SECRET=0123456789abcdef0123456789abcdef
cat >"$WORK/signed/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module $LUA_MODULE;
worker_processes $NGINX_WORKERS;
pid $WORK/signed/nginx.pid;
error_log $WORK/signed/error.log warn;
daemon off;
events { worker_connections 4096; }
http {
    $(access_log "$WORK/signed/access.log")
    client_body_temp_path $WORK/signed;
    proxy_temp_path $WORK/signed;
    keepalive_requests 1000000;
    lua_package_path "$PWD/bench/?.lua;;";
    init_by_lua_block { sign = require "nginx-sign" }
    upstream gateway {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$SIGNED_PORT;
        location = /_vector {
            content_by_lua_block {
                ngx.print(sign.header("9B9175EF556E4DDA93303132323141303035383339",
                    "7D55DBB3D691C9E0FDF341E4AB38C3C9", "123", 1702565789))
            }
        }
        location / {
            rewrite_by_lua_block {
                ngx.req.set_header("SessKey", sign.header("$SESS_KEY", "$HMAC_SECRET", "2547", ngx.time()))
            }
            proxy_pass http://gateway;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF

printf 'bench-token\n' >"$WORK/token"
printf '%s\n' "$HMAC_SECRET" >"$WORK/hmac"
WORKERS_LINE=""
[ -n "$PAYAUTH_WORKERS" ] && WORKERS_LINE="workers = $PAYAUTH_WORKERS"
cat >"$WORK/payauth.toml" <<EOF
[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[state]
dir = "$WORK/state"

[proxy]
$WORKERS_LINE

[[gateway]]
name = "number"
kind = "number"
listen = "127.0.0.1:$PAYAUTH_PORT"
upstream = "http://127.0.0.1:$UPSTREAM_PORT"
protocol = "rest"
account_code = "EP0000001"
token_file = "$WORK/token"
hmac_secret_file = "$WORK/hmac"
user_id = "2547"
max_concurrency = 4096
EOF

nginx -c "$WORK/upstream/nginx.conf" -p "$WORK/upstream" & PIDS+=($!)
nginx -c "$WORK/proxy/nginx.conf" -p "$WORK/proxy" & PIDS+=($!)
NGINX_MASTER=$!
PAYAUTH_LOG=/dev/null
[ "$LOGS" = on ] && PAYAUTH_LOG=$WORK/payauth.log
PAYAUTH_LEVEL=info; [ "$LOGS" = on ] || PAYAUTH_LEVEL=warn
VALGRIND=()
if [ -n "$CALLGRIND" ]; then
    need valgrind valgrind
    VALGRIND=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/callgrind.%p"
        --log-file="$WORK/valgrind.%p.log")
fi
RUST_LOG=${RUST_LOG:-$PAYAUTH_LEVEL} "${VALGRIND[@]}" "$PAYAUTH" run --config "$WORK/payauth.toml" 2>"$PAYAUTH_LOG" & PIDS+=($!)
PAYAUTH_PID=$!
PROXIES="nginx payauth"
if [ "$BARE" = yes ]; then
    BARE_WORKERS=${PAYAUTH_WORKERS:-$(nproc)}
    "${VALGRIND[@]}" target/release/examples/bare_proxy "127.0.0.1:$BARE_PORT" "http://127.0.0.1:$UPSTREAM_PORT" "$BARE_WORKERS" & PIDS+=($!)
    BARE_PID=$!
    PROXIES="nginx payauth bare"
fi
[ -n "$CALLGRIND" ] && PROXIES="payauth bare"

if [ -n "$ALSO" ]; then
    sed -e "s|127.0.0.1:$PAYAUTH_PORT|127.0.0.1:$ALSO_PORT|" -e "s|127.0.0.1:$ADMIN_PORT|127.0.0.1:$ALSO_ADMIN_PORT|" \
        -e "s|$WORK/state|$WORK/also-state|" "$WORK/payauth.toml" >"$WORK/also.toml"
    ALSO_LOG=/dev/null
    [ "$LOGS" = on ] && ALSO_LOG=$WORK/also.log
    RUST_LOG=${RUST_LOG:-$PAYAUTH_LEVEL} "${VALGRIND[@]}" "$ALSO" run --config "$WORK/also.toml" 2>"$ALSO_LOG" & PIDS+=($!)
    ALSO_PID=$!
    PROXIES="$PROXIES also"
fi

if [ "$SIGNED" = yes ]; then
    nginx -c "$WORK/signed/nginx.conf" -p "$WORK/signed" & PIDS+=($!)
    SIGNED_MASTER=$!
    PROXIES="$PROXIES signed"
fi

PORTS="$UPSTREAM_PORT $NGINX_PORT $PAYAUTH_PORT"
[ "$BARE" = yes ] && PORTS="$PORTS $BARE_PORT"
[ "$SIGNED" = yes ] && PORTS="$PORTS $SIGNED_PORT"
[ -n "$ALSO" ] && PORTS="$PORTS $ALSO_PORT"
for port in $PORTS; do
    for _ in $(seq 600); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
done

if [ "$SIGNED" = yes ]; then
    vector=$(curl -sS "http://127.0.0.1:$SIGNED_PORT/_vector" 2>&1 || true)
    expected=9B9175EF556E4DDA93303132323141303035383339_1702565789_123_1BD0C45A1DCBC7F9D0730FDD6222A45E10FCC7D9E84557499B812B138D0B7149
    if [ "$vector" != "$expected" ]; then
        echo "vs-nginx: the signing nginx does not reproduce the vendor's test vector: $vector" >&2
        exit 1
    fi
fi

cat >"$WORK/sale.lua" <<EOF
wrk.method = "POST"
wrk.body = '$SALE_BODY'
wrk.headers["Content-Type"] = "application/json"
EOF
URL_PATH=/APIcardProcREST/v1.0.0/CreditCardSale_Manual

# Every proxy must answer the sale before anything is measured.
for port in $PORTS; do
    [ "$port" = "$UPSTREAM_PORT" ] && continue
    out=$(curl -sS -X POST -H 'Content-Type: application/json' -d "$SALE_BODY" "http://127.0.0.1:$port$URL_PATH" 2>&1 || true)
    case "$out" in
        *APPROVED*) ;;
        *) echo "vs-nginx: the proxy on port $port did not answer the sale: $out" >&2
           [ -f "$PAYAUTH_LOG" ] && tail -5 "$PAYAUTH_LOG" >&2
           exit 1 ;;
    esac
done

# CPU ticks (user + system) of a process and its children that are still running.
cpu_ticks() { # $1: pid
    local total=0 pid
    for pid in $1 $(pgrep -P "$1" || true); do
        [ -r "/proc/$pid/stat" ] || continue
        # Fields 14 and 15 after the command name, which may hold spaces, in parentheses.
        total=$((total + $(sed 's/^.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')))
    done
    echo "$total"
}
HZ=$(getconf CLK_TCK)

run_wrk() { # $1: port, $2: seconds
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${2}s" --latency -s "$WORK/sale.lua" "http://127.0.0.1:$1$URL_PATH"
}

port_of() { case $1 in nginx) echo "$NGINX_PORT" ;; payauth) echo "$PAYAUTH_PORT" ;; bare) echo "$BARE_PORT" ;; signed) echo "$SIGNED_PORT" ;; also) echo "$ALSO_PORT" ;; esac; }
pid_of() { case $1 in nginx) echo "$NGINX_MASTER" ;; payauth) echo "$PAYAUTH_PID" ;; bare) echo "$BARE_PID" ;; signed) echo "$SIGNED_MASTER" ;; also) echo "$ALSO_PID" ;; esac; }

echo "== warming up (3 s each)"
for proxy in $PROXIES; do run_wrk "$(port_of $proxy)" 3 >/dev/null; done

if [ -n "$CALLGRIND" ]; then
    echo "== under callgrind: ${CALLGRIND} s of wrk -t$THREADS -c$CONNECTIONS each"
    for proxy in $PROXIES; do
        port=$(port_of $proxy) pid=$(pid_of $proxy)
        callgrind_control -z "$pid" >/dev/null 2>&1
        callgrind_control -i on "$pid" >/dev/null 2>&1
        requests=$(run_wrk "$port" "$CALLGRIND" | sed -n 's/^ *\([0-9]*\) requests in.*/\1/p')
        callgrind_control -i off "$pid" >/dev/null 2>&1
        callgrind_control -d "$proxy" "$pid" >/dev/null 2>&1
        dump=$(ls "$WORK"/callgrind."$pid".* | tail -1)
        echo "$proxy $requests $dump" >>"$WORK/callgrind.txt"
        # To read further with callgrind_annotate: CALLGRIND_KEEP=DIR keeps the dumps.
        if [ -n "${CALLGRIND_KEEP:-}" ]; then
            mkdir -p "$CALLGRIND_KEEP" && cp "$dump" "$CALLGRIND_KEEP/callgrind.$proxy"
        fi
    done
    python3 - "$WORK/callgrind.txt" <<'EOF'
import re, subprocess, sys
runs = {}
for line in open(sys.argv[1]):
    proxy, requests, dump = line.split()
    annotated = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", dump],
                               capture_output=True, text=True, check=True).stdout
    total = int(re.search(r"^\s*([\d,]+)(?: \([\d.]+%\))?\s+PROGRAM TOTALS", annotated, re.M).group(1).replace(",", ""))
    runs[proxy] = (int(requests), total, annotated)
print(f"\n{'':10}{'requests':>10}{'instructions/request':>22}")
for proxy, (requests, total, _) in runs.items():
    print(f"{proxy:10}{requests:10}{total / requests:22.0f}")
(pr, pt, annotated), (br, bt, _) = runs["payauth"], runs["bare"]
for proxy, (requests, total, _) in runs.items():
    if proxy != "bare":
        print(f"{proxy}/bare {total / requests / (bt / br):.2f}x instructions per request")
print("\n== payauth's functions, inclusive instructions per request (from 1% of the total)")
for line in annotated.splitlines():
    m = re.match(r"^\s*([\d,]+)(?: \(\s*[\d.]+%\))?\s+(\S.*)$", line)
    if m and "PROGRAM TOTALS" not in line and int(m.group(1).replace(",", "")) >= pt / 100:
        print(f"{int(m.group(1).replace(',', '')) / pr:9.0f}  {m.group(2)[:150]}")
EOF
    exit 0
fi

RESULTS=$WORK/results.tsv
: >"$RESULTS"
echo "== $ROUNDS rounds of ${DURATION} s, wrk -t$THREADS -c$CONNECTIONS, alternating"
for round in $(seq "$ROUNDS"); do
    for proxy in $PROXIES; do
        port=$(port_of $proxy) pid=$(pid_of $proxy)
        before=$(cpu_ticks "$pid")
        out=$(run_wrk "$port" "$DURATION")
        after=$(cpu_ticks "$pid")
        python3 - "$proxy" "$round" "$((after - before))" "$HZ" "$RESULTS" <<EOF
import re, sys
proxy, round_, ticks, hz, results = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
out = """$out"""
def dur(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
requests = int(re.search(r"(\d+) requests in", out).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
p50 = dur(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
p99 = dur(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
errors = re.search(r"Socket errors: (.*)", out)
cpu_us = ticks * 1e6 / hz / requests
print(f"round {round_}  {proxy:8} {rps:9.0f} req/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  CPU {cpu_us:5.1f} µs/request")
if bad or errors:
    print(f"vs-nginx: {proxy} had failures: {bad.group(0) if bad else ''} {errors.group(0) if errors else ''}", file=sys.stderr)
    sys.exit(1)
with open(results, "a") as f:
    f.write(f"{proxy}\t{rps}\t{p50}\t{p99}\t{cpu_us}\n")
EOF
    done
done

PEAK_RSS=$(awk '/VmHWM/ {print $2}' "/proc/$PAYAUTH_PID/status")
python3 - "$RESULTS" "$PEAK_RSS" $PROXIES <<'EOF'
import statistics, sys
rows = [line.split("\t") for line in open(sys.argv[1]).read().splitlines()]
med = {}
for proxy in sys.argv[3:]:
    values = [list(map(float, r[1:])) for r in rows if r[0] == proxy]
    med[proxy] = [statistics.median(col) for col in zip(*values)]
print("\n== medians")
print(f"{'':10}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'CPU µs/req':>12}")
for proxy, (rps, p50, p99, cpu) in med.items():
    print(f"{proxy:10}{rps:10.0f}{p50:9.2f}{p99:9.2f}{cpu:12.1f}")
n = med["nginx"]
for proxy in sys.argv[3:]:
    if proxy == "nginx":
        continue
    p = med[proxy]
    print(f"{proxy + '/nginx':14}{p[0]/n[0]:6.2f}x{p[1]/n[1]:8.2f}x{p[2]/n[2]:8.2f}x{p[3]/n[3]:11.2f}x")
for peer in ("bare", "signed", "also"):
    if peer in med:
        p, b = med["payauth"], med[peer]
        print(f"{'payauth/' + peer:14}{p[0]/b[0]:6.2f}x{p[1]/b[1]:8.2f}x{p[2]/b[2]:8.2f}x{p[3]/b[3]:11.2f}x")
print(f"payauth peak RSS: {int(sys.argv[2]) / 1024:.1f} MiB")
EOF
