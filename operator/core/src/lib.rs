//! The pure half of the Ferry operator. Nothing here does I/O: the crate depends on kube's types
//! and derive macros only (no client, no runtime), and on no HTTP or gRPC crate, so a decision that
//! reaches for the network does not compile.
//!
//! Layers, lowest first. A module imports only from the layers below it (the test
//! `every_module_imports_only_from_the_layers_below_it` checks this):
//! 1. [`keys`]: labels, annotations, field managers, hash lengths, derived names.
//! 2. [`crd`]: the API types; the CRD is generated from them.
//! 3. [`validation`]: checks the CRD schema cannot express.
//! 4. [`dependencies`]: the `dependsOn` gate.
//! 5. [`desired`]: pure builders, `MicroService` → desired child objects.
//! 6. [`drift`]: whether an observed child still carries what the operator applied.
//! 7. [`status`]: conditions (assembled in one place), phase, events, reasons.
//! 8. [`rollout`]: the blue-green decision (a state machine in named steps) and check bookkeeping.
//! 9. [`plan`]: `plan(observed, now)`: every write, the next status, the events, the due checks and
//!    the requeue of one reconcile.

pub mod keys;

pub mod crd;

pub mod validation;

pub mod dependencies;

pub mod desired;

pub mod drift;

pub mod status;

pub mod rollout;

pub mod plan;

#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use std::path::{Path, PathBuf};

    /// The layers of the crate, lowest first.
    const LAYERS: [&str; 9] =
        ["keys", "crd", "validation", "dependencies", "desired", "drift", "status", "rollout", "plan"];

    fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// The top-level module a source file belongs to (`src/rollout/machine.rs` → `rollout`).
    fn layer_of(src: &Path, file: &Path) -> Option<usize> {
        let rel = file.strip_prefix(src).ok()?;
        let first = rel.components().next()?.as_os_str().to_str()?;
        let module = first.trim_end_matches(".rs");
        LAYERS.iter().position(|l| *l == module)
    }

    /// The top-level modules a piece of code names through `crate::` (in `use` trees and paths).
    fn crate_modules(code: &str) -> Vec<String> {
        let mut found = Vec::new();
        let compact: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        for (i, _) in compact.match_indices("crate::") {
            let rest = &compact[i + "crate::".len()..];
            if let Some(tree) = rest.strip_prefix('{') {
                // `crate::{a::x, b, c::{..}}`: the first segment of each top-level item.
                let (mut depth, mut item) = (0usize, String::new());
                for c in tree.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            found.push(item.split("::").next().unwrap_or_default().to_string());
                            item.clear();
                            continue;
                        }
                        _ => {}
                    }
                    if depth == 0 {
                        item.push(c);
                    }
                }
                found.push(item.split("::").next().unwrap_or_default().to_string());
            } else {
                let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
                found.push(rest[..end].to_string());
            }
        }
        found.retain(|m| !m.is_empty());
        found
    }

    #[test]
    fn every_module_imports_only_from_the_layers_below_it() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        let mut upward = Vec::new();
        for file in files {
            let Some(own) = layer_of(&src, &file) else {
                continue;
            };
            let text = std::fs::read_to_string(&file).expect("read");
            // NB: test modules may build fixtures from any layer; only the code itself is layered.
            let code: String = text
                .split("#[cfg(test)]")
                .next()
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            for module in crate_modules(&code) {
                if LAYERS.iter().position(|l| *l == module).is_some_and(|l| l > own) {
                    upward.push(format!("{} uses {module}", file.display()));
                }
            }
        }
        assert!(upward.is_empty(), "imports against the layering: {upward:#?}");
    }

    #[test]
    fn the_import_scan_sees_use_trees_and_paths() {
        let code =
            "use crate::{\n keys::A,\n desired::{self, x},\n status,\n};\nlet x = crate::plan::plan();";
        assert_eq!(crate_modules(code), ["keys", "desired", "status", "plan"]);
    }
}
