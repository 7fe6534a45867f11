//! The services init starts, read from `/etc/cellos/manifest.toml`.
//!
//! The image builder copies the repository's `os/manifest.toml` there; it also describes the
//! kernel, packages and files, which init ignores: only the `[[service]]` tables matter here.
//! A broken entry is dropped with a warning instead of failing the boot, and `after` edges
//! that name unknown services or form a cycle are reported and then ignored.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

/// Where the image builder puts the manifest.
pub const MANIFEST_PATH: &str = "/etc/cellos/manifest.toml";

/// One `[[service]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ServiceSpec {
    /// Unique name, used in log prefixes (`[name] `).
    pub name: String,
    /// Program and arguments; the program is looked up in `PATH` when it has no `/`.
    pub exec: Vec<String>,
    /// Extra environment, on top of init's and the `CELLOS_*` variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Services to start before this one.
    #[serde(default)]
    pub after: Vec<String>,
}

#[derive(Deserialize)]
struct ManifestFile {
    #[serde(default)]
    service: Vec<ServiceSpec>,
}

/// The manifest could not be used at all.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not valid TOML, or a `[[service]]` table of the wrong shape.
    #[error("cannot parse the manifest")]
    Parse(#[from] toml::de::Error),
}

/// Parse the manifest and return its services in start order, with warnings for entries that
/// were dropped or edges that were ignored.
pub fn parse(text: &str) -> Result<(Vec<ServiceSpec>, Vec<String>), ManifestError> {
    let file: ManifestFile = toml::from_str(text)?;
    Ok(order(file.service))
}

/// Order services so that each comes after those in its `after` list; ties keep file order.
fn order(services: Vec<ServiceSpec>) -> (Vec<ServiceSpec>, Vec<String>) {
    let mut warnings = Vec::new();
    let mut valid: Vec<ServiceSpec> = Vec::new();
    for s in services {
        if s.name.is_empty() || !matches!(s.exec.first(), Some(p) if !p.is_empty()) {
            warnings.push(format!(
                "service {:?} has no name or an empty exec, skipped",
                s.name
            ));
        } else if valid.iter().any(|v| v.name == s.name) {
            warnings.push(format!(
                "service {} is listed twice, the second is skipped",
                s.name
            ));
        } else {
            valid.push(s);
        }
    }
    let index: HashMap<String, usize> = valid
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.clone(), i))
        .collect();
    let mut deps: Vec<Vec<usize>> = Vec::with_capacity(valid.len());
    for s in &valid {
        let mut d = Vec::new();
        for a in &s.after {
            match index.get(a) {
                Some(&i) if a != &s.name => d.push(i),
                _ => warnings.push(format!(
                    "service {} is after unknown service {a}, ignored",
                    s.name
                )),
            }
        }
        deps.push(d);
    }
    // Repeatedly take the first (in file order) service whose deps are all placed.
    let mut placed = vec![false; valid.len()];
    let mut out_idx = Vec::with_capacity(valid.len());
    while out_idx.len() < valid.len() {
        let ready = (0..valid.len()).find(|&i| !placed[i] && deps[i].iter().all(|&d| placed[d]));
        let next = match ready {
            Some(i) => i,
            None => {
                // A cycle: break it at the first unplaced service in file order.
                let Some(i) = (0..valid.len()).find(|&i| !placed[i]) else {
                    break;
                };
                warnings.push(format!(
                    "service {} is part of an `after` cycle, starting it anyway",
                    valid[i].name
                ));
                i
            }
        };
        placed[next] = true;
        out_idx.push(next);
    }
    let mut slots: Vec<Option<ServiceSpec>> = valid.into_iter().map(Some).collect();
    let ordered = out_idx
        .into_iter()
        .filter_map(|i| slots.get_mut(i).and_then(Option::take))
        .collect();
    (ordered, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[ServiceSpec]) -> Vec<&str> {
        v.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn reads_services_and_ignores_other_keys() {
        let text = r#"
            [kernel]
            package = "linux-image-amd64"
            modules = ["btrfs"]

            [[service]]
            name = "cellosd"
            exec = ["/bin/cellosd", "--state", "/var/lib/cellos"]
            env = { RUST_LOG = "info" }
            after = ["shardd"]

            [[service]]
            name = "shardd"
            exec = ["/bin/shardd"]

            [[files]]
            src = "a"
        "#;
        let (services, warnings) = parse(text).expect("parses");
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(names(&services), vec!["shardd", "cellosd"]);
        assert_eq!(services[1].exec[2], "/var/lib/cellos");
        assert_eq!(
            services[1].env.get("RUST_LOG").map(String::as_str),
            Some("info")
        );
    }

    #[test]
    fn no_services_is_fine() {
        let (services, warnings) = parse("[kernel]\nx = 1\n").expect("parses");
        assert!(services.is_empty());
        assert!(warnings.is_empty());
    }

    #[test]
    fn bad_toml_is_an_error() {
        let err = parse("[[service]]\nname = 1\n").expect_err("bad");
        assert!(err.to_string().starts_with("cannot parse the manifest"));
    }

    fn spec(name: &str, after: &[&str]) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            exec: vec!["/bin/true".into()],
            env: BTreeMap::new(),
            after: after.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn order_respects_after_and_file_order() {
        let (o, w) = order(vec![
            spec("d", &["c"]),
            spec("a", &[]),
            spec("c", &["a", "b"]),
            spec("b", &[]),
        ]);
        assert!(w.is_empty());
        assert_eq!(names(&o), vec!["a", "b", "c", "d"]);
    }

    #[test]
    fn order_survives_cycles_unknowns_and_duplicates() {
        let mut empty = spec("e", &[]);
        empty.exec.clear();
        let (o, w) = order(vec![
            spec("x", &["y"]),
            spec("y", &["x"]),
            spec("z", &["ghost", "z"]),
            spec("z", &[]),
            empty,
        ]);
        assert_eq!(names(&o), vec!["z", "x", "y"]);
        assert_eq!(w.len(), 5, "{w:?}");
    }
}
