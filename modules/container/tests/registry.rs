//! Pulling from Debian's real registry (`docker-registry`, plain HTTP on
//! loopback) images the tests build and push themselves: an index with linux/amd64
//! and linux/arm64, plain, gzip and zstd layers with whiteouts; the cache answering
//! a second pull with no blob request, and without the registry at all; corrupt
//! blobs and lying configs refused with nothing left behind; eviction by size.

mod support;

use std::sync::Arc;

use cellos_container::sys::DirCopySnapshots;
use cellos_container::{
    BlobCache, Compression, ContainerError, Credentials, ImageRef, LayerStore, Limits, PullOptions,
    PullPolicy, Puller, UnpackLimits,
};
use support::{layer, push_image, push_index, read, tar, Entry, Registry, TestImage};

const GIB: u64 = 1 << 30;

/// The cache in `work/cache` (10 GiB), opened as cellosd would after a restart.
fn open_cache(work: &tempfile::TempDir) -> Arc<BlobCache> {
    Arc::new(BlobCache::open(work.path().join("cache"), 10 * GIB).expect("cache"))
}

fn puller(reg: &Registry, cache: &Arc<BlobCache>) -> Puller {
    puller_with(reg, cache, Limits::default())
}

fn puller_with(reg: &Registry, cache: &Arc<BlobCache>, limits: Limits) -> Puller {
    Puller::new(
        cache.clone(),
        PullOptions {
            insecure_registries: vec![reg.addr.clone()],
            limits,
            ..PullOptions::default()
        },
    )
}

/// The three-layer amd64 image (plain, gzip, zstd) and a one-layer arm64 one,
/// behind the index `app:v1`.
async fn push_app(reg: &Registry) -> TestImage {
    let l1 = layer(
        &tar(&[
            Entry::Dir("etc/", 0o755),
            Entry::File("etc/hello", b"hi", 0o644),
            Entry::File("bin/tool", b"#!/bin/sh\n", 0o4755),
            Entry::File("srv/old", b"old", 0o644),
            Entry::File("srv/keep", b"keep", 0o644),
            Entry::File("arch", b"amd64", 0o644),
        ]),
        Compression::None,
    );
    let l2 = layer(
        &tar(&[
            Entry::File("etc/hello", b"hello v2", 0o644),
            Entry::File("srv/.wh.old", b"", 0o644),
        ]),
        Compression::Gzip,
    );
    let l3 = layer(
        &tar(&[
            Entry::File("etc/.wh..wh..opq", b"", 0o644),
            Entry::File("etc/only", b"zstd", 0o644),
        ]),
        Compression::Zstd,
    );
    let amd64 = TestImage::new(vec![l1, l2, l3]);
    let (amd, amd_size) = push_image(reg, "team/app", None, &amd64)
        .await
        .expect("push");
    let mut arm64 = TestImage::new(vec![layer(
        &tar(&[Entry::File("arch", b"arm64", 0o644)]),
        Compression::Gzip,
    )]);
    arm64.arch = "arm64";
    let (arm, arm_size) = push_image(reg, "team/app", None, &arm64)
        .await
        .expect("push");
    push_index(
        reg,
        "team/app",
        "v1",
        &[(arm, arm_size, "arm64"), (amd, amd_size, "amd64")],
    )
    .await
    .expect("push");
    amd64
}

#[tokio::test]
async fn pulls_an_index_and_unpacks_the_amd64_image() {
    let reg = Registry::start().expect("registry");
    let pushed = push_app(&reg).await;
    let work = tempfile::tempdir().expect("tempdir");
    let cache = open_cache(&work);
    let r = ImageRef::parse(&reg.reference("team/app:v1")).expect("ref");
    let image = puller(&reg, &cache)
        .pull(&r, PullPolicy::Always)
        .await
        .expect("pull");

    assert_eq!(image.config.entrypoint, ["/bin/tool"]);
    assert_eq!(image.config.cmd, ["--serve"]);
    assert_eq!(image.config.env, ["PATH=/bin", "MODE=test"]);
    assert_eq!(image.config.working_dir.as_deref(), Some("/srv"));
    assert_eq!(image.config.user.as_deref(), Some("1000:1000"));
    let want: Vec<_> = pushed.layers.iter().map(|(_, l)| l.clone()).collect();
    assert_eq!(image.layers, want, "the amd64 manifest's layers, in order");
    for l in &image.layers {
        assert!(cache.contains(&l.digest));
    }

    let store = LayerStore::open(
        work.path().join("layers"),
        DirCopySnapshots,
        UnpackLimits::default(),
    )
    .expect("store");
    let top = store.prepare(&image, &cache).expect("prepare");
    let root = store.create_root("c1", &top).expect("root");
    assert_eq!(read(&root, "arch"), "amd64");
    assert_eq!(read(&root, "etc/only"), "zstd");
    assert!(
        !root.join("etc/hello").exists(),
        "hidden by the zstd layer's opaque marker"
    );
    assert!(
        !root.join("srv/old").exists(),
        "whited out by the gzip layer"
    );
    assert_eq!(read(&root, "srv/keep"), "keep");
    // The root is a copy: writing it leaves the layer trees alone.
    std::fs::write(root.join("srv/keep"), "changed").expect("write root");
    assert_eq!(read(&top, "srv/keep"), "keep");
    // Preparing again reuses the trees; a second root is fresh.
    assert_eq!(store.prepare(&image, &cache).expect("again"), top);
    let root2 = store.create_root("c2", &top).expect("root 2");
    assert_eq!(read(&root2, "srv/keep"), "keep");
    store.remove_root("c1").expect("remove");
    assert!(!root.exists());
    assert_eq!(store.prune(&[]).expect("prune"), 3, "three layer trees");
}

#[tokio::test]
async fn a_cached_image_is_pulled_without_the_registry() {
    let mut reg = Registry::start().expect("registry");
    push_app(&reg).await;
    let work = tempfile::tempdir().expect("tempdir");
    let cache = open_cache(&work);
    let r = ImageRef::parse(&reg.reference("team/app:v1")).expect("ref");
    let first = puller(&reg, &cache)
        .pull(&r, PullPolicy::Always)
        .await
        .expect("pull");
    let gets = reg.blob_gets();
    assert_eq!(gets, 4, "config and three layers:\n{}", reg.log());

    // Resolving the tag again fetches manifests only.
    let again = puller(&reg, &cache)
        .pull(&r, PullPolicy::Always)
        .await
        .expect("pull again");
    assert_eq!(again, first);
    assert_eq!(reg.blob_gets(), gets, "a cached blob was fetched again");

    // No registry at all, and a cache reopened as after a reboot.
    reg.stop();
    let cache = open_cache(&work);
    let offline = puller(&reg, &cache)
        .pull(&r, PullPolicy::IfNotPresent)
        .await
        .expect("offline pull");
    assert_eq!(offline, first);
    let by_digest = r.with_digest(first.manifest.clone());
    let offline = puller(&reg, &cache)
        .pull(&by_digest, PullPolicy::IfNotPresent)
        .await
        .expect("by digest");
    assert_eq!(offline.layers, first.layers);
    let e = puller(&reg, &cache)
        .pull(&r, PullPolicy::Always)
        .await
        .expect_err("registry is down");
    assert!(matches!(e, ContainerError::Registry { .. }), "{e}");
}

#[tokio::test]
async fn a_corrupt_blob_is_refused_and_not_cached() {
    let reg = Registry::start().expect("registry");
    let pushed = push_app(&reg).await;
    let (_, gz) = &pushed.layers[1];
    let data = reg.blob_data(&gz.digest);
    let mut bytes = std::fs::read(&data).expect("registry blob");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&data, bytes).expect("corrupt");

    let work = tempfile::tempdir().expect("tempdir");
    let cache = open_cache(&work);
    let r = ImageRef::parse(&reg.reference("team/app:v1")).expect("ref");
    let e = puller(&reg, &cache)
        .pull(&r, PullPolicy::Always)
        .await
        .expect_err("corrupt layer");
    let chain = error_chain(&e);
    assert!(
        chain.contains(gz.digest.as_str()),
        "names the blob: {chain}"
    );
    assert!(
        !cache.contains(&gz.digest),
        "the corrupt blob entered the cache"
    );
    assert_eq!(
        std::fs::read_dir(work.path().join("cache/tmp"))
            .expect("tmp")
            .count(),
        0
    );
    assert_eq!(
        cache.lookup_ref(&r).expect("lookup"),
        None,
        "a failed pull recorded the tag"
    );
}

#[tokio::test]
async fn a_config_that_lies_about_its_layers_is_refused_at_unpack() {
    let reg = Registry::start().expect("registry");
    let mut image = TestImage::new(vec![layer(
        &tar(&[Entry::File("f", b"x", 0o644)]),
        Compression::Gzip,
    )]);
    image.diff_ids = Some(vec![
        cellos_container::Digest::of(b"not this layer").to_string()
    ]);
    push_image(&reg, "liar", Some("v1"), &image)
        .await
        .expect("push");
    let work = tempfile::tempdir().expect("tempdir");
    let cache = open_cache(&work);
    let r = ImageRef::parse(&reg.reference("liar:v1")).expect("ref");
    let pulled = puller(&reg, &cache)
        .pull(&r, PullPolicy::Always)
        .await
        .expect("blobs match their digests");
    let store = LayerStore::open(
        work.path().join("layers"),
        DirCopySnapshots,
        UnpackLimits::default(),
    )
    .expect("store");
    let e = store.prepare(&pulled, &cache).expect_err("diff id");
    assert!(matches!(e, ContainerError::DigestMismatch { .. }), "{e}");
    let left = std::fs::read_dir(work.path().join("layers/layers"))
        .expect("layers")
        .count();
    assert_eq!(left, 0, "a refused layer left a tree");
    let scratch = std::fs::read_dir(work.path().join("layers/tmp"))
        .expect("tmp")
        .count();
    assert_eq!(scratch, 0, "a refused layer left its scratch tree");
}

#[tokio::test]
async fn size_limits_stop_a_pull() {
    let reg = Registry::start().expect("registry");
    push_app(&reg).await;
    let work = tempfile::tempdir().expect("tempdir");
    let cache = open_cache(&work);
    let r = ImageRef::parse(&reg.reference("team/app:v1")).expect("ref");
    for (limits, what) in [
        (
            Limits {
                manifest: 100,
                ..Limits::default()
            },
            "manifest",
        ),
        (
            Limits {
                layer: 100,
                ..Limits::default()
            },
            "layer",
        ),
        (
            Limits {
                config: 10,
                ..Limits::default()
            },
            "config",
        ),
        (
            Limits {
                layers: 2,
                ..Limits::default()
            },
            "layers",
        ),
    ] {
        let e = puller_with(&reg, &cache, limits)
            .pull(&r, PullPolicy::Always)
            .await
            .expect_err(what);
        let msg = e.to_string();
        assert!(msg.contains(what) && msg.contains("limit"), "{what}: {msg}");
    }
    assert_eq!(reg.blob_gets(), 0, "a capped blob was requested");
}

#[tokio::test]
async fn eviction_keeps_the_cache_within_its_limit() {
    let reg = Registry::start().expect("registry");
    let one = TestImage::new(vec![layer(
        &tar(&[Entry::File("a", &[1u8; 50_000], 0o644)]),
        Compression::None,
    )]);
    let two = TestImage::new(vec![layer(
        &tar(&[Entry::File("b", &[2u8; 50_000], 0o644)]),
        Compression::None,
    )]);
    push_image(&reg, "one", Some("v1"), &one)
        .await
        .expect("push");
    push_image(&reg, "two", Some("v1"), &two)
        .await
        .expect("push");
    let work = tempfile::tempdir().expect("tempdir");
    // Room for one image, not two.
    let cache = Arc::new(BlobCache::open(work.path().join("cache"), 80_000).expect("cache"));
    let p = puller(&reg, &cache);
    let r1 = ImageRef::parse(&reg.reference("one:v1")).expect("ref");
    let r2 = ImageRef::parse(&reg.reference("two:v1")).expect("ref");
    let i1 = p.pull(&r1, PullPolicy::Always).await.expect("pull one");
    let i2 = p.pull(&r2, PullPolicy::Always).await.expect("pull two");
    assert!(
        !cache.blob_path(&i1.layers[0].digest).exists(),
        "image one (not in use) was evicted"
    );
    assert!(
        cache.contains(&i2.layers[0].digest),
        "the image just pulled stays"
    );
    assert!(cache.usage().expect("usage") <= 80_000);

    // An image in use is kept even when that leaves the cache over its limit.
    cache.set_in_use(&i2.manifest, true).expect("in use");
    let i1 = p
        .pull(&r1, PullPolicy::IfNotPresent)
        .await
        .expect("pull one again");
    assert!(cache.contains(&i2.layers[0].digest) && cache.contains(&i1.layers[0].digest));
    let i2_again = p
        .pull(&r2, PullPolicy::IfNotPresent)
        .await
        .expect("two from the cache");
    assert_eq!(i2_again, i2);
    assert!(
        !cache.blob_path(&i1.layers[0].digest).exists(),
        "image one goes once nothing holds it"
    );
}

#[tokio::test]
async fn bearer_tokens_are_fetched_with_the_tenants_credentials() {
    let image = TestImage::new(vec![layer(
        &tar(&[Entry::File("secret", b"s", 0o644)]),
        Compression::Gzip,
    )]);
    let reg = support::TokenRegistry::start(&image);
    let work = tempfile::tempdir().expect("tempdir");
    let cache = open_cache(&work);
    let r = ImageRef::parse(&format!("{}/private:v1", reg.addr)).expect("ref");
    let with = |credentials| {
        Puller::new(
            cache.clone(),
            PullOptions {
                insecure_registries: vec![reg.addr.clone()],
                credentials,
                ..PullOptions::default()
            },
        )
    };
    let e = with(Credentials::Anonymous)
        .pull(&r, PullPolicy::Always)
        .await
        .expect_err("anonymous");
    assert!(
        matches!(e, ContainerError::Registry { .. }),
        "{}",
        error_chain(&e)
    );
    let wrong = Credentials::Basic {
        username: "tenant".into(),
        password: "guess".into(),
    };
    with(wrong)
        .pull(&r, PullPolicy::Always)
        .await
        .expect_err("wrong password");
    assert_eq!(
        reg.tokens_issued.load(std::sync::atomic::Ordering::SeqCst),
        0
    );

    let right = Credentials::Basic {
        username: "tenant".into(),
        password: "s3cret".into(),
    };
    let pulled = with(right)
        .pull(&r, PullPolicy::Always)
        .await
        .expect("pull with a token");
    assert_eq!(pulled.layers, vec![image.layers[0].1.clone()]);
    assert!(cache.contains(&image.layers[0].1.digest));
    assert!(reg.tokens_issued.load(std::sync::atomic::Ordering::SeqCst) >= 1);
}

/// A registry that answers every manifest request with an endless body (64 MiB
/// at most, so the test ends whatever happens).
fn endless_manifest_server() -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(8) {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut line = String::new();
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let _ = reader.read_line(&mut line);
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).map_or(true, |n| n == 0) || h == "\r\n" {
                        break;
                    }
                }
                if !line.contains("/manifests/") {
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                    );
                    return;
                }
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
                if conn.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let chunk = vec![b' '; 64 << 10];
                for _ in 0..1024 {
                    let framed =
                        [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
                    if conn.write_all(&framed).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_endless_manifest_is_cut_off_at_the_cap() {
    let addr = endless_manifest_server();
    let work = tempfile::tempdir().expect("tempdir");
    let cache = open_cache(&work);
    let p = Puller::new(
        cache,
        PullOptions {
            insecure_registries: vec![addr.clone()],
            limits: Limits {
                manifest: 1 << 20,
                ..Limits::default()
            },
            ..PullOptions::default()
        },
    );
    let r = ImageRef::parse(&format!("{addr}/hostile:v1")).expect("ref");
    let e = p
        .pull(&r, PullPolicy::Always)
        .await
        .expect_err("endless manifest");
    assert!(
        matches!(
            e,
            ContainerError::TooLarge {
                what: "manifest",
                limit: 1048576,
                ..
            }
        ),
        "{}",
        error_chain(&e)
    );
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
