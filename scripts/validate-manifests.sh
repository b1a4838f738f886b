#!/usr/bin/env bash
# Checks every object of deploy/kubernetes/*.yaml against the Kubernetes API schemas,
# offline, with the npm package kubernetes-models (and js-yaml), installed once into a
# cache folder (CACHE_DIR, default ~/.cache/attention-manifests). Then a few rules of
# this project: probes on the admin port, resources requests and limits on every
# container, terminationGracePeriodSeconds longer than the drain plus the preStop sleep,
# and a NetworkPolicy for the replicas.
#   scripts/validate-manifests.sh [FILE.yaml ...]
# Needs node and npm (Debian's nodejs and npm are installed when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${CACHE_DIR:-$HOME/.cache/attention-manifests}"
if ! command -v node > /dev/null || ! command -v npm > /dev/null; then
  echo "validate-manifests: installing nodejs and npm" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends nodejs npm > /dev/null
fi
if [[ ! -d "$cache/node_modules/kubernetes-models" || ! -d "$cache/node_modules/js-yaml" ]]; then
  mkdir -p "$cache"
  npm install --prefix "$cache" --no-audit --no-fund --silent kubernetes-models@4 js-yaml@4
fi
files=("$@")
((${#files[@]})) || files=(deploy/kubernetes/*.yaml)
NODE_PATH="$cache/node_modules" node - "${files[@]}" << 'JS'
const fs = require("fs");
const yaml = require("js-yaml");
let problems = 0, objects = 0;
const fail = (where, msg) => { problems++; console.error(`${where}: ${msg}`); };
const seconds = (args, flag) => {
  const a = (args || []).find((x) => x.startsWith(`--${flag}=`));
  return a ? Number(a.split("=")[1]) : undefined;
};
const kinds = new Set();
for (const file of process.argv.slice(2)) {
  for (const obj of yaml.loadAll(fs.readFileSync(file, "utf8"))) {
    if (!obj) continue;
    objects++;
    const where = `${file}: ${obj.kind}/${obj.metadata && obj.metadata.name}`;
    kinds.add(obj.kind);
    const group = obj.apiVersion.includes("/") ? obj.apiVersion : `v1`;
    let Model;
    try {
      Model = require(`kubernetes-models/${group}`)[obj.kind];
    } catch (e) {}
    if (!Model) { fail(where, `no schema for ${obj.apiVersion} ${obj.kind}`); continue; }
    try {
      new Model(obj).validate();
    } catch (e) {
      fail(where, e.message);
      continue;
    }
    const pod = obj.kind === "Deployment" ? obj.spec.template.spec : null;
    if (!pod) continue;
    for (const c of pod.containers) {
      const r = c.resources || {};
      if (!r.requests || !r.limits || !r.limits.memory || !r.requests.cpu) {
        fail(where, `container ${c.name}: resources requests and limits (cpu, memory) missing`);
      }
      if (!c.readinessProbe || !c.livenessProbe) fail(where, `container ${c.name}: probes missing`);
      const drain = seconds(c.args, "drain-seconds");
      if (drain === undefined) continue;  // not an attention-server
      const admin = (c.ports || []).find((p) => p.name === "admin");
      for (const probe of ["startupProbe", "readinessProbe", "livenessProbe"]) {
        const p = c[probe];
        if (!p || !p.httpGet || p.httpGet.port !== "admin" || !admin) {
          fail(where, `${probe}: expected an HTTP probe on the admin port`);
        }
      }
      const preStop = JSON.stringify((c.lifecycle || {}).preStop || {});
      const sleep = Number((preStop.match(/sleep\D+(\d+)/) || [0, 0])[1]);
      const grace = pod.terminationGracePeriodSeconds || 30;
      if (!(grace > drain + sleep)) {
        fail(where, `terminationGracePeriodSeconds ${grace} <= preStop sleep ${sleep} + --drain-seconds ${drain}`);
      }
    }
  }
}
if (kinds.has("Deployment") && process.argv.length > 3 && !kinds.has("NetworkPolicy")) {
  fail("manifests", "no NetworkPolicy");
}
console.log(`validate-manifests: ${objects} objects, ${problems} problems`);
process.exit(problems ? 1 : 0);
JS
