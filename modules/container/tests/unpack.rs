//! Layers applied onto a root: changesets (whiteouts, opaque directories) and
//! hostile entries, each refused with a reason or kept inside the root, with a
//! marker file outside the root that must never change.

mod support;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use cellos_container::unpack::{apply_layer, UnpackLimits};
use cellos_container::{Compression, ContainerError};
use support::{layer, tar, Entry};

/// A scratch directory with `root/` to unpack into and `marker` beside it.
struct Scene {
    dir: tempfile::TempDir,
}

const MARKER: &str = "untouched";

impl Scene {
    fn new() -> Scene {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("root")).expect("root");
        std::fs::write(dir.path().join("marker"), MARKER).expect("marker");
        Scene { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn marker(&self) -> PathBuf {
        self.dir.path().join("marker")
    }

    fn apply(&self, entries: &[Entry], compression: Compression) -> Result<(), ContainerError> {
        let (blob, l) = layer(&tar(entries), compression);
        apply_layer(&self.root(), &l, blob.as_slice(), &UnpackLimits::default()).map(|_| ())
    }

    /// The marker outside the root is as it was, and has no second name.
    fn assert_outside_untouched(&self) {
        assert_eq!(
            std::fs::read_to_string(self.marker()).expect("marker"),
            MARKER
        );
        let meta = std::fs::symlink_metadata(self.marker()).expect("marker");
        assert!(meta.is_file());
        assert_eq!(meta.nlink(), 1, "the marker got a hard link");
        let mut names: Vec<_> = std::fs::read_dir(self.dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["marker", "root"],
            "something was written beside the root"
        );
    }
}

fn refused(r: Result<(), ContainerError>, why: &str) {
    match r {
        Err(e @ ContainerError::Refused { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(why), "{msg}");
            assert!(msg.contains("layer sha256:"), "names the layer: {msg}");
        }
        other => panic!("expected a refusal ({why}), got {other:?}"),
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .expect("stat")
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn layers_apply_as_changesets() {
    let s = Scene::new();
    let root = s.root();
    s.apply(
        &[
            Entry::Dir("etc/", 0o755),
            Entry::File("etc/hello", b"hi", 0o644),
            Entry::File("bin/tool", b"#!", 0o4755),
            Entry::File("d/a", b"a", 0o644),
            Entry::File("d/b", b"b", 0o644),
            Entry::File("d/sub/c", b"c", 0o644),
            Entry::Symlink("link", "etc/hello"),
            Entry::Hardlink("etc/hello2", "etc/hello"),
            Entry::Fifo("pipe"),
            Entry::Dir("ro/", 0o555),
            Entry::File("ro/inside", b"x", 0o444),
        ],
        Compression::None,
    )
    .expect("layer 1");
    assert_eq!(support::read(&root, "etc/hello"), "hi");
    assert_eq!(support::read(&root, "etc/hello2"), "hi");
    assert_eq!(support::read(&root, "link"), "hi");
    assert_eq!(mode(&root.join("bin/tool")), 0o755, "setuid dropped");
    assert_eq!(
        mode(&root.join("ro")),
        0o555,
        "directory mode applied after its entries"
    );
    assert!(std::fs::symlink_metadata(root.join("pipe"))
        .expect("fifo")
        .file_type()
        .is_fifo());

    // Whiteouts and an opaque directory; this layer's own entries survive the
    // opaque marker even when they come before it.
    s.apply(
        &[
            Entry::File("etc/hello", b"hello v2", 0o644),
            Entry::File("d/.wh.b", b"", 0o644),
            Entry::File("d/sub/new", b"n", 0o644),
            Entry::File("d/sub/.wh..wh..opq", b"", 0o644),
            Entry::File(".wh.link", b"", 0o644),
        ],
        Compression::Gzip,
    )
    .expect("layer 2");
    assert_eq!(support::read(&root, "etc/hello"), "hello v2");
    assert!(root.join("d/a").exists());
    assert!(!root.join("d/b").exists(), "whited out");
    assert!(
        !root.join("d/sub/c").exists(),
        "hidden by the opaque marker"
    );
    assert_eq!(support::read(&root, "d/sub/new"), "n");
    assert!(std::fs::symlink_metadata(root.join("link")).is_err());
    assert!(!root.join("d/.wh.b").exists() && !root.join("d/sub/.wh..wh..opq").exists());

    // A file replaces a directory and a directory a file.
    s.apply(
        &[
            Entry::File("d", b"now a file", 0o644),
            Entry::Dir("bin/tool/", 0o755),
        ],
        Compression::Zstd,
    )
    .expect("layer 3");
    assert_eq!(support::read(&root, "d"), "now a file");
    assert!(root.join("bin/tool").is_dir());
    s.assert_outside_untouched();
}

#[test]
fn dot_dot_and_absolute_names_are_refused() {
    let s = Scene::new();
    refused(
        s.apply(
            &[Entry::File("../marker", b"pwned", 0o644)],
            Compression::None,
        ),
        "'..'",
    );
    refused(
        s.apply(
            &[Entry::File("a/../../marker", b"pwned", 0o644)],
            Compression::None,
        ),
        "'..'",
    );
    let abs = s.marker().to_string_lossy().into_owned();
    refused(
        s.apply(&[Entry::File(&abs, b"pwned", 0o644)], Compression::None),
        "absolute",
    );
    refused(
        s.apply(&[Entry::File("d/.wh...", b"", 0o644)], Compression::None),
        "whiteout",
    );
    s.assert_outside_untouched();
}

#[test]
fn symlinks_pointing_out_resolve_inside_the_root() {
    let s = Scene::new();
    let root = s.root();
    let outside = s.dir.path().to_string_lossy().into_owned();
    // An absolute symlink to the root's parent, then a write through it.
    let r = s.apply(
        &[
            Entry::Symlink("abs", &outside),
            Entry::File("abs/marker", b"pwned", 0o644),
        ],
        Compression::None,
    );
    // `<outside>` does not exist inside the root, so the write fails (or, had
    // the image made that path, would land inside): either way not outside.
    assert!(r.is_err(), "writing through a dangling in-root path: {r:?}");
    // Symlinks to `/` and to `../../..`: writes through them land in the root.
    s.apply(
        &[
            Entry::Symlink("up", "/"),
            Entry::File("up/escaped-abs", b"1", 0o644),
            Entry::Symlink("rel", "../../../.."),
            Entry::File("rel/escaped-rel", b"2", 0o644),
        ],
        Compression::None,
    )
    .expect("contained");
    assert_eq!(support::read(&root, "escaped-abs"), "1");
    assert_eq!(support::read(&root, "escaped-rel"), "2");
    // A file entry where a symlink stands replaces the symlink, never writes
    // through it.
    s.apply(
        &[
            Entry::Symlink("m", &s.marker().to_string_lossy()),
            Entry::File("m", b"pwned", 0o644),
        ],
        Compression::None,
    )
    .expect("replace");
    assert_eq!(support::read(&root, "m"), "pwned");
    assert!(std::fs::symlink_metadata(root.join("m"))
        .expect("m")
        .is_file());
    s.assert_outside_untouched();
}

#[test]
fn hard_links_must_name_a_regular_file_inside() {
    let s = Scene::new();
    let abs = s.marker().to_string_lossy().into_owned();
    refused(
        s.apply(&[Entry::Hardlink("h", "../marker")], Compression::None),
        "'..'",
    );
    refused(
        s.apply(&[Entry::Hardlink("h", &abs)], Compression::None),
        "absolute",
    );
    refused(
        s.apply(
            &[Entry::Symlink("s", &abs), Entry::Hardlink("h", "s")],
            Compression::None,
        ),
        "symlink",
    );
    refused(
        s.apply(&[Entry::Hardlink("h", "missing")], Compression::None),
        "does not exist",
    );
    refused(
        s.apply(
            &[Entry::Dir("dd/", 0o755), Entry::Hardlink("h", "dd")],
            Compression::None,
        ),
        "regular file",
    );
    // Through a symlink out of the root: resolved inside, where there is nothing.
    let outside = s.dir.path().to_string_lossy().into_owned();
    let r = s.apply(
        &[
            Entry::Symlink("o", &outside),
            Entry::Hardlink("h", "o/marker"),
        ],
        Compression::None,
    );
    assert!(r.is_err(), "{r:?}");
    s.assert_outside_untouched();
}

#[test]
fn device_nodes_are_refused() {
    let s = Scene::new();
    refused(
        s.apply(&[Entry::Char("dev/null")], Compression::None),
        "device",
    );
    refused(
        s.apply(&[Entry::Block("dev/sda")], Compression::None),
        "device",
    );
    assert!(!s.root().join("dev/null").exists());
    s.assert_outside_untouched();
}

#[test]
fn limits_and_the_diff_id_are_enforced() {
    let s = Scene::new();
    let big = vec![0u8; 4096];
    let (blob, l) = layer(&tar(&[Entry::File("big", &big, 0o644)]), Compression::Gzip);
    let small = UnpackLimits {
        max_bytes: 1000,
        max_entries: 10,
    };
    refused(
        apply_layer(&s.root(), &l, blob.as_slice(), &small).map(|_| ()),
        "limit of 1000 bytes",
    );
    let many: Vec<String> = (0..11).map(|i| format!("f{i}")).collect();
    let entries: Vec<Entry> = many.iter().map(|n| Entry::File(n, b"", 0o644)).collect();
    let (blob, l) = layer(&tar(&entries), Compression::None);
    refused(
        apply_layer(&s.root(), &l, blob.as_slice(), &small).map(|_| ()),
        "more than 10 entries",
    );

    let (blob, mut l) = layer(&tar(&[Entry::File("f", b"x", 0o644)]), Compression::Zstd);
    l.diff_id = cellos_container::Digest::of(b"something else");
    match apply_layer(&s.root(), &l, blob.as_slice(), &UnpackLimits::default()) {
        Err(ContainerError::DigestMismatch { what, .. }) => assert!(what.contains("diff id")),
        other => panic!("expected a diff id mismatch, got {other:?}"),
    }
    s.assert_outside_untouched();
}

#[test]
fn ownership_is_kept_only_when_running_as_root() {
    let s = Scene::new();
    s.apply(&[Entry::Owned("owned", 1234, 5678)], Compression::None)
        .expect("layer");
    let meta = std::fs::metadata(s.root().join("owned")).expect("owned");
    let me = nix::unistd::geteuid();
    if me.is_root() {
        assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
    } else {
        assert_eq!(
            meta.uid(),
            me.as_raw(),
            "a non-root unpack keeps files as its own"
        );
    }
}
