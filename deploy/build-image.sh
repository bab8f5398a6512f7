#!/usr/bin/env bash
# Build the prm-service image and smoke-test it: it must serve the demo with README's numbers, and the
# jobs must run inside. Fails loudly at the first thing that does not hold.
#   bash deploy/build-image.sh [cpu|cuda]      # default cpu
# With a working Docker engine: `docker build`. Without one (these CI machines): `buildah bud` on a
# Debian base made with mmdebstrap from Debian's packages, with this machine's pip setup (local wheels,
# indexes, constraints, CA bundle) mounted read-only into the build where those paths exist.
# BASE_IMAGE and TORCH_INDEX_URL in the environment override the variant's build arguments.
set -euo pipefail
cd "$(dirname "$0")/.."

variant=${1:-cpu}
case "$variant" in
  cpu | cuda) ;;
  *) echo "build-image.sh: variant must be cpu or cuda, not '$variant'" >&2; exit 2 ;;
esac
fail() { echo "build-image.sh: FAILED: $*" >&2; exit 1; }
port=${PRM_SMOKE_PORT:-18990}

if docker info >/dev/null 2>&1; then
  engine=docker
  image=prm-service:$variant
elif command -v buildah >/dev/null; then
  engine=buildah
  image=localhost/prm-service:$variant
else
  fail "neither a Docker engine nor buildah is available (apt-get install buildah podman mmdebstrap)"
fi

# The variant's build arguments (an empty TORCH_INDEX_URL: pip's default index).
args=()
if [ "$variant" = cpu ]; then
  if [ "$engine" = docker ]; then
    base_default=debian:bookworm-slim
    index_default=https://download.pytorch.org/whl/cpu
  else
    base_default=localhost/debian-bookworm-py:latest
    index_default=""  # this machine's pip config holds the CPU build of torch
  fi
  args+=(--build-arg "BASE_IMAGE=${BASE_IMAGE:-$base_default}")
  args+=(--build-arg "TORCH_INDEX_URL=${TORCH_INDEX_URL-$index_default}")
else
  [ -n "${BASE_IMAGE:-}" ] && args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
  [ -n "${TORCH_INDEX_URL+set}" ] && args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
fi

pip_mounts() {
  # -v P:P:ro for each path that this machine's pip setup names: what a pip inside the build needs to
  # install as pip does here. Paths inside another are dropped; none is written into the image.
  python3 - <<'EOF'
import os, subprocess, sys
listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
paths = set()
for line in listed.splitlines():
    key, _, value = line.partition("=")
    for item in value.strip("'\"").split():
        path = item.removeprefix("file://")
        if not path.startswith("/") or not os.path.exists(path):
            continue
        if key.endswith(("constraint", "cert", "requirement")):
            path = os.path.dirname(path)  # the folder of the file
        elif os.path.basename(path) == "simple":
            path = os.path.dirname(path)  # a local index: its files lie beside simple/
        paths.add(path)
debug = subprocess.run([sys.executable, "-m", "pip", "config", "debug"], capture_output=True, text=True).stdout
paths |= {line.split(",")[0].strip() for line in debug.splitlines() if line.strip().endswith("exists: True")}
kept = sorted(p for p in paths if not any(p != q and p.startswith(q.rstrip("/") + "/") for q in paths))
print(" ".join(f"-v {p}:{p}:ro" for p in kept))
EOF
}

# The image this build replaces: removed once the new one is built, so that rebuilds (every CI run) do not
# pile up untagged 1.8 GB images until the disk is full.
image_id() { if [ "$engine" = docker ]; then docker image inspect --format '{{.Id}}' "$image"; else podman image inspect --format '{{.Id}}' "$image"; fi 2>/dev/null || true; }
previous=$(image_id)

started=$(date +%s)
if [ "$engine" = docker ]; then
  docker build "${args[@]}" -t "$image" . || fail "docker build"
else
  if [ "$variant" = cpu ] && [ -z "${BASE_IMAGE:-}" ] && ! podman image exists "$base_default" 2>/dev/null; then
    command -v mmdebstrap >/dev/null || fail "mmdebstrap is needed to make the Debian base"
    rootfs=$(mktemp -d)/rootfs.tar
    mmdebstrap --quiet --variant=apt --include=python3,python3-venv,ca-certificates,curl,passwd bookworm "$rootfs" \
      || fail "mmdebstrap"
    podman import --quiet "$rootfs" "$base_default" >/dev/null || fail "podman import"
    rm -rf "$(dirname "$rootfs")"
  fi
  # shellcheck disable=SC2046 # the mounts are words
  buildah bud --quiet --format docker --isolation chroot --network host $(pip_mounts) "${args[@]}" -t "$image" . >/dev/null \
    || fail "buildah bud"
fi
built=$(($(date +%s) - started))
if [ -n "$previous" ] && [ "$previous" != "$(image_id)" ]; then
  if [ "$engine" = docker ]; then docker rmi "$previous"; else podman rmi "$previous"; fi >/dev/null 2>&1 || true
fi

# Run it as an orchestrator would (its own CMD, its environment), then probe it from here.
if [ "$engine" = docker ]; then
  container=$(docker run -d -p "127.0.0.1:$port:8000" "$image")
  inside() { docker run --rm "$image" "$@"; }
  as_root() { docker run --rm --user root "$image" "$@"; }
  stop() { docker rm -f "$container" >/dev/null; }
  size=$(docker image inspect --format '{{.Size}}' "$image")
else
  container=$(buildah from --quiet "$image")
  buildah run --isolation chroot --network host -e PRM_PORT="$port" "$container" prm serve >/tmp/prm-image-serve.log 2>&1 &
  server=$!
  inside() { buildah run --isolation chroot --network host "$container" "$@"; }
  as_root() { buildah run --isolation chroot --network host --user root "$container" "$@"; }
  stop() { kill "$server" 2>/dev/null || true; pkill -f "prm serve" -P "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; buildah rm "$container" >/dev/null; }
  size=$(podman image inspect --format '{{.Size}}' "$image")
fi
trap stop EXIT

for _ in $(seq 240); do
  curl -fsS "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && break
  sleep 0.5
done
curl -fsS "http://127.0.0.1:$port/ready" >/dev/null || fail "/ready never answered 200 (log: /tmp/prm-image-serve.log)"

# README's first curl: the demo's scores for the right solution, to 3 digits.
answer=$(curl -fsS "http://127.0.0.1:$port/score_steps" -H 'content-type: application/json' -d '{
  "problem": "Ava has 25 apples. Then Ava buys 12 more apples. Then Ava gives away 9 apples. How many apples does Ava have now?",
  "steps": ["After buying 12 more, Ava has 25 + 12 = 37 apples.", "After giving away 9, Ava has 37 - 9 = 28 apples.",
            "The answer is \\boxed{28}."]}') || fail "/score_steps"
python3 - "$answer" <<'EOF' || fail "the demo's scores differ from README's: $answer"
import json, sys
scores = json.loads(sys.argv[1])["step_scores"]
assert [float(f"{s:.3g}") for s in scores] == [0.977, 0.762, 0.833], scores
EOF

inside prm --help | grep -q "serve" || fail "prm --help inside the image"
inside prm synth --help | grep -q -- "--train" || fail "prm synth --help inside the image"
[ "$(inside id -u)" = 10001 ] || fail "the image does not run as the prm user (uid 10001)"
as_root sh -c '! command -v gcc && [ ! -e /src ] && [ ! -e /root/.cache/pip ] && [ ! -e /opt/venv/lib/python3*/site-packages/tests ]' \
  >/dev/null || fail "build tools, sources, tests or caches are left in the image"

echo "build-image.sh: $image ($engine) built in ${built} s, $((size / 1000000)) MB; serves the demo with README's numbers; prm --help and prm synth --help run inside"
