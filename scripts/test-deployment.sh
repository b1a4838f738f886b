#!/usr/bin/env bash
# Deployment test on loopback: three attention-server replicas on 127.0.0.2,
# .3 and .4 (as pods: same ports, their own addresses, each with its admin
# port), then two open-loop load runs with every answer verified:
#   1. through the proxy: nginx (deploy/proxy/nginx.conf, the shipped one), or
#      with PROXY=haproxy HAProxy (deploy/proxy/haproxy.cfg, its servers pointed
#      at the three addresses instead of a DNS name);
#   2. with client-side balancing (one channel, round_robin over the three).
# During each run one replica is killed with SIGKILL (and started again) and
# another drained with SIGTERM and restarted. It passes when the client sees
# no failed call, every answer is verified, and sent = ok (the ledger exact);
# it prints retries and latency (the faults dominate the tail). Then the same
# two ways, decoding (load --rpc decode --retries, 6 sequences): the replica
# holding the most sequences is killed, then the next drained; every step must
# succeed and equal the reference (streams rebuilt on live replicas).
#   3. HTTP/2 attacks (scripts/h2_attack.py: rapid reset, header and CONTINUATION
#      floods, PING and SETTINGS floods, a slow reader, 1000 idle connections),
#      each for ATTACK_SECONDS (whole seconds, at least 3; default 5; rapid reset
#      from two processes) against a bare server (a fresh one on 127.0.0.5, in no
#      upstream), then through the proxy, an honest client calling at
#      HONEST_RATE/s beside it; a table of its failures and latency, the bare
#      server's peak memory, and health afterwards. Fails when a server or the
#      proxy dies, or when the honest client sees an error through the proxy
#      under rapid reset or without attack; what the attacks do to the bare
#      server is the figure, not a failure (deploy/README.md has them). About 90 s.
#
#   scripts/test-deployment.sh            # after the build (BUILD_DIR, default build)
#   RATE=100 DURATION=20 PORT=50651 ADMIN_PORT=50652 PROXY_PORT=50650 scripts/test-deployment.sh
#   ATTACKS="rapid-reset ping-flood" scripts/test-deployment.sh   # some attacks (none: no stage 3)
# Installs nginx-light or haproxy, and python3-h2 (apt-get) when missing. About 2 minutes 15 s.
set -euo pipefail
cd "$(dirname "$0")/.."

build="${BUILD_DIR:-build}"
server="$build/server/attention-server"
client="$build/client/attention-client"
port="${PORT:-50651}"
admin_port="${ADMIN_PORT:-50652}"
proxy_port="${PROXY_PORT:-50650}"
stats_port="${STATS_PORT:-50653}"  # HAProxy's stats, nginx's /healthz
proxy="${PROXY:-nginx}"
rate="${RATE:-150}"
duration="${DURATION:-20}"
retries="${RETRIES:-5}"
batch="${BATCH:-8}"   # 8 x 128 x 64 float32: 256 KiB requests, beyond gRPC's retry buffer
seq="${SEQ:-128}"
addresses=(127.0.0.2 127.0.0.3 127.0.0.4)
bare=127.0.0.5        # stage 3's bare server
attacks="${ATTACKS:-rapid-reset header-flood continuation-flood ping-flood settings-flood slow-reader idle-connections}"
attack_seconds="${ATTACK_SECONDS:-5}"
honest_rate="${HONEST_RATE:-100}"
model=models/demo.safetensors

[[ -x "$server" && -x "$client" ]] || { echo "build first: scripts/build.sh" >&2; exit 2; }
if ! [[ "$attack_seconds" =~ ^[0-9]+$ ]] || ((attack_seconds < 3)); then
  echo "ATTACK_SECONDS: whole seconds, at least 3" >&2
  exit 2
fi
case "$proxy" in
  nginx) package=nginx-light ;;
  haproxy) package=haproxy ;;
  *) echo "PROXY: nginx or haproxy" >&2; exit 2 ;;
esac
if ! PATH="$PATH:/usr/sbin" command -v "$proxy" > /dev/null; then
  echo "deployment: installing $package" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends "$package" > /dev/null
fi
PATH="$PATH:/usr/sbin"
if [[ "$attacks" != none ]] && ! /usr/bin/python3 -c 'import h2' 2> /dev/null; then
  echo "deployment: installing python3-h2" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends python3-h2 > /dev/null
fi

# Nothing may listen where this test will (HAProxy binds with SO_REUSEPORT and
# would share a port with a leftover process without a word).
for hp in "127.0.0.1:$proxy_port" "127.0.0.1:$stats_port" "${addresses[@]/%/:$port}" \
  "${addresses[@]/%/:$admin_port}" "$bare:$port" "$bare:$admin_port"; do
  if (exec 3<> "/dev/tcp/${hp%:*}/${hp##*:}") 2> /dev/null; then
    echo "deployment: something already listens on $hp (choose PORT, ADMIN_PORT, PROXY_PORT," \
      "STATS_PORT)" >&2
    exit 2
  fi
done

work="$(mktemp -d)"
pids=()
proxy_pid=
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2> /dev/null || true; done
  # SIGTERM: nginx's master then stops its workers (SIGKILL would orphan them).
  [[ -n "$proxy_pid" ]] && kill "$proxy_pid" 2> /dev/null
  wait 2> /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

start_replica() {  # index
  local a="${addresses[$1]}"
  "$server" --listen "$a:$port" --admin-listen "$a:$admin_port" --model "demo=$model" \
    --threads 1 --drain-seconds 3 >> "$work/replica$1.log" 2>&1 &
  pids[$1]=$!
}
wait_ready() {  # index: until /readyz says 200
  for _ in $(seq 100); do
    curl -sf "http://${addresses[$1]}:$admin_port/readyz" > /dev/null && return 0
    sleep 0.1
  done
  echo "deployment: replica ${addresses[$1]} did not become ready" >&2
  tail "$work/replica$1.log" >&2
  exit 1
}
served() {  # index: calls the replica has answered since it started
  curl -sf "http://${addresses[$1]}:$admin_port/metrics" |
    awk '/^attention_requests_total/ { n += $NF } END { print n + 0 }'
}

for i in 0 1 2; do start_replica "$i"; done
for i in 0 1 2; do wait_ready "$i"; done

start_proxy() {
  if [[ "$proxy" == nginx ]]; then
    local upstream=""
    for a in "${addresses[@]}"; do upstream+="server $a:$port max_fails=1 fail_timeout=2s; "; done
    mkdir -p "$work/nginx"
    ATTENTION_PROXY_LISTEN="127.0.0.1:$proxy_port" ATTENTION_PROXY_HEALTH="127.0.0.1:$stats_port" \
      ATTENTION_UPSTREAM="$upstream" ATTENTION_PROXY_RUNDIR="$work/nginx" envsubst \
      '$ATTENTION_PROXY_LISTEN $ATTENTION_PROXY_HEALTH $ATTENTION_UPSTREAM $ATTENTION_PROXY_RUNDIR' \
      < deploy/proxy/nginx.conf > "$work/nginx.conf"
    nginx -c "$work/nginx.conf" -e stderr > "$work/proxy.log" 2>&1 &
  else
    # The shipped configuration, its DNS server-template replaced by the three
    # addresses, its log at level info (every call, with termination flags).
    local servers=""
    for i in 0 1 2; do servers+="    server replica$((i + 1)) ${addresses[$i]}:$port\n"; done
    sed -e "s|^    server-template .*|$servers|" -e "s|local0 warning|local0 info|" \
      deploy/proxy/haproxy.cfg > "$work/haproxy.cfg"
    ATTENTION_PROXY_BIND="127.0.0.1:$proxy_port" ATTENTION_ADMIN_PORT="$admin_port" \
      ATTENTION_PROXY_STATS="127.0.0.1:$stats_port" haproxy -f "$work/haproxy.cfg" -db \
      > "$work/proxy.log" 2>&1 &
  fi
  proxy_pid=$!
}
proxy_up() {  # how many replicas the proxy holds up (nginx: 3 once it answers)
  if [[ "$proxy" == nginx ]]; then
    curl -sf "http://127.0.0.1:$stats_port/healthz" > /dev/null && echo 3 || echo 0
  else
    curl -sf "http://127.0.0.1:$stats_port/;csv" | grep -c '^attention,replica[0-9]*,.*,UP,' || true
  fi
}
start_proxy
for _ in $(seq 50); do
  (($(proxy_up) == 3)) && break
  sleep 0.2
done
echo "deployment: $proxy sees $(proxy_up) of 3 replicas up"

# Per-call balancing: calls on one connection through the proxy reach every replica.
"$client" --target "127.0.0.1:$proxy_port" load --model demo --seq 16 --requests 30 \
  --concurrency 1 --warmup 0 --quiet > /dev/null
for i in 0 1 2; do
  n="$(served "$i" || echo "no /metrics")"
  echo "deployment: proxy, one connection, 30 calls and the load tool's ListModels: ${addresses[$i]} answered $n"
  [[ "$n" =~ ^[0-9]+$ ]] && ((n > 0)) || { echo "deployment: FAILED: the proxy does not balance per call" >&2; tail "$work/proxy.log" >&2; exit 1; }
done

failed=0
# One load run against `target` while replica `killed` is killed and restarted
# and replica `drained` is drained and restarted.
run() {
  local label="$1" target="$2" killed="$3" drained="$4"
  local json="$work/$label.json"
  "$client" --target "$target" load --model demo --model-file "$model" --batch "$batch" --seq "$seq" \
    --rate "$rate" --duration "$duration" --warmup 0 --verify 100 --retries "$retries" \
    --timeout 10 --quiet --json "$json" > "$work/$label.out" 2>&1 &
  local load=$!
  local step
  step="$(echo "$duration / 5" | bc -l)"
  sleep "$step"
  echo "deployment: $label: SIGKILL ${addresses[$killed]}"
  kill -9 "${pids[$killed]}"
  wait "${pids[$killed]}" 2> /dev/null || true
  sleep "$step"
  start_replica "$killed"
  wait_ready "$killed"
  echo "deployment: $label: ${addresses[$killed]} restarted and ready"
  sleep "$step"
  echo "deployment: $label: SIGTERM ${addresses[$drained]} (drain)"
  kill -TERM "${pids[$drained]}"
  local code=0
  wait "${pids[$drained]}" || code=$?
  echo "deployment: $label: ${addresses[$drained]} exited $code after its drain"
  start_replica "$drained"
  wait_ready "$drained"
  echo "deployment: $label: ${addresses[$drained]} restarted and ready"
  local load_code=0
  wait "$load" || load_code=$?
  /usr/bin/python3 - "$label" "$json" "$load_code" << 'PY' || failed=1
import json, sys
label, path, code = sys.argv[1], sys.argv[2], int(sys.argv[3])
r = json.load(open(path))
lat = r["latency_ms"]
errors = sum(r["errors"].values())
print(f"deployment: {label}: sent {r['sent']} ok {r['ok']} errors {errors} {r['errors'] or ''}"
      f" lost {r['lost']} verified {r['verify']['checked']} mismatches {r['verify']['mismatches']}"
      f" retries {r['retries']}")
print(f"deployment: {label}: latency ms p50 {lat['p50']:.2f} p99 {lat['p99']:.2f}"
      f" p99.9 {lat['p999']:.2f} max {lat['max']:.2f}; {r['rps']:.1f} req/s")
ok = (code == 0 and errors == 0 and r["lost"] == 0 and r["sent"] == r["ok"]
      and r["verify"]["checked"] == r["ok"] and r["verify"]["mismatches"] == 0)
if not ok:
    print(f"deployment: {label}: FAILED (exit {code}): {r['first_errors']}", file=sys.stderr)
sys.exit(0 if ok else 1)
PY
}

held() {  # index: decode sequences the replica holds now (0 when it does not answer)
  curl -sf "http://${addresses[$1]}:$admin_port/metrics" 2> /dev/null |
    awk '/^attention_decode_sequences / { n = $NF } END { print n + 0 }'
}
busiest() {  # the replica holding the most decode sequences (-1: none holds any)
  local best=-1 most=0 n
  for i in 0 1 2; do
    n="$(held "$i")"
    if ((n > most)); then best=$i most=$n; fi
  done
  echo "$best"
}
# Decoding through faults: `attention-client load --rpc decode` (decode_sequences
# sequences on streams of their own, decode_steps steps each, every step
# verified, --retries) against `target`; once its streams hold sequences, the
# replica holding the most is killed with SIGKILL (and restarted), then the one
# holding the most then is drained (and restarted). Passes with no failed step,
# every step verified, and at least one reopened stream per fault.
decode_sequences=6
decode_steps="${DECODE_STEPS:-4000}"
decode_run() {
  local label="$1 decode" target="$2"
  local json="$work/$1-decode.json" victim code
  "$client" --target "$target" load --rpc decode --model demo --model-file "$model" \
    --context 32 --sequences "$decode_sequences" --steps "$decode_steps" --verify 100 \
    --retries "$retries" --timeout 60 --quiet --json "$json" > "$work/$1-decode.out" 2>&1 &
  local load=$!
  for fault in SIGKILL SIGTERM; do
    victim=-1
    for _ in $(seq 300); do
      victim="$(busiest)"
      ((victim >= 0)) && break
      sleep 0.05
    done
    if ((victim < 0)) || ! kill -0 "$load" 2> /dev/null; then
      echo "deployment: $label: FAILED: no replica held a sequence before $fault (the decode" \
        "ended or never started: raise DECODE_STEPS)" >&2
      failed=1
      wait "$load" || true
      return
    fi
    echo "deployment: $label: $fault ${addresses[$victim]}, which holds $(held "$victim") sequences"
    kill -s "${fault#SIG}" "${pids[$victim]}"
    code=0
    wait "${pids[$victim]}" 2> /dev/null || code=$?
    [[ "$fault" == SIGTERM ]] && echo "deployment: $label: ${addresses[$victim]} exited $code after its drain"
    start_replica "$victim"
    wait_ready "$victim"
    sleep 0.5  # the streams settle on their new replicas
  done
  local load_code=0
  wait "$load" || load_code=$?
  /usr/bin/python3 - "$label" "$json" "$load_code" "$((decode_sequences * decode_steps))" << 'PY' || failed=1
import json, sys
label, path, code, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
r = json.load(open(path))
lat = r["latency_ms"]
errors = sum(r["errors"].values())
print(f"deployment: {label}: steps sent {r['sent']} ok {r['ok']} errors {errors} {r['errors'] or ''}"
      f" verified {r['verify']['checked']} mismatches {r['verify']['mismatches']}"
      f" streams reopened {r['retries']}; step ms p50 {lat['p50']:.2f} p99 {lat['p99']:.2f}"
      f" max {lat['max']:.2f}")
ok = (code == 0 and errors == 0 and r["sent"] == steps and r["ok"] == steps
      and r["verify"]["checked"] == steps and r["verify"]["mismatches"] == 0
      and r["retries"] >= 2)
if not ok:
    print(f"deployment: {label}: FAILED (exit {code}): {r['first_errors']}", file=sys.stderr)
sys.exit(0 if ok else 1)
PY
}

run "$proxy" "127.0.0.1:$proxy_port" 0 1
run client-side "$(IFS=,; echo "${addresses[*]/%/:$port}")" 2 0
decode_run "$proxy" "127.0.0.1:$proxy_port"
decode_run client-side "$(IFS=,; echo "${addresses[*]/%/:$port}")"

if ((failed)); then
  echo "deployment: FAILED" >&2
  tail -n 5 "$work"/*.out >&2
  echo "deployment: the proxy's log:" >&2
  grep -v -e ' ---- ' -e '^<' "$work/proxy.log" | tail -20 >&2
  exit 1
fi
summary="$proxy; rate $rate/s for $duration s, each run through a SIGKILL and a drain; decoding through both too"
if [[ "$attacks" == none ]]; then
  echo "deployment: passed ($summary)"
  exit 0
fi

# Stage 3: HTTP/2 attacks. One row: `attack` (or none) on `target` for
# attack_seconds, the honest client calling at honest_rate/s from its second
# second to one before its end, then a health check. The honest calls' deadline
# is 10 s: the attacker shares this machine's cores with the proxy, which slows
# calls through it by up to a few seconds. No ListModels first: the shapes are
# given. Rapid reset comes from two processes: one Python process (about 20,000
# streams a second here) is about what the bare server absorbs on this machine;
# two outpace it, as an attacker with a second core would.
rows="$work/attacks.tsv"
attack_row() {  # attack where target
  local attack="$1" where="$2" target="$3" out="$work/$1-$2" apids=() k procs=1
  if [[ "$attack" == rapid-reset ]]; then procs=2; fi
  if [[ "$attack" != none ]]; then
    for ((k = 0; k < procs; k++)); do
      /usr/bin/python3 scripts/h2_attack.py "$attack" "$target" --seconds "$attack_seconds" \
        >> "$out.attack" 2>&1 &
      apids+=($!)
    done
    sleep 1
  fi
  "$client" --target "$target" load --embed 64 --heads 4 --seq 16 --rate "$honest_rate" \
    --duration "$((attack_seconds - 2))" --warmup 0 --timeout 10 --quiet --json "$out.json" \
    > "$out.load" 2>&1 || true
  for k in "${apids[@]}"; do wait "$k" || echo "(h2_attack.py exited $?)" >> "$out.attack"; done
  local health
  health="$("$client" --target "$target" --timeout 2 health 2>&1 | tr '\n' ' ')" || true
  printf '%s\t%s\t%s\t%s' "$attack" "$where" "$out" "$health" >> "$rows"
}
alive() {  # index: the replica's process still runs (or else: how it ended, and its log)
  kill -0 "${pids[$1]}" 2> /dev/null && return 0
  local code=0
  wait "${pids[$1]}" || code=$?
  echo "deployment: ${addresses[$1]} DIED (exit $code); its log ends:" >&2
  tail -n 20 "$work/replica$1.log" >&2
  return 1
}
crashed=0
attack_stage() {
  addresses[3]="$bare"  # index 3: the bare server, in no upstream; a fresh one per row
  local attack i peak state
  for attack in none $attacks; do
    echo "== $attack" >> "$work/replica3.log"
    start_replica 3
    wait_ready 3
    attack_row "$attack" bare "$bare:$port"
    peak="$(awk '/^VmHWM/ { print int($2 / 1024) }' "/proc/${pids[3]}/status" 2> /dev/null || true)"
    if alive 3; then
      state=alive
      kill -9 "${pids[3]}"
      wait "${pids[3]}" 2> /dev/null || true
    else
      state=DIED crashed=1
    fi
    printf '\t%s\t%s\n' "$state" "${peak:-?}" >> "$rows"
    attack_row "$attack" proxy "127.0.0.1:$proxy_port"
    state=alive
    for i in 0 1 2; do
      alive "$i" && continue
      state="DIED: ${addresses[$i]}" crashed=1
      start_replica "$i"
      wait_ready "$i"
    done
    if ! kill -0 "$proxy_pid" 2> /dev/null; then
      printf '\tDIED: %s\t-\n' "$proxy" >> "$rows"
      echo "deployment: $proxy DIED; its log ends:" >&2
      tail -n 20 "$work/proxy.log" >&2
      crashed=1
      break
    fi
    printf '\t%s\t-\n' "$state" >> "$rows"
  done
}
stage_start=$SECONDS
attack_stage
echo "deployment: attacks: $((SECONDS - stage_start)) s; honest client $honest_rate/s for" \
  "$((attack_seconds - 2)) s a row, beside $attack_seconds s of attack"
/usr/bin/python3 - "$rows" << 'PY' || failed=1
import json, os, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
print(f"{'attack':<19}{'target':<7}{'honest ok/sent':>15}  {'errors':<44}{'p50 ms':>9}{'p99 ms':>9}"
      f"  {'health after':<13}{'server':<8}{'peak MiB':>8}")
bad, first = [], {}
for attack, where, out, health, state, peak in rows:
    try:
        r = json.load(open(out + ".json"))
        errors = sum(r["errors"].values())
        if errors:
            first[f"{attack} {where}"] = r["first_errors"]
        lat = r["corrected_latency_ms"]
        codes = ", ".join(f"{n} {c}" for c, n in r["errors"].items())
        cells = (f"{r['ok']}/{r['sent']}", codes or "0", f"{lat['p50']:.2f}", f"{lat['p99']:.2f}")
    except (OSError, ValueError, KeyError):
        errors = None
        cells = ("-", "load tool: " + open(out + ".load").read().strip()[-60:], "-", "-")
    health = "SERVING" if "SERVING" in health and "NOT_SERVING" not in health else health[:60]
    print(f"{attack:<19}{where:<7}{cells[0]:>15}  {cells[1]:<44}{cells[2]:>9}{cells[3]:>9}"
          f"  {health:<13}{state:<8}{peak:>8}")
    if state != "alive":
        bad.append(f"{attack} {where}: {state}")
    if where == "proxy" and attack in ("none", "rapid-reset") and errors != 0:
        bad.append(f"{attack} through the proxy: the honest client saw {cells[1]}")
    if where == "bare" and attack == "none" and errors != 0:
        bad.append(f"the bare server without attack: {cells[1]}")
for attack, where, out, *_ in rows:
    if os.path.exists(out + ".attack"):
        for line in open(out + ".attack").read().strip().split("\n"):
            print(f"deployment: {where}: {line}")
for row, errors in first.items():
    print(f"deployment: the honest client's first errors, {row}: {errors}")
for b in bad:
    print(f"deployment: FAILED: {b}", file=sys.stderr)
sys.exit(1 if bad else 0)
PY
if ((failed || crashed)); then
  echo "deployment: attacks FAILED" >&2
  exit 1
fi
echo "deployment: passed ($summary; attacks: a bare server's figures above, the proxy held)"
