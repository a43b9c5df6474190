//! Tool names on the wire. Both families accept only `[A-Za-z0-9_-]{1,64}` as a tool's
//! name, and Loong's tools are named `file.read` or `PLUGIN/TOOL`. Each request maps every
//! offered name to a wire name (other characters become `_`, cut to 64 bytes, a suffix
//! `_2`, `_3`… where two would collide) and maps the model's calls back. A name the model
//! invents that maps to no offered tool comes back as the model wrote it, and the loop
//! answers it as not offered.

use std::collections::HashMap;

use crate::types::ToolSpec;

/// The longest tool name either family accepts.
pub const MAX_WIRE_NAME_BYTES: usize = 64;

/// The names of one request's offered tools, both ways.
#[derive(Debug, Clone, Default)]
pub struct ToolNames {
    to_wire: HashMap<String, String>,
    from_wire: HashMap<String, String>,
}

fn sanitize(name: &str) -> String {
    let mut wire: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    wire.truncate(MAX_WIRE_NAME_BYTES);
    if wire.is_empty() {
        wire.push_str("tool");
    }
    wire
}

impl ToolNames {
    /// The mapping for `tools`, in order (a name that is already a wire name keeps itself
    /// unless an earlier tool took it).
    pub fn new(tools: &[ToolSpec]) -> Self {
        let mut names = Self::default();
        for tool in tools {
            if names.to_wire.contains_key(&tool.name) {
                continue;
            }
            let base = sanitize(&tool.name);
            let mut wire = base.clone();
            let mut n = 1u32;
            while names.from_wire.contains_key(&wire) {
                n += 1;
                let suffix = format!("_{n}");
                let mut stem = base.clone();
                stem.truncate(MAX_WIRE_NAME_BYTES - suffix.len());
                wire = stem + &suffix;
            }
            names.to_wire.insert(tool.name.clone(), wire.clone());
            names.from_wire.insert(wire, tool.name.clone());
        }
        names
    }

    /// The wire name of `name` (an offered tool's mapped name; any other name sanitized, as
    /// an earlier call to it in the history must still be a valid name).
    pub fn wire(&self, name: &str) -> String {
        self.to_wire
            .get(name)
            .cloned()
            .unwrap_or_else(|| sanitize(name))
    }

    /// The tool a wire name stands for (itself when it stands for none).
    pub fn real(&self, wire: &str) -> String {
        self.from_wire
            .get(wire)
            .cloned()
            .unwrap_or_else(|| wire.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str) -> ToolSpec {
        ToolSpec {
            name: name.into(),
            description: String::new(),
            parameters: serde_json::json!({}),
        }
    }

    #[test]
    fn names_map_to_valid_wire_names_and_back_without_collisions() {
        let long = "p/".to_owned() + &"x".repeat(100);
        let tools = [
            tool("shell.exec"),
            tool("shell_exec"),
            tool("files/read_text_file"),
            tool(&long),
            tool("ok-name"),
        ];
        let names = ToolNames::new(&tools);
        let wires: Vec<String> = tools.iter().map(|t| names.wire(&t.name)).collect();
        assert_eq!(wires[0], "shell_exec");
        assert_eq!(wires[1], "shell_exec_2");
        assert_eq!(wires[2], "files_read_text_file");
        assert_eq!(wires[3].len(), MAX_WIRE_NAME_BYTES);
        assert_eq!(wires[4], "ok-name");
        for (tool, wire) in tools.iter().zip(&wires) {
            assert!(
                wire.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
                "{wire}"
            );
            assert_eq!(names.real(wire), tool.name);
        }
        // A name the model invents stands for no tool.
        assert_eq!(names.real("rm_rf"), "rm_rf");
        assert_eq!(names.wire("not.offered"), "not_offered");
        assert_eq!(ToolNames::new(&[tool("")]).wire(""), "tool");
    }
}
