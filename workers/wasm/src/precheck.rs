//! A cheap parse of a module before anything compiles it: the section headers and each
//! function body's size, nothing more (linear in the module's size, no validation). It refuses
//! what host ABI v0 cannot serve (a 64-bit memory or table) and what would make compilation
//! expensive (too many functions, an oversized function body), each with the number that
//! failed. The compile deadline in `engine.rs` is the backstop for what these limits do not
//! foresee.

use wasmparser::{Parser, Payload, TypeRef};

use crate::{LoadError, MAX_FUNCTIONS, MAX_FUNCTION_BODY_BYTES};

/// Checks `module`'s shape; `plugin` names it in errors.
pub(crate) fn precheck(plugin: &str, module: &[u8]) -> Result<(), LoadError> {
    let invalid = |e: wasmparser::BinaryReaderError| LoadError::Invalid {
        plugin: plugin.to_owned(),
        reason: e.to_string(),
    };
    let refused = |reason: String| LoadError::Shape {
        plugin: plugin.to_owned(),
        reason,
    };
    let wide = |what: &str| {
        refused(format!(
            "a 64-bit {what} (memory64); host ABI v0 passes 32-bit pointers, so modules must \
             use 32-bit memories and tables"
        ))
    };
    let too_many = |n: u64| {
        refused(format!(
            "{n} functions, over the limit of {MAX_FUNCTIONS} (compiling is work in proportion \
             to them); split the plugin or drop unused code"
        ))
    };
    let mut functions: u64 = 0;
    for payload in Parser::new(0).parse_all(module) {
        match payload.map_err(invalid)? {
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    match import.map_err(invalid)?.ty {
                        TypeRef::Memory(m) if m.memory64 => return Err(wide("memory")),
                        TypeRef::Table(t) if t.table64 => return Err(wide("table")),
                        TypeRef::Func(_) | TypeRef::FuncExact(_) => functions += 1,
                        _ => {}
                    }
                }
            }
            Payload::MemorySection(reader) => {
                for m in reader {
                    if m.map_err(invalid)?.memory64 {
                        return Err(wide("memory"));
                    }
                }
            }
            Payload::TableSection(reader) => {
                for t in reader {
                    if t.map_err(invalid)?.ty.table64 {
                        return Err(wide("table"));
                    }
                }
            }
            Payload::FunctionSection(reader) => {
                functions += u64::from(reader.count());
            }
            Payload::CodeSectionStart { count, .. } => {
                functions = functions.max(u64::from(count));
            }
            Payload::CodeSectionEntry(body) => {
                let size = body.range().len();
                if size > MAX_FUNCTION_BODY_BYTES {
                    return Err(refused(format!(
                        "a function body of {size} bytes, over the limit of \
                         {MAX_FUNCTION_BODY_BYTES} bytes"
                    )));
                }
            }
            _ => {}
        }
        if functions > MAX_FUNCTIONS as u64 {
            return Err(too_many(functions));
        }
    }
    Ok(())
}
