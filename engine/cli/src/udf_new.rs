//! `weir udf new LANG NAME`: writes a ready-to-build UDF project (a
//! WordCount: split, pair, sum) with its build script, a job that uses it and
//! a README that says how to build, check, call and run it. The templates
//! are the files under `engine/cli/templates/`, compiled into the binary.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;

use crate::cli::print_out;

/// The languages `weir udf new` has a template for.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    /// Rust with the weir-udf SDK (wasm32-unknown-unknown).
    Rust,
    /// Freestanding C with weir_abi.h (clang --target=wasm32).
    C,
    /// AssemblyScript with weir-udf-assemblyscript (npm's assemblyscript).
    Assemblyscript,
    /// Zig with udf-sdk/zig/weir.zig (PyPI's ziglang).
    Zig,
    /// Python with weir_udf, a component of ABI v2 (PyPI's componentize-py).
    Python,
    /// JavaScript (or TypeScript) with weir-udf, a component of ABI v2
    /// (npm's componentize-js).
    #[value(alias = "javascript")]
    Js,
}

/// The Rust SDK this binary was built from, when it is still there.
const BUILT_FROM_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../udf-sdk");

const RUST_CARGO: &str = include_str!("../templates/rust/Cargo.toml.in");
const RUST_LIB: &str = include_str!("../templates/rust/lib.rs.in");
const RUST_BUILD: &str = include_str!("../templates/rust/build.sh.in");
const C_SOURCE: &str = include_str!("../templates/c/udf.c.in");
const C_BUILD: &str = include_str!("../templates/c/build.sh.in");
/// The header is the repository's own, so a template never lags behind it.
const C_HEADER: &str = include_str!("../../../udfs/c/weir_abi.h");
const AS_SOURCE: &str = include_str!("../templates/assemblyscript/udf.ts.in");
const AS_EXPORTS: &str = include_str!("../templates/assemblyscript/exports.in");
const AS_BUILD: &str = include_str!("../templates/assemblyscript/build.sh.in");
const ZIG_SOURCE: &str = include_str!("../templates/zig/udf.zig.in");
const ZIG_BUILD: &str = include_str!("../templates/zig/build.sh.in");
const PY_SOURCE: &str = include_str!("../templates/python/udf.py.in");
const PY_BUILD: &str = include_str!("../templates/python/build.sh.in");
const JS_SOURCE: &str = include_str!("../templates/js/udf.js.in");
const JS_BUILD: &str = include_str!("../templates/js/build.sh.in");
const JOB: &str = include_str!("../templates/job.toml.in");
const README: &str = include_str!("../templates/README.md.in");

/// `weir udf new LANG NAME [--dir DIR] [--sdk PATH]`.
pub fn new(lang: Lang, name: &str, dir: Option<&Path>, sdk: Option<&Path>) -> Result<ExitCode> {
    check_name(name)?;
    let dir: PathBuf = dir.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() && std::fs::read_dir(&dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} already exists and is not empty; choose another NAME or --dir", dir.display());
    }
    // The module file a build produces: Cargo turns '-' into '_'.
    let module = format!("{}.wasm", name.replace('-', "_"));
    let (build_cmd, files): (&str, Vec<(String, String)>) = match lang {
        Lang::Rust => {
            let sdk = find_sdk(sdk, "Cargo.toml")?;
            // A TOML basic string: escape what would end or break it.
            let sdk_toml = sdk.display().to_string().replace('\\', "\\\\").replace('"', "\\\"");
            let cargo = RUST_CARGO.replace("{{name}}", name).replace("{{sdk}}", &sdk_toml);
            (
                "bash build.sh",
                vec![
                    ("Cargo.toml".into(), cargo),
                    ("src/lib.rs".into(), RUST_LIB.to_string()),
                    ("build.sh".into(), RUST_BUILD.replace("{{module}}", &module)),
                ],
            )
        }
        Lang::C => (
            "bash build.sh",
            vec![
                (format!("{name}.c"), C_SOURCE.to_string()),
                ("weir_abi.h".into(), C_HEADER.to_string()),
                ("build.sh".into(), C_BUILD.replace("{{name}}", name).replace("{{module}}", &module)),
            ],
        ),
        Lang::Zig => {
            let sdk = find_sdk(sdk, "zig/weir.zig")?;
            let ident = name.replace('-', "_");
            let build = ZIG_BUILD
                .replace("{{ident}}", &ident)
                .replace("{{module}}", &module)
                .replace("{{sdk}}", &shell_quoted(&sdk));
            ("bash build.sh", vec![(format!("{ident}.zig"), ZIG_SOURCE.to_string()), ("build.sh".into(), build)])
        }
        Lang::Python => {
            let sdk = find_sdk(sdk, "python/weir_udf/__init__.py")?;
            let ident = name.replace('-', "_");
            let build = PY_BUILD
                .replace("{{ident}}", &ident)
                .replace("{{module}}", &module)
                .replace("{{sdk}}", &shell_quoted(&sdk));
            ("bash build.sh", vec![(format!("{ident}.py"), PY_SOURCE.to_string()), ("build.sh".into(), build)])
        }
        Lang::Js => {
            let sdk = find_sdk(sdk, "js/build.mjs")?;
            let build = JS_BUILD
                .replace("{{name}}", name)
                .replace("{{module}}", &module)
                .replace("{{sdk}}", &shell_quoted(&sdk));
            ("bash build.sh", vec![(format!("{name}.js"), JS_SOURCE.to_string()), ("build.sh".into(), build)])
        }
        Lang::Assemblyscript => {
            let sdk = find_sdk(sdk, "assemblyscript/declare.cjs")?.join("assemblyscript");
            let sdk_sh = shell_quoted(&sdk);
            let build = AS_BUILD.replace("{{name}}", name).replace("{{module}}", &module).replace("{{sdk}}", &sdk_sh);
            (
                "bash build.sh",
                vec![
                    (format!("{name}.ts"), AS_SOURCE.to_string()),
                    (format!("{name}.exports"), AS_EXPORTS.to_string()),
                    ("build.sh".into(), build),
                ],
            )
        }
    };
    let lang_name = match lang {
        Lang::Rust => "Rust",
        Lang::C => "C",
        Lang::Assemblyscript => "AssemblyScript",
        Lang::Zig => "Zig",
        Lang::Python => "Python",
        Lang::Js => "JavaScript",
    };
    let common = [
        ("job.toml".to_string(), JOB.replace("{{name}}", &name.replace('-', "_")).replace("{{module}}", &module)),
        (
            "README.md".to_string(),
            README
                .replace("{{name}}", name)
                .replace("{{ident}}", &name.replace('-', "_"))
                .replace("{{lang}}", lang_name)
                .replace("{{module}}", &module)
                .replace("{{build}}", build_cmd),
        ),
        ("in/sample.txt".to_string(), "to be or not to be\nthat is the question\n".to_string()),
    ];
    for (rel, body) in files.into_iter().chain(common) {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))?;
    }
    print_out(&format!(
        "wrote the {lang_name} WordCount UDF project {dir}/\nnext:\n  cd {dir} && {build_cmd}\n  weir udf check {module}\n  weir udf call {module} split --input '[\"to be or not\"]'\n  weir run job.toml --clock logical --batches 1\n",
        dir = dir.display()
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// A path inside a double-quoted shell string: what would end it or expand
/// in it escaped.
fn shell_quoted(p: &Path) -> String {
    let mut out = String::new();
    for c in p.display().to_string().chars() {
        if matches!(c, '"' | '\\' | '$' | '`') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The repository's `udf-sdk/` directory: `--sdk`, or the one this binary
/// was built from; it must hold `marker`.
fn find_sdk(sdk: Option<&Path>, marker: &str) -> Result<PathBuf> {
    let sdk = sdk.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(BUILT_FROM_SDK));
    let sdk = sdk.canonicalize().with_context(|| {
        format!("the Weir UDF SDK is not at {}: pass --sdk (the repository's udf-sdk/ directory)", sdk.display())
    })?;
    if !sdk.join(marker).is_file() {
        bail!("{} holds no {marker}: --sdk must be the repository's udf-sdk/ directory", sdk.display());
    }
    Ok(sdk)
}

/// A name usable as a crate name, a C file name and a job module name.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !ok {
        bail!("{name:?} is not a usable name: 1 to 64 ASCII letters, digits, '_' or '-', starting with a letter");
    }
    Ok(())
}
