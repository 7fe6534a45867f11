//! The ledger's explorer page in a real browser (issue 18): headless chromium driven
//! over WebDriver by chromedriver, against a real `cellos ledger serve` that this test
//! fills with 2 farms, 10,000 nodes (registered with their own keys) and contracts.
//!
//! It checks what a person would: the nodes table counts right (in total and under
//! filters) and pages, and so do a node's and an owner's contracts; searching a
//! node id, a node key or `contract N` opens that page; a block committed while the
//! page is open shows up without a reload; no page logs a script error or a
//! request the Content-Security-Policy blocked. It
//! prints how long the nodes page takes to load with 10,000 nodes (not asserted:
//! speed is a benchmark's business) and saves a screenshot of the overview as
//! `target/artifacts/explorer.png`.
//!
//! When chromium or chromedriver is missing it prints "SKIPPED: ..." to stderr and
//! passes; `scripts/setup-debian.sh` installs both.
//!
//! The WebDriver client is the few W3C endpoints this test needs, over the reqwest
//! the CLI already uses: the crates that wrap WebDriver bring ~20 more crates (one
//! MPL-licensed) and duplicate versions into the tree for what is a handful of JSON
//! requests.

mod common;

use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use cellos_ledger::client::Client;
use cellos_ledger::keys::{self, Signer};
use cellos_ledger::*;
use common::LedgerProc;
use serde_json::{json, Value};

const NODES: usize = 10_000;
/// Nodes on the second farm; the rest are on the first.
const FARM2_NODES: usize = 4_000;
/// Nodes of the second farm put on standby.
const STANDBY: usize = 10;
/// How long anything in the page may take to show up.
const WAIT: Duration = Duration::from_secs(60);

/// A program on the PATH (or at an absolute path).
fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    names.iter().find_map(|n| {
        std::env::split_paths(&path)
            .map(|d| d.join(n))
            .find(|p| p.is_file())
    })
}

/// Says why the test did not run, past the test harness's capture (so it shows in
/// a plain `cargo test` run, unlike `eprintln!`).
fn skipped(why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED: explorer browser test: {why}");
}

/// A figure this test measured, shown like [`skipped`] even when the test passes.
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "explorer: {line}");
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

// ---- the ledger's contents ------------------------------------------------------

/// What the test put on the ledger.
struct Filled {
    farms: [FarmId; 2],
    /// Every node's id and signer, in registration order.
    nodes: Vec<(NodeId, Signer)>,
    contracts: Vec<ContractId>,
    user: Signer,
}

fn created<T>(r: &chain::Receipt, f: impl Fn(&Event) -> Option<T>) -> T {
    r.events.iter().find_map(f).expect("the event of the tx")
}

async fn fill(c: &Client) -> Filled {
    let chain = c.status().await.expect("status").chain_id;
    let mut farmer = Signer::new(keys::generate(), chain.clone());
    let mut user = Signer::new(keys::generate(), chain.clone());
    for (s, funds) in [(&mut farmer, EXISTENTIAL_DEPOSIT), (&mut user, 1_000_000)] {
        c.submit(&s.sign(TxBody::Faucet { amount: funds }))
            .await
            .expect("faucet");
        c.submit(&s.sign(TxBody::CreateAccount {
            encryption_key: Some(keys::encryption_key(s.key())),
        }))
        .await
        .expect("account");
    }
    let enroll = keys::generate();
    let mut farms = [0; 2];
    for (i, name) in ["north-farm", "south-farm"].into_iter().enumerate() {
        let r = c
            .submit(&farmer.sign(TxBody::CreateFarm {
                name: name.into(),
                prices: Prices {
                    cu: 50,
                    su: 20,
                    nu: 1,
                    ipu: 10,
                },
                enrollment_key: Some(keys::public_key(&enroll)),
            }))
            .await
            .expect("farm");
        farms[i] = created(&r, Event::farm_created);
    }

    // 10,000 nodes, each registering itself with an enrollment token, from 32
    // concurrent senders (group commit puts many in each block).
    let t = Instant::now();
    let signed: Vec<(Signer, SignedTx)> = (0..NODES)
        .map(|i| {
            let farm = farms[usize::from(i >= NODES - FARM2_NODES)];
            let mut s = Signer::new(keys::generate(), chain.clone());
            let tx = s.sign(TxBody::RegisterNode {
                farm,
                capacity: Resources {
                    cru: 16 + (i % 4) as u64 * 16,
                    mru: 64 * GIB,
                    sru: 2048 * GIB,
                    hru: 8192 * GIB,
                },
                interfaces: vec![Interface {
                    name: "eth0".into(),
                    mac: format!(
                        "52:54:00:{:02x}:{:02x}:{:02x}",
                        i >> 16,
                        (i >> 8) & 0xff,
                        i & 0xff
                    ),
                    ips: vec![format!(
                        "10.{}.{}.{}/16",
                        i >> 16,
                        (i >> 8) & 0xff,
                        i & 0xff
                    )],
                }],
                // Odd nodes have a GPU (node 4321's page shows it).
                gpus: (i % 2 == 1)
                    .then(|| cellos_ledger::Gpu {
                        address: "0000:00:01.0".into(),
                        vendor: 0x1234,
                        device: 0x1111,
                        iommu_group: Some(3),
                    })
                    .into_iter()
                    .collect(),
                accel: cellos_ledger::Accel::Tcg,
                encryption_key: keys::encryption_key(s.key()),
                location: Some(if i % 2 == 0 { "Ghent, BE" } else { "Cairo, EG" }.into()),
                enrollment: Some(EnrollToken::issue(&enroll, &chain, farm, u64::MAX)),
                persistent: true,
            });
            (s, tx)
        })
        .collect();
    let mut senders = tokio::task::JoinSet::new();
    let chunk = NODES.div_ceil(32);
    let mut rest = signed;
    let mut start = 0;
    while !rest.is_empty() {
        let part: Vec<_> = rest.drain(..chunk.min(rest.len())).collect();
        let c = c.clone();
        let first = start;
        start += part.len();
        senders.spawn(async move {
            let mut out = Vec::with_capacity(part.len());
            for (k, (s, tx)) in part.into_iter().enumerate() {
                let r = c.submit(&tx).await.expect("register a node");
                let id = created(&r, |e| match e {
                    Event::NodeRegistered { node, .. } => Some(*node),
                    _ => None,
                });
                out.push((first + k, id, s));
            }
            out
        });
    }
    let mut nodes: Vec<(usize, NodeId, Signer)> = Vec::with_capacity(NODES);
    while let Some(part) = senders.join_next().await {
        nodes.extend(part.expect("sender task"));
    }
    nodes.sort_by_key(|(i, _, _)| *i);
    let mut nodes: Vec<(NodeId, Signer)> = nodes.into_iter().map(|(_, id, s)| (id, s)).collect();
    report(&format!(
        "registered {NODES} nodes in {:.1} s",
        t.elapsed().as_secs_f64()
    ));

    // The first 100 nodes report their uptime; some of the second farm's stand by.
    let now = c.status().await.expect("status").time;
    for (id, s) in nodes.iter_mut().take(100) {
        c.submit(&s.sign(TxBody::ReportUptime {
            node: *id,
            timestamp: now,
            uptime_secs: 3 * 86_400 + 3_600,
        }))
        .await
        .expect("uptime");
    }
    for (id, s) in nodes.iter_mut().skip(NODES - STANDBY) {
        c.submit(&s.sign(TxBody::SetNodeStatus {
            node: *id,
            status: NodeStatus::Standby,
        }))
        .await
        .expect("standby");
    }

    // Three contracts on the first node: one accepted (active), one pending, one
    // canceled by its owner.
    let node = nodes[0].0;
    let mut contracts = Vec::new();
    for i in 0..3u8 {
        let r = c
            .submit(&user.sign(TxBody::CreateContract {
                node,
                deployment_hash: Hash::of(&[i]),
                resources: Resources {
                    cru: 2,
                    mru: 4 * GIB,
                    sru: 50 * GIB,
                    hru: 0,
                },
                public_ips: 0,
                deposit: 10_000,
                blob: None,
            }))
            .await
            .expect("contract");
        contracts.push(created(&r, |e| match e {
            Event::ContractCreated { contract, .. } => Some(*contract),
            _ => None,
        }));
    }
    c.submit(&nodes[0].1.sign(TxBody::AcceptContract {
        contract: contracts[0],
        deployment_hash: Hash::of(&[0]),
        result: None,
    }))
    .await
    .expect("accept");
    c.submit(&user.sign(TxBody::CancelContract {
        contract: contracts[2],
    }))
    .await
    .expect("cancel");
    Filled {
        farms,
        nodes,
        contracts,
        user,
    }
}

// ---- a WebDriver client -----------------------------------------------------------

/// chromedriver on a free port, in a process group of its own that the browsers it
/// starts join: dropping it kills them all, also when the test fails half-way
/// (killing chromedriver alone would leave chromium running).
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start(exe: &Path) -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(exe)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let d = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = reqwest::get(format!("{}/status", d.url)).await {
                if let Ok(v) = r.json::<Value>().await {
                    if v["value"]["ready"] == json!(true) {
                        return d;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A browser session: the W3C WebDriver commands the test uses.
struct Browser {
    http: reqwest::Client,
    /// `<driver>/session/<id>`
    session: String,
}

/// The key W3C WebDriver names an element reference with.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    async fn open(driver: &Driver, chromium: &Path, profile: &Path) -> Browser {
        let http = reqwest::Client::new();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": { "browser": "ALL" },
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    // Root in a container has no user namespace for the sandbox.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-crash-reporter",
                    "--window-size=1200,800",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let v = Self::call(
            &http,
            reqwest::Method::POST,
            &format!("{}/session", driver.url),
            Some(caps),
        )
        .await;
        let id = v["sessionId"].as_str().expect("a session id");
        Browser {
            http,
            session: format!("{}/session/{id}", driver.url),
        }
    }

    /// One command; its `value`, or a panic with the driver's error.
    async fn call(
        http: &reqwest::Client,
        method: reqwest::Method,
        url: &str,
        body: Option<Value>,
    ) -> Value {
        let mut req = http.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {url}: {e}"));
        let ok = r.status().is_success();
        let v: Value = r
            .json()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {url}: {e}"));
        assert!(ok, "WebDriver {url}: {}", v["value"]);
        v["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        Self::call(
            &self.http,
            reqwest::Method::POST,
            &format!("{}{path}", self.session),
            Some(body),
        )
        .await
    }

    async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    async fn js(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
            .await
    }

    /// Waits until `script` returns something other than null/false/"" and returns
    /// it; on timeout, fails with what the page shows.
    async fn wait(&self, what: &str, script: &str, args: Value) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.js(script, args.clone()).await;
            if !(v.is_null() || v == json!(false) || v == json!("")) {
                return v;
            }
            if Instant::now() > deadline {
                let text = self.js("return document.body.innerText", json!([])).await;
                panic!(
                    "timed out waiting for {what}; the page shows:\n{}",
                    text.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the view for `route` (the part after `#`) is drawn.
    async fn drawn(&self, route: &str) {
        self.wait(
            &format!("view {route}"),
            "return document.getElementById('view').dataset.ready === arguments[0]",
            json!([route]),
        )
        .await;
    }

    async fn element(&self, css: &str) -> String {
        let v = self
            .post("/element", json!({ "using": "css selector", "value": css }))
            .await;
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css).await;
        self.post(&format!("/element/{e}/clear"), json!({})).await;
        self.post(&format!("/element/{e}/value"), json!({ "text": text }))
            .await;
    }

    async fn click(&self, css: &str) {
        let e = self.element(css).await;
        self.post(&format!("/element/{e}/click"), json!({})).await;
    }

    async fn text(&self, css: &str) -> String {
        let v = self
            .js(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : null",
                json!([css]),
            )
            .await;
        v.as_str().unwrap_or_default().to_string()
    }

    /// The visible page as PNG.
    async fn screenshot(&self) -> Vec<u8> {
        let url = format!("{}/screenshot", self.session);
        let v = Self::call(&self.http, reqwest::Method::GET, &url, None).await;
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64 PNG"))
            .expect("valid base64")
    }

    /// The page's console messages since the last call (chromedriver's log).
    async fn console(&self) -> Vec<String> {
        let v = self.post("/se/log", json!({ "type": "browser" })).await;
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|e| format!("{} {}", e["level"], e["message"]))
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn close(self) {
        Self::call(&self.http, reqwest::Method::DELETE, &self.session, None).await;
    }
}

/// The total a pager says (its `data-total`), once the table is drawn.
const PAGER_TOTAL: &str =
    "const e = document.querySelector('.pager .info'); return e ? Number(e.dataset.total) : null";

/// Keeps a screenshot as a test artifact: `target/artifacts/<name>`.
fn save(png: &[u8], name: &str) {
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is no PNG");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    let path = dir.join(name);
    std::fs::write(&path, png).expect("write screenshot");
    report(&format!(
        "screenshot ({} KiB): {}",
        png.len() / 1024,
        path.display()
    ));
}

#[test]
fn explorer_in_a_browser_with_ten_thousand_nodes() {
    let Some(chromium) = find(&["chromium", "chromium-browser"]) else {
        skipped("chromium is not installed (scripts/setup-debian.sh installs it)");
        return;
    };
    let Some(chromedriver) = find(&["chromedriver"]) else {
        skipped("chromedriver is not installed (Debian's chromium-driver; scripts/setup-debian.sh installs it)");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = LedgerProc::start(&dir.path().join("ledger"), &[]);
    let url = ledger.url.clone();
    rt().block_on(async {
        let c = Client::new(&url).expect("client");
        let mut f = fill(&c).await;
        let driver = Driver::start(&chromedriver).await;
        let b = Browser::open(&driver, &chromium, &dir.path().join("profile")).await;

        // The nodes table: a fresh load of the page, timed from navigation start
        // to the first page of the table drawn; first in a browser that just
        // started, then again in a warm one (a full load: the path changes).
        for (visit, path) in [("first load", "/"), ("second load", "/?again")] {
            b.goto(&format!("{url}{path}#/nodes")).await;
            b.drawn("/nodes").await;
            let ms = b.js("return performance.now()", json!([])).await;
            report(&format!(
                "nodes page with {NODES} nodes drawn {:.0} ms after navigation started ({visit})",
                ms.as_f64().unwrap_or(f64::NAN)
            ));
        }
        assert_eq!(b.js(PAGER_TOTAL, json!([])).await, json!(NODES));
        let rows = b.js("return document.querySelectorAll('table.nodes tbody tr').length", json!([])).await;
        assert_eq!(rows, json!(50), "one page of the table");
        let info = b.text(".pager .info").await;
        assert_eq!(info, "1–50 of 10,000 nodes");
        save(&b.screenshot().await, "explorer-nodes.png");
        let first_row = b.text("table.nodes tbody tr td").await;
        let lowest = f.nodes.iter().map(|(id, _)| *id).min().expect("nodes");
        assert_eq!(first_row, lowest.to_string(), "the table is in id order");
        // The next page, then the status filter.
        b.click(".pager button.next").await;
        b.drawn("/nodes?page=2").await;
        assert_eq!(b.text(".pager .info").await, "51–100 of 10,000 nodes");
        b.js(
            "const s = document.getElementById('status'); s.value = 'standby'; s.dispatchEvent(new Event('change'))",
            json!([]),
        )
        .await;
        b.drawn("/nodes?status=standby&page=1").await;
        assert_eq!(b.js(PAGER_TOTAL, json!([])).await, json!(STANDBY));
        // A farm's nodes, and the farms table's counts.
        b.goto(&format!("{url}/#/nodes?farm={}", f.farms[1])).await;
        b.drawn(&format!("/nodes?farm={}", f.farms[1])).await;
        assert_eq!(b.js(PAGER_TOTAL, json!([])).await, json!(FARM2_NODES));
        b.goto(&format!("{url}/#/farms")).await;
        b.drawn("/farms").await;
        let counts = b
            .js(
                "return [...document.querySelectorAll('table.farms tbody tr')].map(r => r.children[3].textContent)",
                json!([]),
            )
            .await;
        assert_eq!(counts, json!(["6,000", "4,000"]));

        // Search: a node id, a node's key, a contract.
        let (id, key) = (f.nodes[4321].0, f.nodes[4321].1.public_key());
        b.type_into("#q", &id.to_string()).await;
        b.click("#search button").await;
        b.drawn(&format!("/nodes/{id}")).await;
        assert_eq!(b.text("#node-id").await, id.to_string());
        save(&b.screenshot().await, "explorer-node.png");
        assert!(b.text("#view").await.contains(&short_key(&key.to_string())));
        let gpus = b
            .js(
                "return [...document.querySelectorAll('table.gpus tbody tr')].map(r => r.textContent)",
                json!([]),
            )
            .await;
        assert_eq!(gpus, json!(["0000:00:01.0123411113"]));
        assert!(b.text("#view").await.contains("TCG (emulated, slow)"));
        b.type_into("#q", &f.nodes[17].1.public_key().to_string()).await;
        b.click("#search button").await;
        b.drawn(&format!("/nodes/{}", f.nodes[17].0)).await;
        b.type_into("#q", &format!("contract {}", f.contracts[0])).await;
        b.click("#search button").await;
        b.drawn(&format!("/contracts/{}", f.contracts[0])).await;
        assert!(b.text("h1").await.contains("active"), "{}", b.text("h1").await);
        let view = b.text("#view").await;
        assert!(view.contains("s of CPU in all"), "no measured use: {view}");
        // The first node's contracts, on its page and on their owner's.
        let first = f.nodes[0].0;
        b.goto(&format!("{url}/#/nodes/{first}")).await;
        b.drawn(&format!("/nodes/{first}")).await;
        assert_eq!(b.js(PAGER_TOTAL, json!([])).await, json!(3));
        b.goto(&format!("{url}/#/nodes/{first}?open=true")).await;
        b.drawn(&format!("/nodes/{first}?open=true")).await;
        assert_eq!(b.js(PAGER_TOTAL, json!([])).await, json!(2));
        let owner = f.user.public_key();
        b.goto(&format!("{url}/#/accounts/{owner}")).await;
        b.drawn(&format!("/accounts/{owner}")).await;
        assert_eq!(b.js(PAGER_TOTAL, json!([])).await, json!(3));
        assert_eq!(b.text("#account-key").await, owner.to_string());
        b.type_into("#q", "no-such-thing").await;
        b.click("#search button").await;
        b.drawn("/search/no-such-thing").await;
        assert!(b.text("#view").await.contains("Nothing on this ledger matches"));

        // The overview follows the chain: a block made while it is open appears
        // without a reload (the marker set on this page survives).
        b.goto(&format!("{url}/")).await;
        b.drawn("/").await;
        let ms = b.js("return performance.now()", json!([])).await;
        report(&format!(
            "overview (counts and the last 10 blocks) drawn {:.0} ms after navigation started",
            ms.as_f64().unwrap_or(f64::NAN)
        ));
        let height = c.status().await.expect("status").height;
        let top = b.text("table.blocks tbody tr td").await;
        assert_eq!(top.replace(',', ""), height.to_string());
        b.js("window.sameDocument = 'yes'", json!([])).await;
        // Let the page's long-poll reach the ledger before the block is made.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = c
            .submit(&f.user.sign(TxBody::Transfer {
                to: f.nodes[0].1.public_key(),
                amount: 5,
            }))
            .await
            .expect("transfer");
        assert!(r.height > height, "{} after {height}", r.height);
        b.wait(
            "the new block in the overview",
            "return document.querySelector(`table.blocks tr[data-height=\"${arguments[0]}\"]`) !== null",
            json!([r.height]),
        )
        .await;
        assert_eq!(b.js("return window.sameDocument", json!([])).await, json!("yes"), "the page reloaded");
        assert_eq!(b.text("#height .v").await.replace(',', ""), r.height.to_string());
        assert!(b.text("table.txs tbody tr").await.contains("Transfer"));

        save(&b.screenshot().await, "explorer.png");
        // No script error and nothing the Content-Security-Policy blocked, on any
        // page visited (404s of ids the search looked up are expected).
        let console = b.console().await;
        for line in &console {
            assert!(
                !line.contains("Uncaught") && !line.contains("Content Security Policy"),
                "the page logged: {line}"
            );
        }
        report(&format!("{} console lines, no script error, nothing blocked by the CSP", console.len()));
        b.close().await;
    });
}

/// How the page abbreviates a key.
fn short_key(k: &str) -> String {
    format!("{}…{}", &k[..8], &k[k.len() - 6..])
}
