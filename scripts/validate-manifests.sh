#!/usr/bin/env bash
# Checks every object of deploy/kubernetes/*.yaml and deploy/kserve/*.yaml against the
# Kubernetes API schemas, offline, with the npm package kubernetes-models (and js-yaml),
# installed once into a cache folder (CACHE_DIR, default ~/.cache/attention-manifests).
# KServe's objects (serving.kserve.io ServingRuntime, InferenceService), which that package
# has no schema for, are checked against the fields and values of KServe's CRDs
# (v1alpha1 ServingRuntimeSpec, v1beta1 PredictorSpec's model: written here from KServe's
# API reference), their containers against the Kubernetes Container schema. Then a few
# rules of this project: probes on the admin port, resources requests and limits on every
# container, terminationGracePeriodSeconds longer than the drain plus the preStop sleep,
# a NetworkPolicy for the replicas, the gRPC v2 runtime's port named h2c, and each
# InferenceService's runtime and model format defined by a ServingRuntime given.
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
((${#files[@]})) || files=(deploy/kubernetes/*.yaml deploy/kserve/*.yaml)
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
const kserve = [];  // [where, object] of serving.kserve.io, checked below
// KServe's CRDs: the fields of the parts these manifests use, and the values they take.
const PROTOCOLS = ["v1", "v2", "grpc-v1", "grpc-v2"];
const RUNTIME_SPEC = ["annotations", "supportedModelFormats", "protocolVersions", "containers",
  "multiModel", "grpcEndpoint", "grpcDataEndpoint", "disabled", "nodeSelector", "affinity",
  "tolerations", "volumes", "labels", "builtInAdapter", "replicas", "storageHelper",
  "imagePullSecrets", "workerSpec", "hostIPC"];
const MODEL_FORMAT = ["name", "version", "autoSelect", "priority"];
const PREDICTOR = ["model", "minReplicas", "maxReplicas", "scaleTarget", "scaleMetric",
  "containerConcurrency", "timeout", "canaryTrafficPercent", "logger", "batcher", "labels",
  "annotations", "serviceAccountName", "nodeSelector", "affinity", "tolerations", "volumes",
  "imagePullSecrets", "containers", "deploymentStrategy"];
const MODEL = ["modelFormat", "runtime", "protocolVersion", "storageUri", "storage", "args",
  "env", "resources", "image", "command", "ports", "readinessProbe", "livenessProbe",
  "volumeMounts", "name"];
const only = (where, what, obj, allowed) => {
  for (const k of Object.keys(obj || {})) {
    if (!allowed.includes(k)) fail(where, `${what}.${k}: not a field of KServe's schema`);
  }
};
const checkKServe = (runtimes, where, obj) => {
  const spec = obj.spec || {};
  if (obj.kind === "ServingRuntime" && obj.apiVersion === "serving.kserve.io/v1alpha1") {
    only(where, "spec", spec, RUNTIME_SPEC);
    for (const f of spec.supportedModelFormats || []) {
      only(where, "spec.supportedModelFormats[]", f, MODEL_FORMAT);
      if (typeof f.name !== "string") fail(where, "supportedModelFormats[].name: required");
      if (f.version !== undefined && typeof f.version !== "string") {
        fail(where, "supportedModelFormats[].version: a string");
      }
    }
    for (const p of spec.protocolVersions || []) {
      if (!PROTOCOLS.includes(p)) fail(where, `protocolVersions: '${p}' not one of ${PROTOCOLS}`);
    }
    if (!(spec.containers || []).length) fail(where, "spec.containers: required");
    const Container = require("kubernetes-models/v1").Container;
    for (const c of spec.containers || []) {
      try { new Container(c).validate(); } catch (e) { fail(where, `container ${c.name}: ${e.message}`); }
      const r = c.resources || {};
      if (!r.requests || !r.limits) fail(where, `container ${c.name}: resources missing`);
      if (!c.readinessProbe || !c.livenessProbe) fail(where, `container ${c.name}: probes missing`);
    }
    const ports = (spec.containers || []).flatMap((c) => c.ports || []);
    if ((spec.protocolVersions || []).includes("grpc-v2") && !ports.some((p) => p.name === "h2c")) {
      fail(where, "grpc-v2: KServe needs the gRPC container port named h2c");
    }
  } else if (obj.kind === "InferenceService" && obj.apiVersion === "serving.kserve.io/v1beta1") {
    only(where, "spec", spec, ["predictor", "transformer", "explainer"]);
    const p = spec.predictor || {};
    only(where, "spec.predictor", p, PREDICTOR);
    const m = p.model;
    if (!m) { fail(where, "spec.predictor.model: required here"); return; }
    only(where, "spec.predictor.model", m, MODEL);
    only(where, "spec.predictor.model.modelFormat", m.modelFormat, ["name", "version"]);
    if (!m.modelFormat || typeof m.modelFormat.name !== "string") {
      fail(where, "spec.predictor.model.modelFormat.name: required");
    }
    if (m.protocolVersion && !PROTOCOLS.includes(m.protocolVersion)) {
      fail(where, `protocolVersion: '${m.protocolVersion}' not one of ${PROTOCOLS}`);
    }
    const rt = runtimes.get(m.runtime);
    if (!rt) { fail(where, `runtime '${m.runtime}': no ServingRuntime of that name given`); return; }
    if (!(rt.spec.supportedModelFormats || []).some((f) => f.name === (m.modelFormat || {}).name)) {
      fail(where, `modelFormat '${(m.modelFormat || {}).name}': not supported by runtime ${m.runtime}`);
    }
    if (m.protocolVersion && !(rt.spec.protocolVersions || []).includes(m.protocolVersion)) {
      fail(where, `protocolVersion ${m.protocolVersion}: not one of runtime ${m.runtime}'s`);
    }
  } else {
    fail(where, `no schema for ${obj.apiVersion} ${obj.kind}`);
  }
};
for (const file of process.argv.slice(2)) {
  for (const obj of yaml.loadAll(fs.readFileSync(file, "utf8"))) {
    if (!obj) continue;
    objects++;
    const where = `${file}: ${obj.kind}/${obj.metadata && obj.metadata.name}`;
    kinds.add(obj.kind);
    if (obj.apiVersion.startsWith("serving.kserve.io/")) {
      kserve.push([where, obj]);
      continue;
    }
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
const runtimes = new Map(kserve.filter(([, o]) => o.kind === "ServingRuntime")
  .map(([, o]) => [o.metadata.name, o]));
for (const [where, obj] of kserve) checkKServe(runtimes, where, obj);
if (kinds.has("Deployment") && process.argv.length > 3 && !kinds.has("NetworkPolicy")) {
  fail("manifests", "no NetworkPolicy");
}
console.log(`validate-manifests: ${objects} objects, ${problems} problems`);
process.exit(problems ? 1 : 0);
JS
