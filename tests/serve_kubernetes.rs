//! The Kubernetes manifests of `deploy/kubernetes/` against the server
//! they deploy: every file parses (YAML, each document with a kind and a
//! name), the ConfigMap's serve.toml loads with `weir serve`'s own parser,
//! the container's arguments are flags `weir serve --help` lists, the
//! container port, the probes and the Service's targetPort are the port
//! serve.toml listens on, the TLS files and the state directory are on
//! mounted volumes (the TLS files as keys of the mounted Secret), and every
//! Secret and ConfigMap a workload names is one of the manifests.

use crate::common::*;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Every document of every manifest, with the file it came from.
fn manifests() -> Vec<(String, Value)> {
    let dir = repo().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "manifests in {}: {files:?}", dir.display());
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        for d in serde_norway::Deserializer::from_str(&text) {
            let v = Value::deserialize(d).unwrap_or_else(|e| panic!("{name}: {e}"));
            if v.is_null() {
                continue; // an empty document (comments only)
            }
            for key in ["apiVersion", "kind"] {
                assert!(v[key].is_string(), "{name}: a document without {key}: {v}");
            }
            assert!(v["metadata"]["name"].is_string(), "{name}: a document without metadata.name");
            docs.push((name.clone(), v));
        }
    }
    docs
}

fn named<'a>(docs: &'a [(String, Value)], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter().map(|(_, v)| v).find(|v| v["kind"] == kind && v["metadata"]["name"] == name)
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect()).unwrap_or_default()
}

/// The mount whose path holds `file` (the deepest), and the path inside it.
fn mount_of<'a>(mounts: &'a [Value], file: &Path) -> Option<(&'a Value, PathBuf)> {
    mounts
        .iter()
        .filter_map(|m| {
            let at = Path::new(m["mountPath"].as_str()?);
            file.strip_prefix(at).ok().map(|rest| (m, at.components().count(), rest.to_path_buf()))
        })
        .max_by_key(|(_, depth, _)| *depth)
        .map(|(m, _, rest)| (m, rest))
}

/// The keys a Secret or ConfigMap holds.
fn keys(doc: &Value) -> Vec<String> {
    let mut k = Vec::new();
    for field in ["data", "stringData"] {
        if let Some(o) = doc[field].as_object() {
            k.extend(o.keys().cloned());
        }
    }
    k
}

/// The flags of `weir serve`, from its help.
fn serve_flags() -> Vec<String> {
    let out = run(weir().args(["serve", "--help"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()).to_string())
        .collect()
}

#[test]
fn serve_kubernetes_manifests_match_the_server() {
    let docs = manifests();
    let workloads: Vec<&Value> =
        docs.iter().map(|(_, v)| v).filter(|v| v["kind"] == "StatefulSet" || v["kind"] == "Deployment").collect();
    let servers: Vec<&&Value> = workloads
        .iter()
        .filter(|w| {
            str_list(&w["spec"]["template"]["spec"]["containers"][0]["args"]).first().is_some_and(|a| a == "serve")
        })
        .collect();
    assert_eq!(servers.len(), 1, "one workload runs `weir serve`");
    let server = servers[0];
    assert_eq!(server["spec"]["replicas"], 1, "the state directory's lock admits one server");
    let pod = &server["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let volumes = pod["volumes"].as_array().cloned().unwrap_or_default();
    let mounts = c["volumeMounts"].as_array().cloned().unwrap_or_default();
    let claims: Vec<String> = server["spec"]["volumeClaimTemplates"]
        .as_array()
        .map(|a| a.iter().filter_map(|t| t["metadata"]["name"].as_str().map(String::from)).collect())
        .unwrap_or_default();
    let volume = |name: &str| volumes.iter().find(|v| v["name"] == name);

    // The arguments: flags `weir serve` has, and --config names a key of the
    // mounted ConfigMap.
    let args = str_list(&c["args"]);
    let flags = serve_flags();
    assert!(flags.contains(&"--config".to_string()), "{flags:?}");
    for a in args.iter().filter(|a| a.starts_with("--")) {
        let flag = a.split('=').next().unwrap();
        assert!(flags.iter().any(|f| f == flag), "{a} is not a flag of weir serve ({flags:?})");
    }
    let config_at = args.iter().position(|a| a == "--config").map(|i| args[i + 1].clone()).expect("--config");
    let config_path = PathBuf::from(&config_at);
    let (m, key) = mount_of(&mounts, &config_path).unwrap_or_else(|| panic!("{config_at} is on no volume"));
    let cm_name =
        volume(m["name"].as_str().unwrap()).and_then(|v| v["configMap"]["name"].as_str()).expect("a ConfigMap");
    let cm =
        named(&docs, "ConfigMap", cm_name).unwrap_or_else(|| panic!("ConfigMap {cm_name} is not in the manifests"));
    let toml = cm["data"][key.to_str().unwrap()].as_str().unwrap_or_else(|| panic!("{cm_name} has no key {key:?}"));
    let cfg = weir_serve::Config::parse(&config_path, toml).unwrap_or_else(|e| panic!("{cm_name}'s serve.toml: {e}"));

    // Ports: serve.toml's listen = the container's port = the probes' = the Service's target.
    let port: u64 = cfg.listen.rsplit(':').next().unwrap().parse().unwrap();
    let ports = c["ports"].as_array().cloned().unwrap_or_default();
    let container_port = |p: &Value| -> Option<u64> {
        p.as_u64().or_else(|| ports.iter().find(|x| x["name"] == *p).and_then(|x| x["containerPort"].as_u64()))
    };
    assert!(ports.iter().any(|p| p["containerPort"].as_u64() == Some(port)), "no container port {port}");
    let scheme = if cfg.tls_cert.is_some() { "HTTPS" } else { "HTTP" };
    for probe in ["readinessProbe", "livenessProbe"] {
        let g = &c[probe]["httpGet"];
        assert_eq!(g["path"], "/healthz", "{probe}");
        assert_eq!(container_port(&g["port"]), Some(port), "{probe}");
        assert_eq!(g["scheme"].as_str().unwrap_or("HTTP"), scheme, "{probe}");
    }
    let labels = &server["spec"]["template"]["metadata"]["labels"];
    assert!(labels.is_object(), "the pod template has no labels");
    let services: Vec<&Value> = docs
        .iter()
        .map(|(_, v)| v)
        .filter(|v| {
            v["kind"] == "Service"
                && v["spec"]["selector"].as_object().is_some_and(|s| s.iter().all(|(k, val)| labels[k] == *val))
        })
        .collect();
    assert_eq!(services.len(), 1, "one Service selects the server's pods");
    let sports = services[0]["spec"]["ports"].as_array().unwrap();
    assert!(!sports.is_empty());
    for p in sports {
        let target = if p["targetPort"].is_null() { &p["port"] } else { &p["targetPort"] };
        assert_eq!(container_port(target), Some(port), "Service port {p}");
    }

    // The TLS files are keys of a mounted Secret; the state directory is on a claim.
    for file in [cfg.tls_cert.clone(), cfg.tls_key.clone()].into_iter().flatten() {
        let (m, key) = mount_of(&mounts, &file).unwrap_or_else(|| panic!("{} is on no volume", file.display()));
        let secret = volume(m["name"].as_str().unwrap()).and_then(|v| v["secret"]["secretName"].as_str());
        let secret = secret.unwrap_or_else(|| panic!("{} is not on a Secret volume", file.display()));
        let doc = named(&docs, "Secret", secret).unwrap_or_else(|| panic!("Secret {secret} is not in the manifests"));
        assert!(keys(doc).contains(&key.display().to_string()), "Secret {secret} has no key {key:?}");
    }
    let (m, _) = mount_of(&mounts, &cfg.state_dir).expect("state_dir is on no volume");
    let vname = m["name"].as_str().unwrap();
    assert!(
        claims.iter().any(|c| c == vname) || volume(vname).is_some_and(|v| v["persistentVolumeClaim"].is_object()),
        "state_dir {} is on volume {vname}, not a PersistentVolumeClaim",
        cfg.state_dir.display()
    );
    assert!(m["readOnly"] != true, "state_dir is mounted read-only");

    // Every Secret and ConfigMap a workload names exists.
    let mut refs: BTreeMap<String, &str> = BTreeMap::new();
    for w in &workloads {
        collect_refs(w, &mut refs);
    }
    assert!(refs.len() >= 2, "{refs:?}");
    for (name, kind) in refs {
        assert!(named(&docs, kind, &name).is_some(), "{kind} {name} is named but not in the manifests");
    }
}

/// Names of the Secrets and ConfigMaps that `v` refers to (volumes, env,
/// envFrom, projected sources), anywhere in it.
fn collect_refs(v: &Value, out: &mut BTreeMap<String, &'static str>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                match k.as_str() {
                    "secret" if x["secretName"].is_string() => {
                        out.insert(x["secretName"].as_str().unwrap().into(), "Secret");
                    }
                    "secretKeyRef" | "secretRef" if x["name"].is_string() => {
                        out.insert(x["name"].as_str().unwrap().into(), "Secret");
                    }
                    "configMap" | "configMapKeyRef" | "configMapRef" if x["name"].is_string() => {
                        out.insert(x["name"].as_str().unwrap().into(), "ConfigMap");
                    }
                    _ => {}
                }
                collect_refs(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}
