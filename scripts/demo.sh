#!/usr/bin/env bash
# `make demo`: the whole product on one machine, on real data (scikit-learn's digits), CPU only.
#
#   1. write the digits as webdataset shards            data/digits/
#   2. train three tiny Swin anchors on them (cached)   demo_out/anchors/
#   3. start a local Ray head (its own ports)
#   4. ray job submit jobs/train_swin.py --config tiny_digits (least-squares init, DeepSpeed, evaluation)
#   5. show the per-config table and the Pareto plot, stop the Ray head, serve the results page
#   6. serve the trained SN-Net (snnet-ray serve, its own local Ray) and classify a few validation images
#   then the paper's claim at CPU scale: bench/interpolation.py (anchors apart, stitches in between)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"   # `ray start` and the job's `python` come from the project's venv
export PYTHONUNBUFFERED=1

OUT="$PWD/demo_out"
DATA="$PWD/data/digits"
DB="sqlite:///$OUT/results.db"
# Free ports from these on: another Ray, Serve or demo on this machine keeps its own.
free_port() {
    python - "$1" <<'PY'
import socket, sys
for port in range(int(sys.argv[1]), int(sys.argv[1]) + 100):
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)):
            print(port)
            break
PY
}
RAY_PORT=$(free_port 6389)
DASHBOARD_PORT=$(free_port 8275)
SERVE_PORT=$(free_port 8000)
RUN=tiny-digits
mkdir -p "$OUT"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/6 digits shards -> $DATA"
snnet-ray shards digits --out "$DATA"

step "2/6 tiny Swin anchors (trained once, then cached)"
WEIGHTS=$(snnet-ray pretrain-anchors --config tiny_digits --set data.root="$DATA" --out "$OUT/anchors")
echo "anchors: $WEIGHTS"

step "3/6 local Ray head (port $RAY_PORT, dashboard $DASHBOARD_PORT)"
# Token authentication with the demo's own token: the head, `ray job submit` and the job share it.
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$OUT/ray_auth_token"
[ -s "$RAY_AUTH_TOKEN_PATH" ] || python -c "import secrets; print(secrets.token_hex(32))" >"$RAY_AUTH_TOKEN_PATH"
chmod 600 "$RAY_AUTH_TOKEN_PATH"
# `--block` in a session of its own: stopping the demo's head stops exactly its processes
# (`ray stop` would stop every Ray on this machine).
# Its own temp dir (short: Ray's socket paths must fit 107 bytes) keeps it apart from other Rays.
RAY_TMP=$(mktemp -d /tmp/snnet-demo-ray.XXXXXX)
setsid ray start --head --block --port "$RAY_PORT" --dashboard-port "$DASHBOARD_PORT" --num-cpus 2 \
    --include-dashboard true --disable-usage-stats --temp-dir "$RAY_TMP" >"$OUT/ray_head.log" 2>&1 &
RAY_HEAD=$!
stop_ray() {
    kill -TERM -- "-$RAY_HEAD" 2>/dev/null || true
    for _ in $(seq 20); do kill -0 "$RAY_HEAD" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$RAY_HEAD" 2>/dev/null || true   # what TERM left behind (the raylet may linger)
    rm -rf "$RAY_TMP"
}
trap stop_ray EXIT
for _ in $(seq 120); do
    curl -sf -o /dev/null -H "Authorization: Bearer $(cat "$RAY_AUTH_TOKEN_PATH")" \
        "http://127.0.0.1:$DASHBOARD_PORT/api/jobs/" && break
    kill -0 "$RAY_HEAD" 2>/dev/null || { tail -20 "$OUT/ray_head.log"; exit 1; }
    sleep 1
done

step "4/6 ray job submit -- python jobs/train_swin.py --config tiny_digits"
ray job submit --address "http://127.0.0.1:$DASHBOARD_PORT" --working-dir . \
    --runtime-env cluster/runtime_env.yaml -- \
    python jobs/train_swin.py --config tiny_digits \
        --set data.root="$DATA" \
        --set "model.pretrained=$WEIGHTS" \
        --set run.storage_path="$OUT/runs" \
        --set results.db="$DB" \
        --set results.port="$SERVE_PORT" \
        --set run.name="$RUN"

step "5/6 results"
stop_ray
trap - EXIT
snnet-ray results show --db "$DB" --run "$RUN"
snnet-ray results pareto --db "$DB" --run "$RUN" --png "$OUT/pareto.png"

# The page outlives the Ray head: a standalone results server over the same database, on the first
# free port from 8090 (another checkout's demo may hold one).
if [ -f "$OUT/results.pid" ]; then kill "$(cat "$OUT/results.pid")" 2>/dev/null || true; sleep 0.5; fi
PAGE_PORT=$(free_port 8090)
nohup snnet-ray results serve --db "$DB" --host 127.0.0.1 --port "$PAGE_PORT" >"$OUT/results_server.log" 2>&1 &
echo $! >"$OUT/results.pid"
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PAGE_PORT/healthz" >/dev/null 2>&1 && break; sleep 0.2; done
kill -0 "$(cat "$OUT/results.pid")" 2>/dev/null || { tail -5 "$OUT/results_server.log"; exit 1; }

step "the claim at CPU scale: stitches interpolate between anchors (bench/interpolation.py, ~1 min)"
# The tiny_digits run above shows the product end to end; its 360 validation images cannot separate
# anchors that all score 92-97%. This protocol (README, "Reproducing the claim") can.
python bench/interpolation.py | tail -6

step "6/6 elastic serving: snnet-ray serve, then POST /v1/classify with validation images"
# Its own local Ray (ended with the command), the run's checkpoint and per-config top-1 from the database.
INFER_PORT=$(free_port 8100)
snnet-ray serve --results "$DB" --run "$RUN" --port "$INFER_PORT" --cpus 1 >"$OUT/serve.log" 2>&1 &
SERVE_PID=$!
stop_serve() { kill -TERM "$SERVE_PID" 2>/dev/null || true; wait "$SERVE_PID" 2>/dev/null || true; }
trap stop_serve EXIT
for _ in $(seq 240); do
    curl -sf "http://127.0.0.1:$INFER_PORT/healthz" >/dev/null 2>&1 && break
    kill -0 "$SERVE_PID" 2>/dev/null || { tail -20 "$OUT/serve.log"; exit 1; }
    sleep 0.5
done
python - "$DATA" "http://127.0.0.1:$INFER_PORT" <<'PY'
import glob, json, sys, tarfile, urllib.request
data, url = sys.argv[1], sys.argv[2]
info = json.load(urllib.request.urlopen(f"{url}/v1/configs"))
print(f"serving {len(info['configs'])} frontier configs on {info['device']} (SLO {info['slo_ms']:g} ms)")
with tarfile.open(sorted(glob.glob(f"{data}/validation-*.tar") + glob.glob(f"{data}/val-*.tar"))[0]) as tar:
    members = {m.name: m for m in tar.getmembers()}
    keys = sorted(n[:-4] for n in members if n.endswith(".png"))[:5]
    for key in keys:
        image, label = tar.extractfile(members[key + ".png"]).read(), tar.extractfile(members[key + ".cls"]).read()
        req = urllib.request.Request(f"{url}/v1/classify?top_k=1", data=image, headers={"Content-Type": "image/png"})
        out = json.load(urllib.request.urlopen(req))
        best, cfg = out["predictions"][0][0], out["config"]
        print(f"  {key}: label {int(label)}, predicted {best['class']} (p={best['probability']:.2f}) by config "
              f"{cfg['id']} {cfg['name']} ({cfg['gmacs']:.4f} GMACs, top-1 {cfg['top1']:.1f}) in {out['time_ms']['total']:.1f} ms")
PY
stop_serve
trap - EXIT

echo
echo "Pareto plot:   $OUT/pareto.png"
echo "results page:  http://127.0.0.1:$PAGE_PORT/runs/$RUN   (stop the page server: make demo-stop)"
echo "checkpoints:   $OUT/runs/$RUN"
