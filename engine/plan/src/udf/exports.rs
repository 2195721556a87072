//! The `weir:exports` custom section: how a module declares which plain
//! exports are UDFs, for toolchains that cannot emit `<kind>:<name>` export
//! names (AssemblyScript, Zig, some C set-ups). Byte-level description:
//! `docs/udf-abi.md`, §1.
//!
//! The section's bytes come from an untrusted module: the parser bounds the
//! total size, the number of entries and every name before it keeps
//! anything, and reports the first problem with its line number.

use super::abi::UdfKind;

/// The custom section's name.
pub const EXPORTS_SECTION: &str = "weir:exports";
/// Largest total size of all `weir:exports` sections of one module, in bytes.
pub const MAX_EXPORTS_SECTION_BYTES: usize = 64 * 1024;
/// Most declarations one module may make.
pub const MAX_DECLARED_EXPORTS: usize = 4096;
/// Longest export or function name in a declaration, in bytes.
pub const MAX_DECLARED_NAME: usize = 1024;

/// One declaration: export `export` is function `name` of kind `kind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredExport {
    pub export: String,
    pub kind: UdfKind,
    pub name: String,
}

/// Parses the concatenated contents of a module's `weir:exports` sections.
///
/// The text is UTF-8, one declaration per line (`\n`; a `\0` also ends a
/// line, so a C string's terminator is harmless):
///
/// ```text
/// # comment
/// split = flat_map          # export "split" is flat_map function "split"
/// wc_sum = reduce:sum       # export "wc_sum" is reduce function "sum"
/// ```
///
/// Blank lines and text after `#` are ignored; spaces and tabs around the
/// tokens are ignored. An export may be declared once; two declarations may
/// not name the same function with the same kind.
pub fn parse_exports_section(bytes: &[u8]) -> Result<Vec<DeclaredExport>, String> {
    if bytes.len() > MAX_EXPORTS_SECTION_BYTES {
        return Err(format!("{} bytes, over the limit of {MAX_EXPORTS_SECTION_BYTES}", bytes.len()));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 (at byte {})", e.valid_up_to()))?;
    let mut out: Vec<DeclaredExport> = Vec::new();
    for (i, raw) in text.split(['\n', '\0']).enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at = |what: String| format!("line {}: {what}", i + 1);
        if out.len() >= MAX_DECLARED_EXPORTS {
            return Err(at(format!("more than {MAX_DECLARED_EXPORTS} declarations")));
        }
        let Some((export, target)) = line.split_once('=') else {
            return Err(at(format!("expected `<export> = <kind>` or `<export> = <kind>:<name>`, found {line:?}")));
        };
        let (export, target) = (export.trim(), target.trim());
        let (kind, name) = match target.split_once(':') {
            Some((k, n)) => (k.trim(), n.trim()),
            None => (target, export),
        };
        for (what, s) in [("export name", export), ("function name", name)] {
            if s.is_empty() {
                return Err(at(format!("empty {what}")));
            }
            if s.len() > MAX_DECLARED_NAME {
                return Err(at(format!("{what} longer than {MAX_DECLARED_NAME} bytes")));
            }
            if s.chars().any(char::is_whitespace) {
                return Err(at(format!("{what} {s:?} contains whitespace")));
            }
        }
        let Ok(kind) = kind.parse::<UdfKind>() else {
            let known: Vec<&str> = UdfKind::ALL.iter().map(|k| k.as_str()).collect();
            return Err(at(format!("unknown function kind {kind:?} (known: {})", known.join(", "))));
        };
        if out.iter().any(|d| d.export == export) {
            return Err(at(format!("export {export:?} is declared twice")));
        }
        if out.iter().any(|d| d.name == name && d.kind == kind) {
            return Err(at(format!("{kind} function {name:?} is declared twice")));
        }
        out.push(DeclaredExport { export: export.into(), kind, name: name.into() });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_comments_renames_and_c_terminators() {
        let d = parse_exports_section(
            b"# wordcount\nsplit = flat_map\n\tpair=map # one per word\r\nwc_sum = reduce:sum\0\0",
        )
        .unwrap();
        let got: Vec<(&str, UdfKind, &str)> = d.iter().map(|d| (&*d.export, d.kind, &*d.name)).collect();
        assert_eq!(
            got,
            [("split", UdfKind::FlatMap, "split"), ("pair", UdfKind::Map, "pair"), ("wc_sum", UdfKind::Reduce, "sum")]
        );
        assert!(parse_exports_section(b"").unwrap().is_empty());
    }

    #[test]
    fn bad_sections_name_the_line_and_the_problem() {
        for (text, want) in [
            (&b"split = flat_map\npair"[..], "line 2: expected"),
            (b"split = flatmap", "unknown function kind \"flatmap\""),
            (b"= map", "empty export name"),
            (b"a = map:", "empty function name"),
            (b"a b = map", "contains whitespace"),
            (b"a = map\na = filter", "line 2: export \"a\" is declared twice"),
            (b"a = map:f\nb = map:f", "map function \"f\" is declared twice"),
            (b"a = map\xff", "not UTF-8"),
        ] {
            let e = parse_exports_section(text).unwrap_err();
            assert!(e.contains(want), "{:?}: {e}", String::from_utf8_lossy(text));
        }
        let big = vec![b'#'; MAX_EXPORTS_SECTION_BYTES + 1];
        assert!(parse_exports_section(&big).unwrap_err().contains("over the limit"));
        let long = format!("{} = map", "x".repeat(MAX_DECLARED_NAME + 1));
        assert!(parse_exports_section(long.as_bytes()).unwrap_err().contains("longer than"));
        let many: String = (0..=MAX_DECLARED_EXPORTS).map(|i| format!("f{i} = map\n")).collect();
        assert!(parse_exports_section(many.as_bytes()).unwrap_err().contains("more than 4096"));
    }
}
