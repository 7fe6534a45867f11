//! The ledger over a real socket, against a real `cellos ledger serve` process.

mod common;

use std::time::Duration;

use cellos_ledger::client::{Client, ContractFilter, NodeFilter};
use cellos_ledger::keys::{self, Signer};
use cellos_ledger::*;
use common::{cellos, LedgerProc};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn signer(c: &Client) -> Signer {
    let chain = c.status().await.expect("status").chain_id;
    Signer::new(keys::generate(), chain)
}

fn created_farm(r: &chain::Receipt) -> FarmId {
    r.events
        .iter()
        .find_map(Event::farm_created)
        .expect("farm id")
}

#[test]
fn deployment_flow_over_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = LedgerProc::start(dir.path(), &[]);
    rt().block_on(async {
        let c = Client::new(&ledger.url).expect("client");
        let mut farmer = signer(&c).await;
        let mut user = signer(&c).await;
        let chain = farmer.chain_id().to_string();
        // Accounts are opened by money (the dev faucet), then record their key.
        for (s, funds) in [(&mut farmer, EXISTENTIAL_DEPOSIT), (&mut user, 100_000)] {
            c.submit(&s.sign(TxBody::Faucet { amount: funds }))
                .await
                .expect("faucet");
            let ek = keys::encryption_key(s.key());
            c.submit(&s.sign(TxBody::CreateAccount {
                encryption_key: Some(ek),
            }))
            .await
            .expect("account");
        }
        let enroll = keys::generate();
        let r = c
            .submit(&farmer.sign(TxBody::CreateFarm {
                name: "http-farm".into(),
                prices: Prices {
                    cu: 60,
                    su: 0,
                    nu: 0,
                    ipu: 0,
                },
                enrollment_key: Some(keys::public_key(&enroll)),
            }))
            .await
            .expect("farm");
        let farm = created_farm(&r);

        // A node with an enrollment token is approved at once.
        let mut node = Signer::new(keys::generate(), chain.clone());
        let token = EnrollToken::issue(&enroll, &chain, farm, u64::MAX);
        let cap = Resources {
            cru: 2,
            mru: 2 * GIB,
            sru: 20 * GIB,
            hru: 0,
        };
        let r = c
            .submit(&node.sign(TxBody::RegisterNode {
                farm,
                capacity: cap,
                interfaces: vec![],
                gpus: vec![],
                accel: cellos_ledger::Accel::Tcg,
                encryption_key: keys::encryption_key(node.key()),
                location: None,
                enrollment: Some(token),
                persistent: true,
            }))
            .await
            .expect("register");
        assert!(matches!(
            r.events.as_slice(),
            [Event::NodeRegistered { approved: true, .. }]
        ));
        let me = c
            .node_by_key(&node.public_key())
            .await
            .expect("query")
            .expect("node found");
        assert_eq!(me.capacity, cap);
        let listed = c
            .nodes(&NodeFilter {
                farm: Some(farm),
                ..Default::default()
            })
            .await
            .expect("nodes");
        assert_eq!(listed.len(), 1);
        let none = c
            .nodes(&NodeFilter {
                farm: Some(farm),
                status: Some(NodeStatus::Standby),
                ..Default::default()
            })
            .await
            .expect("nodes");
        assert!(none.is_empty());

        // A long-poll on the node's events wakes up when a contract names it. There
        // is no block at the next height yet, so the poll has to wait for one.
        let height = c.status().await.expect("status").height;
        let next = height + 1;
        let now = c
            .events(next, 10, Some(me.id), Duration::ZERO)
            .await
            .expect("events");
        assert!(now.events.is_empty() && now.next == next, "{now:?}");
        let poll = {
            let c = c.clone();
            tokio::spawn(async move {
                c.events(next, 10, Some(me.id), Duration::from_secs(20))
                    .await
            })
        };
        // Round trips to the ledger after the poll went out (a blob is no block):
        // the poll is still waiting.
        let deployment = b"{\"workloads\": []}".to_vec();
        let hash = c.put_blob(&user, deployment.clone()).await.expect("blob");
        assert_eq!(c.get_blob(&hash).await.expect("get blob"), deployment);
        assert_eq!(c.status().await.expect("status").height, height);
        assert!(
            !poll.is_finished(),
            "the poll returned with no block at height {next}"
        );
        let r = c
            .submit(&user.sign(TxBody::CreateContract {
                node: me.id,
                deployment_hash: hash,
                resources: Resources {
                    cru: 1,
                    ..Default::default()
                },
                public_ips: 0,
                deposit: 1000,
                blob: None,
            }))
            .await
            .expect("contract");
        assert_eq!(r.height, next);
        let contract = r
            .events
            .iter()
            .find_map(|e| e.contract())
            .expect("contract id");
        let page = poll.await.expect("join").expect("events");
        let got: Vec<_> = page.events.iter().map(|e| (e.height, &e.event)).collect();
        assert_eq!(
            got,
            [(
                next,
                &Event::ContractCreated {
                    contract,
                    node: me.id
                }
            )],
            "the poll returns exactly the new block's event"
        );
        assert_eq!(page.next, next + 1);

        // Over capacity: refused with the ledger's reason.
        let err = c
            .submit(&user.sign(TxBody::CreateContract {
                node: me.id,
                deployment_hash: hash,
                resources: Resources {
                    cru: 2,
                    ..Default::default()
                },
                public_ips: 0,
                deposit: 1000,
                blob: None,
            }))
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(422));
        assert!(
            err.to_string().contains("not enough free capacity"),
            "{err}"
        );

        // Accept with another hash is refused; with the right one the contract is Active.
        let wrong = c
            .submit(&node.sign(TxBody::AcceptContract {
                contract,
                deployment_hash: Hash::of(b"other"),
                result: None,
            }))
            .await
            .unwrap_err();
        assert!(wrong.to_string().contains("names deployment"), "{wrong}");
        c.submit(&node.sign(TxBody::AcceptContract {
            contract,
            deployment_hash: hash,
            result: None,
        }))
        .await
        .expect("accept");
        assert_eq!(
            c.contract(contract).await.expect("contract").state,
            ContractState::Active
        );
        let mine = c
            .contracts(&ContractFilter {
                owner: Some(user.public_key()),
                ..Default::default()
            })
            .await
            .expect("contracts");
        assert_eq!(mine.len(), 1);
        let on_node = c
            .contracts(&ContractFilter {
                node: Some(me.id),
                open: Some(true),
                ..Default::default()
            })
            .await
            .expect("contracts");
        assert_eq!(on_node.len(), 1);

        // Cancel: capacity back, escrow refunded.
        let before = c
            .account(&user.public_key())
            .await
            .expect("account")
            .balance;
        c.submit(&user.sign(TxBody::CancelContract { contract }))
            .await
            .expect("cancel");
        assert!(c.node(me.id).await.expect("node").reserved.is_zero());
        assert_eq!(
            c.account(&user.public_key())
                .await
                .expect("account")
                .balance,
            before + 1000
        );

        // Blocks chain up and are signed by the ledger.
        let st = c.status().await.expect("status");
        let blocks = c.blocks(1, 1000).await.expect("blocks");
        assert_eq!(blocks.len() as u64, st.height);
        let mut prev = c.genesis().await.expect("genesis").hash();
        let mut prev_time = 0;
        for (i, b) in blocks.iter().enumerate() {
            b.check(i as u64 + 1, prev, prev_time, &st.ledger_key)
                .expect("block checks");
            prev = b.hash();
            prev_time = b.header.time;
        }
        assert_eq!(prev, st.head);
    });
    let key = dir.path().join("cli.key");
    let (ok, out, err) = cellos(&["ledger", "verify"], &ledger.url, &key);
    assert!(ok, "verify failed: {out}{err}");
    assert!(out.contains("verified"), "{out}");
}

#[test]
fn bad_input_gets_a_clear_4xx() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = LedgerProc::start(dir.path(), &["--blob-limit", "1K"]);
    rt().block_on(async {
        let http = reqwest::Client::new();
        let url = &ledger.url;
        let post = |body: String| {
            let http = http.clone();
            let u = format!("{url}/v1/tx");
            async move {
                let r = http
                    .post(u)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .expect("send");
                (r.status().as_u16(), r.text().await.expect("text"))
            }
        };
        let (st, body) = post("{not json".into()).await;
        assert_eq!(st, 400);
        assert!(body.contains("malformed transaction"), "{body}");

        let c = Client::new(url).expect("client");
        let mut s = signer(&c).await;
        let good = s.sign(TxBody::Faucet {
            amount: EXISTENTIAL_DEPOSIT,
        });
        let mut v = serde_json::to_value(&good).expect("json");
        v["tx"]["surprise"] = serde_json::json!(true);
        let (st, body) = post(v.to_string()).await;
        assert_eq!(st, 400);
        assert!(body.contains("unknown field `surprise`"), "{body}");

        let mut forged = good.clone();
        forged.tx.nonce += 1;
        let (st, body) = post(serde_json::to_string(&forged).expect("json")).await;
        assert_eq!(st, 400);
        assert!(body.contains("signature does not verify"), "{body}");

        let (st, _) = post(serde_json::to_string(&good).expect("json")).await;
        assert_eq!(st, 200);
        let (st, body) = post(serde_json::to_string(&good).expect("json")).await;
        assert_eq!(st, 422, "a replay is refused");
        assert!(body.contains("nonce"), "{body}");

        let (st, body) = post("x".repeat(100 * 1024)).await;
        assert_eq!(st, 413);
        assert!(body.contains("larger than the limit"), "{body}");

        // Blob uploads are signed by an account (s has one now).
        let now = c.status().await.expect("status").time;
        let signed = |req: reqwest::RequestBuilder, h: &Hash| {
            let auth = blob::sign(s.key(), s.chain_id(), h, now);
            auth.headers()
                .into_iter()
                .fold(req, |req, (k, v)| req.header(k, v))
        };
        let big = vec![7u8; 2048];
        let r = signed(
            http.put(format!("{url}/v1/blobs/{}", Hash::of(&big))),
            &Hash::of(&big),
        )
        .body(big)
        .send()
        .await
        .expect("put");
        assert_eq!(r.status().as_u16(), 413);
        assert!(r
            .text()
            .await
            .expect("text")
            .contains("limit of 1024 bytes"));
        let r = signed(
            http.put(format!("{url}/v1/blobs/{}", Hash::of(b"a"))),
            &Hash::of(b"a"),
        )
        .body("b")
        .send()
        .await
        .expect("put");
        assert_eq!(r.status().as_u16(), 400);
        assert!(r.text().await.expect("text").contains("not to"));
        let r = http
            .get(format!("{url}/v1/blobs/nothex"))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status().as_u16(), 400);
        let r = http
            .get(format!("{url}/v1/blobs/{}", Hash::of(b"missing")))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status().as_u16(), 404);

        for (path, status, text) in [
            ("/v1/nodes?bogus=1", 400, "unknown field `bogus`"),
            ("/v1/nodes/abc", 400, "bad node id"),
            ("/v1/nodes/99", 404, "node 99 does not exist"),
            ("/v1/contracts/1", 404, "contract 1 does not exist"),
            ("/v1/accounts/zz", 400, "bad account key"),
            ("/v1/nope", 404, "no such endpoint"),
        ] {
            let r = http.get(format!("{url}{path}")).send().await.expect("get");
            assert_eq!(r.status().as_u16(), status, "{path}");
            let body = r.text().await.expect("text");
            assert!(body.contains(text), "{path}: {body}");
        }
        // The server is still fine after all that.
        assert!(c.status().await.is_ok());
    });
}

#[test]
fn cli_tour() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = LedgerProc::start(&dir.path().join("data"), &[]);
    let key = dir.path().join("me.key");
    let run = |args: &[&str]| {
        let (ok, out, err) = cellos(args, &ledger.url, &key);
        assert!(ok, "cellos {args:?} failed:\n{out}\n{err}");
        out
    };
    run(&["key", "new"]);
    let mode = std::fs::metadata(&key)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777);
    assert_eq!(mode.expect("key file"), 0o600);
    let (ok, _, err) = cellos(&["key", "new"], &ledger.url, &key);
    assert!(!ok && err.contains("already exists"), "{err}");
    // On a dev ledger `account create` opens the account with the existential
    // deposit from the faucet and records the key's encryption key.
    run(&["account", "create"]);
    run(&["account", "fund", "5000"]);
    let acct: serde_json::Value =
        serde_json::from_str(&run(&["--json", "account", "show"])).expect("json");
    assert_eq!(acct["balance"], EXISTENTIAL_DEPOSIT + 5000);
    assert!(acct["encryption_key"].is_string(), "{acct}");
    let enroll = dir.path().join("enroll.key");
    run(&[
        "farm",
        "create",
        "--name",
        "tour",
        "--enrollment-key",
        enroll.to_str().expect("path"),
    ]);
    let farms: serde_json::Value =
        serde_json::from_str(&run(&["--json", "farm", "list"])).expect("json");
    assert_eq!(farms[0]["name"], "tour");
    let token = run(&[
        "farm",
        "enroll-token",
        "--farm",
        "1",
        "--enrollment-key",
        enroll.to_str().expect("path"),
    ]);
    assert!(EnrollToken::parse(token.trim()).is_ok(), "{token}");
    run(&[
        "farm",
        "add-ip",
        "--farm",
        "1",
        "--ip",
        "185.0.0.2/24",
        "--gateway",
        "185.0.0.1",
    ]);
    assert!(run(&["farm", "show", "1"]).contains("185.0.0.2/24 via 185.0.0.1  free"));
    assert_eq!(run(&["node", "list"]).trim(), "no nodes");
    let (ok, _, err) = cellos(
        &[
            "contract",
            "create",
            "--node",
            "1",
            "--hash",
            &"0".repeat(64),
            "--cru",
            "1",
            "--deposit",
            "10",
        ],
        &ledger.url,
        &key,
    );
    assert!(!ok && err.contains("node 1 does not exist"), "{err}");
    let (ok, _, err) = cellos(
        &[
            "contract",
            "create",
            "--node",
            "1",
            "--hash",
            "abc",
            "--deposit",
            "10",
        ],
        &ledger.url,
        &key,
    );
    assert!(!ok && err.contains("bad Hash"), "{err}");
    // Deployment files: the hash is stable and bad files say what is wrong.
    let file = dir.path().join("d.toml");
    std::fs::write(
        &file,
        "version = 1\n[[workloads]]\nname = \"data\"\nspec.volume.size = \"1G\"\n",
    )
    .expect("write");
    let f = file.to_str().expect("path");
    let h1 = run(&["deployment", "hash", f]);
    assert_eq!(h1.trim().len(), 64, "{h1}");
    assert_eq!(run(&["deployment", "hash", f]), h1);
    std::fs::write(
        &file,
        "version = 1\n[[workloads]]\nname = \"data\"\nspec.volume.sise = \"1G\"\n",
    )
    .expect("write");
    let (ok, _, err) = cellos(&["deployment", "hash", f], &ledger.url, &key);
    assert!(!ok && err.contains("unknown field `sise`"), "{err}");
    let (ok, _, err) = cellos(&["deploy", f, "--node", "1"], &ledger.url, &key);
    assert!(!ok && err.contains("not a deployment"), "{err}");
    let (ok, _, err) = cellos(&["node", "list"], "http://127.0.0.1:1", &key);
    assert!(!ok && err.contains("unreachable"), "{err}");
}

/// `POST /v1/txs`: each transaction of a batch answered on its own, in order (a bad
/// signature or a replay refuses that one, not the others); a batch too long, a
/// body too large or one that is not a JSON array of transactions is refused whole
/// with a 4xx that says why.
#[test]
fn batch_submission_answers_each_transaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = LedgerProc::start(dir.path(), &[]);
    rt().block_on(async {
        let c = Client::new(&ledger.url).expect("client");
        let (mut a, mut b) = (signer(&c).await, signer(&c).await);
        let fund_a = a.sign(TxBody::Faucet {
            amount: EXISTENTIAL_DEPOSIT,
        });
        let mut forged = b.sign(TxBody::Faucet {
            amount: EXISTENTIAL_DEPOSIT,
        });
        forged.signature.0[0] ^= 1;
        let fund_b = b.sign(TxBody::Faucet {
            amount: EXISTENTIAL_DEPOSIT,
        });
        let batch = vec![fund_a.clone(), forged, fund_b.clone(), fund_a.clone()];
        let rs = c.submit_batch(&batch).await.expect("batch answered");
        assert_eq!(rs.len(), 4);
        let r0 = rs[0].as_ref().expect("first accepted");
        assert_eq!(r0.hash, fund_a.hash());
        assert_eq!(rs[1].as_ref().err().and_then(|e| e.status()), Some(400));
        assert_eq!(rs[2].as_ref().expect("third accepted").hash, fund_b.hash());
        let replay = rs[3].as_ref().expect_err("a replay is refused");
        assert_eq!(replay.status(), Some(422), "{replay}");
        assert_eq!(
            c.account(&a.public_key()).await.expect("a").balance,
            EXISTENTIAL_DEPOSIT
        );
        assert_eq!(
            c.account(&b.public_key()).await.expect("b").balance,
            EXISTENTIAL_DEPOSIT
        );

        let too_many: Vec<SignedTx> = (0..=cellos_ledger::server::MAX_BATCH_TXS)
            .map(|_| a.sign(TxBody::Faucet { amount: 1 }))
            .collect();
        let e = c.submit_batch(&too_many).await.expect_err("too many");
        assert_eq!(e.status(), Some(413), "{e}");
        assert!(e.to_string().contains("at most"), "{e}");

        let http = reqwest::Client::new();
        let post = |body: Vec<u8>| {
            let (http, u) = (http.clone(), format!("{}/v1/txs", ledger.url));
            async move {
                let r = http
                    .post(u)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .expect("send");
                (r.status().as_u16(), r.text().await.expect("text"))
            }
        };
        let (st, body) = post(vec![b' '; 5 << 20]).await;
        assert_eq!(st, 413, "{body}");
        let (st, body) = post(b"{\"not\": \"a list\"}".to_vec()).await;
        assert_eq!(st, 400, "{body}");
        assert!(body.contains("malformed transaction batch"), "{body}");
        // None of the refused batches moved a balance.
        assert_eq!(
            c.account(&a.public_key()).await.expect("a").balance,
            EXISTENTIAL_DEPOSIT
        );
    });
}
