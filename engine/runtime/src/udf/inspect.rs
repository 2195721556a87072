//! What a module is and what it would need, for `weir udf check`: whether it
//! is a core module or a component, every import (WASI or other) and whether
//! the host provides it, every export and its type, the exports that look
//! like UDFs but carry no kind, the `weir:exports` declarations, the linear
//! memory it asks for. Loading ([`UdfModule::load`](super::UdfModule::load))
//! stops at the first problem; this collects them all, so the user fixes a
//! module in one round.
//!
//! Everything read here comes from an untrusted file: the binary is parsed by
//! wasmparser (bounded by the module size limit), never executed.

use std::sync::Arc;

use wasmparser::{Encoding, Parser, Payload};
use wasmtime::{ExternType, Module};

use super::exports::{parse_exports_section, DeclaredExport, EXPORTS_SECTION, MAX_EXPORTS_SECTION_BYTES};
use super::{abi, to_binary, ModuleHash, UdfErrorKind, UdfRuntime};

/// The type every UDF export has.
pub const UDF_EXPORT_TYPE: &str = "func (i32, i32) -> i64";

/// True for the binary of a WebAssembly component (the header's layer field
/// is 1; a core module's is 0).
pub fn is_component(binary: &[u8]) -> bool {
    binary.len() >= 8 && binary.starts_with(b"\0asm") && binary[6..8] == [1, 0]
}

/// The `weir:exports` declarations of a core module's binary (all sections of
/// that name, concatenated in order, as linkers merge them).
pub fn declared_exports(binary: &[u8]) -> Result<Vec<DeclaredExport>, UdfErrorKind> {
    let mut text: Vec<u8> = Vec::new();
    for payload in Parser::new(0).parse_all(binary) {
        let payload = payload.map_err(|e| UdfErrorKind::Malformed(e.to_string()))?;
        if let Payload::CustomSection(r) = payload {
            if r.name() == EXPORTS_SECTION {
                if text.len() + r.data().len() > MAX_EXPORTS_SECTION_BYTES {
                    let m = format!("over the limit of {MAX_EXPORTS_SECTION_BYTES} bytes");
                    return Err(UdfErrorKind::ExportsSection(m));
                }
                text.extend_from_slice(r.data());
                text.push(b'\n');
            }
        }
    }
    parse_exports_section(&text).map_err(UdfErrorKind::ExportsSection)
}

/// An import of the module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportInfo {
    pub module: String,
    pub name: String,
    /// Its type, as wasmtime prints it (`func (i32, i32)`, ...).
    pub ty: String,
    /// Whether the host provides it (only `weir.log (i32, i32) -> ()` is).
    pub provided: bool,
}

impl ImportInfo {
    /// True for an import of a WASI interface (preview 1 or 2).
    pub fn is_wasi(&self) -> bool {
        self.module.starts_with("wasi_") || self.module.starts_with("wasi:")
    }
}

/// A component's imports and exports (its top level only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ComponentInfo {
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

/// What a module file holds.
#[derive(Debug, Clone)]
pub struct Report {
    /// Size of the binary (a `.wat` file: of what it assembles to).
    pub size: usize,
    pub hash: ModuleHash,
    /// Set for a component; the other fields are then empty.
    pub component: Option<ComponentInfo>,
    pub imports: Vec<ImportInfo>,
    /// Every export: name and type.
    pub exports: Vec<(String, String)>,
    /// Exports of the UDF type with no `<kind>:` prefix and no declaration:
    /// the host ignores them.
    pub unnamed: Vec<String>,
    /// The `weir:exports` declarations, or why the section is invalid.
    pub declared: Result<Vec<DeclaredExport>, String>,
    /// The linear memory: (initial, maximum) in 64 KiB pages.
    pub memory: Option<(u64, Option<u64>)>,
    /// How a core module's code was obtained (compiled now or from a cache,
    /// `udf/cache.rs`); loading it afterwards reuses that code. None for a
    /// component, which is inspected without compiling.
    pub compiled_from: Option<super::cache::CompiledFrom>,
}

/// Inspects a module's bytes (binary or WAT). Fails only when the bytes are
/// not WebAssembly at all or cannot be parsed.
pub fn inspect(runtime: &Arc<UdfRuntime>, bytes: &[u8]) -> Result<Report, UdfErrorKind> {
    let binary = to_binary(bytes)?;
    let mut report = Report {
        size: binary.len(),
        hash: ModuleHash::of(&binary),
        component: None,
        imports: Vec::new(),
        exports: Vec::new(),
        unnamed: Vec::new(),
        declared: Ok(Vec::new()),
        memory: None,
        compiled_from: None,
    };
    if is_component(&binary) {
        report.component = Some(component_info(&binary)?);
        return Ok(report);
    }
    report.declared = declared_exports(&binary).map_err(|e| match e {
        UdfErrorKind::ExportsSection(m) => m,
        other => other.to_string(),
    });
    // Through the process's compiled-code cache: loading the module next
    // (as `weir udf check` does) does not compile it again.
    let (module, from) = super::cache::compiled::<Module>(runtime.engine(), &runtime.modules, &binary, &report.hash)?;
    report.compiled_from = Some(from);
    for imp in module.imports() {
        let ty = type_string(&imp.ty());
        let provided = imp.module() == abi::IMPORT_MODULE && imp.name() == abi::IMPORT_LOG && ty == "func (i32, i32)";
        report.imports.push(ImportInfo { module: imp.module().into(), name: imp.name().into(), ty, provided });
    }
    let declared: &[DeclaredExport] = report.declared.as_deref().unwrap_or(&[]);
    for exp in module.exports() {
        let ty = exp.ty();
        if let ExternType::Memory(m) = &ty {
            if exp.name() == abi::EXPORT_MEMORY {
                report.memory = Some((m.minimum(), m.maximum()));
            }
        }
        let ty = type_string(&ty);
        let n = exp.name();
        let abi_name = [
            abi::EXPORT_MEMORY,
            abi::EXPORT_ALLOC,
            abi::EXPORT_VERSION,
            abi::EXPORT_INITIALIZE,
            abi::EXPORT_PARAMS,
            abi::EXPORT_BATCH_TIME,
        ]
        .contains(&n);
        if ty == UDF_EXPORT_TYPE && !abi_name && !n.contains(':') && !declared.iter().any(|d| d.export == n) {
            report.unnamed.push(n.to_string());
        }
        report.exports.push((n.to_string(), ty));
    }
    Ok(report)
}

fn component_info(binary: &[u8]) -> Result<ComponentInfo, UdfErrorKind> {
    let mut info = ComponentInfo::default();
    // Nested modules and components have their own imports: count the
    // nesting so only the top level's are listed.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(binary) {
        let payload = payload.map_err(|e| UdfErrorKind::Malformed(e.to_string()))?;
        match payload {
            Payload::Version { encoding: Encoding::Component | Encoding::Module, .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(r) if depth == 1 => {
                for imp in r {
                    let imp = imp.map_err(|e| UdfErrorKind::Malformed(e.to_string()))?;
                    info.imports.push(imp.name.name.to_string());
                }
            }
            Payload::ComponentExportSection(r) if depth == 1 => {
                for exp in r {
                    let exp = exp.map_err(|e| UdfErrorKind::Malformed(e.to_string()))?;
                    info.exports.push(exp.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    Ok(info)
}

/// `func (i32, i32) -> i64`, `memory`, `global`, `table`, `tag`.
fn type_string(ty: &ExternType) -> String {
    match ty {
        ExternType::Func(f) => {
            let params: Vec<String> = f.params().map(|p| p.to_string()).collect();
            let results: Vec<String> = f.results().map(|p| p.to_string()).collect();
            match results.len() {
                0 => format!("func ({})", params.join(", ")),
                1 => format!("func ({}) -> {}", params.join(", "), results[0]),
                _ => format!("func ({}) -> ({})", params.join(", "), results.join(", ")),
            }
        }
        ExternType::Memory(_) => "memory".into(),
        ExternType::Global(_) => "global".into(),
        ExternType::Table(_) => "table".into(),
        ExternType::Tag(_) => "tag".into(),
    }
}
