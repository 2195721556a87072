//! The Kubernetes manifests of `deploy/kubernetes/` against the server
//! they deploy: every file parses (YAML, each document with a kind and a
//! name), the ConfigMap's serve.toml loads with `weir serve`'s own parser,
//! the container's arguments are flags `weir serve --help` lists, the
//! container port, the probes and the Service's targetPort are the port
//! serve.toml listens on, the TLS files and the state directory are on
//! mounted volumes (the TLS files as keys of the mounted Secret), and every
//! Secret and ConfigMap a workload names is one of the manifests. The
//! executors' Deployment against the server's `cluster[N]`: its arguments
//! pass the real `weir executor` parser, `--driver` names the Service of
//! `cluster_listen`'s port, `--secret-file` is `cluster_secret_file`'s path,
//! on the same Secret's key as the server's, and its replicas are N.

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

/// The workloads (StatefulSets, Deployments) whose container runs `weir
/// COMMAND` (its first argument is `command`).
fn workload<'a>(docs: &'a [(String, Value)], command: &str) -> Vec<&'a Value> {
    docs.iter()
        .map(|(_, v)| v)
        .filter(|v| v["kind"] == "StatefulSet" || v["kind"] == "Deployment")
        .filter(|w| {
            str_list(&w["spec"]["template"]["spec"]["containers"][0]["args"]).first().is_some_and(|a| a == command)
        })
        .collect()
}

/// The value of flag `flag` in `args` (`--flag VALUE` or `--flag=VALUE`).
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let eq = format!("{flag}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&eq).map(String::from)
        }
    })
}

/// The Secret (its name and key) that holds `file` in `pod`'s container 0,
/// checked to be one of the manifests with that key.
fn secret_holding(docs: &[(String, Value)], pod: &Value, file: &Path) -> (String, String) {
    let mounts = pod["containers"][0]["volumeMounts"].as_array().cloned().unwrap_or_default();
    let (m, key) = mount_of(&mounts, file).unwrap_or_else(|| panic!("{} is on no volume", file.display()));
    let volume = pod["volumes"].as_array().and_then(|vs| vs.iter().find(|v| v["name"] == m["name"]));
    let secret = volume.and_then(|v| v["secret"]["secretName"].as_str());
    let secret = secret.unwrap_or_else(|| panic!("{} is not on a Secret volume", file.display()));
    let doc = named(docs, "Secret", secret).unwrap_or_else(|| panic!("Secret {secret} is not in the manifests"));
    let key = key.display().to_string();
    assert!(keys(doc).contains(&key), "Secret {secret} has no key {key:?}");
    (secret.to_string(), key)
}

/// The Services whose selector matches the pods of `workload`.
fn services_of<'a>(docs: &'a [(String, Value)], workload: &Value) -> Vec<&'a Value> {
    let labels = &workload["spec"]["template"]["metadata"]["labels"];
    assert!(labels.is_object(), "the pod template has no labels");
    docs.iter()
        .map(|(_, v)| v)
        .filter(|v| {
            v["kind"] == "Service"
                && v["spec"]["selector"].as_object().is_some_and(|s| s.iter().all(|(k, val)| labels[k] == *val))
        })
        .collect()
}

/// The container port `p` (a number or a port name) of `container`.
fn container_port(container: &Value, p: &Value) -> Option<u64> {
    let ports = container["ports"].as_array()?;
    p.as_u64().or_else(|| ports.iter().find(|x| x["name"] == *p).and_then(|x| x["containerPort"].as_u64()))
}

/// The server's serve.toml, from the ConfigMap its `--config` names.
fn serve_config(docs: &[(String, Value)], server: &Value) -> weir_serve::Config {
    let pod = &server["spec"]["template"]["spec"];
    let volumes = pod["volumes"].as_array().cloned().unwrap_or_default();
    let mounts = pod["containers"][0]["volumeMounts"].as_array().cloned().unwrap_or_default();
    let args = str_list(&pod["containers"][0]["args"]);
    let config_at = flag_value(&args, "--config").expect("--config");
    let config_path = PathBuf::from(&config_at);
    let (m, key) = mount_of(&mounts, &config_path).unwrap_or_else(|| panic!("{config_at} is on no volume"));
    let cm_name = volumes
        .iter()
        .find(|v| v["name"] == m["name"])
        .and_then(|v| v["configMap"]["name"].as_str())
        .expect("a ConfigMap");
    let cm = named(docs, "ConfigMap", cm_name).unwrap_or_else(|| panic!("ConfigMap {cm_name} is not in the manifests"));
    let toml = cm["data"][key.to_str().unwrap()].as_str().unwrap_or_else(|| panic!("{cm_name} has no key {key:?}"));
    weir_serve::Config::parse(&config_path, toml).unwrap_or_else(|e| panic!("{cm_name}'s serve.toml: {e}"))
}

#[test]
fn serve_kubernetes_manifests_match_the_server() {
    let docs = manifests();
    let workloads: Vec<&Value> =
        docs.iter().map(|(_, v)| v).filter(|v| v["kind"] == "StatefulSet" || v["kind"] == "Deployment").collect();
    let servers = workload(&docs, "serve");
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
    // mounted ConfigMap (whose serve.toml loads).
    let args = str_list(&c["args"]);
    let flags = serve_flags();
    assert!(flags.contains(&"--config".to_string()), "{flags:?}");
    for a in args.iter().filter(|a| a.starts_with("--")) {
        let flag = a.split('=').next().unwrap();
        assert!(flags.iter().any(|f| f == flag), "{a} is not a flag of weir serve ({flags:?})");
    }
    let cfg = serve_config(&docs, server);

    // Ports: serve.toml's listen = the container's port = the probes' = the Service's target.
    let port: u64 = cfg.listen.rsplit(':').next().unwrap().parse().unwrap();
    let ports = c["ports"].as_array().cloned().unwrap_or_default();
    let container_port = |p: &Value| container_port(c, p);
    assert!(ports.iter().any(|p| p["containerPort"].as_u64() == Some(port)), "no container port {port}");
    let scheme = if cfg.tls_cert.is_some() { "HTTPS" } else { "HTTP" };
    for probe in ["readinessProbe", "livenessProbe"] {
        let g = &c[probe]["httpGet"];
        assert_eq!(g["path"], "/healthz", "{probe}");
        assert_eq!(container_port(&g["port"]), Some(port), "{probe}");
        assert_eq!(g["scheme"].as_str().unwrap_or("HTTP"), scheme, "{probe}");
    }
    // Every port of a Service of the server's pods is the API's or the
    // executors' (cluster_listen's), and some Service has the API's.
    let cluster_port: Option<u64> = cfg.cluster_listen.as_ref().map(|l| l.rsplit(':').next().unwrap().parse().unwrap());
    let mut api_served = false;
    for svc in services_of(&docs, server) {
        let sports = svc["spec"]["ports"].as_array().unwrap();
        assert!(!sports.is_empty(), "{svc}");
        for p in sports {
            let target = if p["targetPort"].is_null() { &p["port"] } else { &p["targetPort"] };
            let to = container_port(target);
            assert!(to.is_some() && (to == Some(port) || to == cluster_port), "Service port {p} is not the server's");
            api_served |= to == Some(port);
        }
    }
    assert!(api_served, "no Service reaches the API's port {port}");

    // The TLS files are keys of a mounted Secret; the state directory is on a claim.
    for file in [cfg.tls_cert.clone(), cfg.tls_key.clone()].into_iter().flatten() {
        secret_holding(&docs, pod, &file);
    }
    let (m, _) = mount_of(&mounts, &cfg.state_dir).expect("state_dir is on no volume");
    let vname = m["name"].as_str().unwrap();
    assert!(
        claims.iter().any(|c| c == vname) || volume(vname).is_some_and(|v| v["persistentVolumeClaim"].is_object()),
        "state_dir {} is on volume {vname}, not a PersistentVolumeClaim",
        cfg.state_dir.display()
    );
    assert!(m["readOnly"] != true, "state_dir is mounted read-only");
    cache_is_writable(c);

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

/// The executors' Deployment joins the server the manifests deploy: the
/// server's master is `cluster[N]` with N the executors' replicas; the
/// executors' arguments pass the real `weir executor` parser; `--driver`
/// is HOST:PORT where HOST is a Service of the server's pods (not of the
/// executors') whose PORT reaches the container port of `cluster_listen`;
/// `--secret-file` is `cluster_secret_file`'s path, on a key of the same
/// Secret the server mounts there; the executor pods run as the server's
/// do (non-root, read-only root file system, a memory limit), with their
/// compiled-code cache on a writable volume.
#[test]
fn serve_kubernetes_executors_join_the_server() {
    let docs = manifests();
    let server = workload(&docs, "serve")[0];
    let cfg = serve_config(&docs, server);
    let executors = workload(&docs, "executor");
    assert_eq!(executors.len(), 1, "one workload runs `weir executor`");
    let exec = executors[0];
    let Ok(weir::scheduler::Master::Cluster { executors: n }) = cfg.master.parse() else {
        panic!("serve.toml's master {:?} is not cluster[N]: the executors would not be used", cfg.master)
    };
    assert_eq!(exec["spec"]["replicas"].as_u64(), Some(u64::from(n)), "cluster[{n}] and the executors' replicas");

    // The arguments pass `weir executor`'s own parser: run as they are
    // (here, without the mounted Secret), the executor gets as far as
    // reading the secret file, so clap accepted every flag and value.
    let pod = &exec["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(str_list(&c["command"]), ["weir"], "the container runs weir");
    let args = str_list(&c["args"]);
    let secret_file = PathBuf::from(flag_value(&args, "--secret-file").expect("--secret-file"));
    assert!(!secret_file.exists(), "{} exists on this machine: the parse check needs it absent", secret_file.display());
    let out = run(weir().args(&args).env_remove("WEIR_SECRET"));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "weir {args:?}: {err}");
    assert!(
        err.contains("reading the cluster secret") && err.contains(&secret_file.display().to_string()),
        "weir {args:?} failed before reading its secret: {err}"
    );

    // --driver: a Service of the server's pods, on the port of cluster_listen.
    let listen = cfg.cluster_listen.as_deref().expect("cluster[N] has cluster_listen");
    let cluster_port: u64 = listen.rsplit(':').next().unwrap().parse().unwrap();
    let server_c = &server["spec"]["template"]["spec"]["containers"][0];
    let server_ports = server_c["ports"].as_array().cloned().unwrap_or_default();
    assert!(
        server_ports.iter().any(|p| p["containerPort"].as_u64() == Some(cluster_port)),
        "the server's container does not declare cluster_listen's port {cluster_port}"
    );
    let drivers = flag_value(&args, "--driver").expect("--driver");
    assert!(!drivers.is_empty());
    for driver in drivers.split(',') {
        let (host, port) = driver.rsplit_once(':').unwrap_or_else(|| panic!("--driver {driver} is not HOST:PORT"));
        let port: u64 = port.parse().unwrap_or_else(|_| panic!("--driver {driver}: the port is not a number"));
        // `svc`, or `svc.namespace[.svc.cluster.local]`.
        let svc_name = host.split('.').next().unwrap();
        let svc = services_of(&docs, server)
            .into_iter()
            .find(|s| s["metadata"]["name"] == svc_name)
            .unwrap_or_else(|| panic!("--driver {driver}: {svc_name} is not a Service of the server's pods"));
        let p = svc["spec"]["ports"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["port"].as_u64() == Some(port)))
            .unwrap_or_else(|| panic!("--driver {driver}: Service {svc_name} has no port {port}"));
        let target = if p["targetPort"].is_null() { &p["port"] } else { &p["targetPort"] };
        assert_eq!(
            container_port(server_c, target),
            Some(cluster_port),
            "--driver {driver}: Service {svc_name}'s port {port} does not reach cluster_listen's port"
        );
    }
    assert!(services_of(&docs, exec).is_empty(), "a Service selects the executors' pods (the server's labels?)");

    // The secret: the same path as serve.toml's cluster_secret_file, on a
    // key of the same Secret as the server's.
    let server_secret = cfg.cluster_secret_file.as_deref().expect("cluster[N] has cluster_secret_file");
    assert_eq!(secret_file, server_secret, "--secret-file and serve.toml's cluster_secret_file");
    let theirs = secret_holding(&docs, pod, &secret_file);
    let ours = secret_holding(&docs, &server["spec"]["template"]["spec"], server_secret);
    assert_eq!(theirs, ours, "the executors and the server mount different secrets");

    // Run as the server's pods do.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert!(str_list(&c["securityContext"]["capabilities"]["drop"]).contains(&"ALL".to_string()));
    assert!(c["resources"]["limits"]["memory"].is_string(), "no memory limit");
    assert!(c["resources"]["requests"]["cpu"].is_string(), "no CPU request");
    cache_is_writable(c);
}

/// A container with a read-only root file system has its compiled-code
/// cache (`WEIR_CACHE_DIR`) on a volume it may write (else every start
/// compiles every module again, and the cache's writes fail).
fn cache_is_writable(c: &Value) {
    let name = c["name"].as_str().unwrap_or("?");
    let env = c["env"].as_array().cloned().unwrap_or_default();
    let mounts = c["volumeMounts"].as_array().cloned().unwrap_or_default();
    let cache = env.iter().find(|e| e["name"] == "WEIR_CACHE_DIR").and_then(|e| e["value"].as_str());
    let Some(cache) = cache else {
        assert!(
            c["securityContext"]["readOnlyRootFilesystem"] != true,
            "container {name}: a read-only root file system and no WEIR_CACHE_DIR"
        );
        return;
    };
    let (m, _) = mount_of(&mounts, Path::new(cache))
        .unwrap_or_else(|| panic!("container {name}: WEIR_CACHE_DIR {cache} is on no volume"));
    assert!(m["readOnly"] != true, "container {name}: WEIR_CACHE_DIR {cache} is mounted read-only");
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
