//! The config is plain data plus one validation pass that calls leaf helpers: every module
//! `src/config` uses is a leaf (it imports nothing of the crate), so no import circle can
//! run through the config. This reads the sources, so a new import breaks it at once.

use std::path::Path;

/// The modules the config may use, and their files.
const LEAVES: [(&str, &str); 4] = [
    ("crate::ident", "src/ident.rs"),
    ("crate::tls", "src/tls.rs"),
    ("crate::outbox::topic", "src/outbox/topic.rs"),
    ("crate::kafka::properties", "src/kafka/properties.rs"),
];

fn source(relative: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(relative))
        .unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// `crate::a::b` paths named in `text`, outside comments.
fn crate_paths(text: &str) -> Vec<String> {
    let mut paths = Vec::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
        for (start, _) in line.match_indices("crate::") {
            let rest = &line[start..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            paths.push(rest[..end].trim_end_matches(':').to_owned());
        }
    }
    paths
}

#[test]
fn the_config_uses_only_leaf_modules() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name == "tests.rs" {
            continue; // unit tests may use anything
        }
        let text = source(&format!("src/config/{name}"));
        for used in crate_paths(&text) {
            assert!(
                used.starts_with("crate::config")
                    || LEAVES.iter().any(|(module, _)| used.starts_with(module)),
                "src/config/{name} uses {used}, which is not a leaf module"
            );
        }
    }
}

#[test]
fn the_leaves_import_nothing_of_the_crate() {
    for (module, file) in LEAVES {
        let text = source(file);
        // A leaf's own unit tests may use the rest of the crate.
        let code = text.split("#[cfg(test)]").next().unwrap();
        let used = crate_paths(code);
        assert!(used.is_empty(), "{module} ({file}) uses {used:?}");
    }
}
