//! Writes the seed corpora under `fuzz/corpus/<target>/seed-*`: a few valid inputs
//! per target, made with the crates' own encoders the way their tests make them.
//! Seeds are committed; this only needs running again when a format changes:
//!
//! ```sh
//! cargo test --release -p cellos-fuzz --test seeds -- --ignored
//! ```
//!
//! Sealed boxes and stored objects use fresh randomness, so rewritten seeds differ
//! byte for byte from the committed ones but mean the same.

use std::net::Ipv4Addr;
use std::path::Path;

use cellos_fuzz::init::PACKET_MARKER;
use cellos_fuzz::ledger::{key, NODE_KEY};
use cellos_fuzz::shard::{object_config, object_entries, OBJECT_K, OBJECT_M, OBJECT_NAME};
use cellos_ledger::deployment::{self, Deployment};
use cellos_ledger::{
    keys, Accel, EnrollToken, Gpu, Hash, Interface, Prices, Resources, Tx, TxBody,
};
use cellos_shard::record::{self, Kind};
use cellos_store::backend::{Backend, BackendError, MemBackend};
use cellos_store::object::Store;
use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode};
use dhcproto::Encodable;

fn write(target: &str, seeds: &[Vec<u8>]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("create the corpus directory");
    for (i, s) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i}")), s).expect("write a seed");
    }
}

fn tx_seeds() -> Vec<Vec<u8>> {
    let signer = key(1);
    let tx = |nonce: u64, body: TxBody| {
        let t = Tx {
            chain_id: "cellos-dev".into(),
            signer: keys::public_key(&signer),
            nonce,
            body,
        };
        serde_json::to_vec(&t.sign(&signer)).expect("json")
    };
    let resources = Resources {
        cru: 2,
        mru: 4 << 30,
        sru: 50 << 30,
        hru: 1 << 40,
    };
    vec![
        tx(
            1,
            TxBody::CreateAccount {
                encryption_key: Some(keys::encryption_key(&signer)),
            },
        ),
        tx(2, TxBody::Faucet { amount: 1_000_000 }),
        tx(
            3,
            TxBody::Transfer {
                to: keys::public_key(&key(2)),
                amount: 5_000,
            },
        ),
        tx(
            4,
            TxBody::CreateFarm {
                name: "farm-a".into(),
                prices: Prices {
                    cu: 10,
                    su: 5,
                    nu: 1,
                    ipu: 2,
                },
                enrollment_key: Some(keys::public_key(&key(5))),
            },
        ),
        tx(
            5,
            TxBody::RegisterNode {
                farm: 1,
                capacity: resources,
                interfaces: vec![Interface {
                    name: "eth0".into(),
                    mac: "52:54:00:12:34:56".into(),
                    ips: vec!["10.0.2.15/24".into()],
                }],
                gpus: vec![Gpu {
                    address: "0000:00:02.0".into(),
                    vendor: 0x1234,
                    device: 0x1111,
                    iommu_group: Some(3),
                }],
                accel: Accel::Kvm,
                encryption_key: keys::encryption_key(&key(NODE_KEY)),
                location: Some("lab".into()),
                enrollment: Some(EnrollToken::issue(&key(5), "cellos-dev", 1, 2_000_000_000)),
                persistent: true,
            },
        ),
        tx(
            6,
            TxBody::CreateContract {
                node: 1,
                deployment_hash: Hash::of(b"deployment"),
                resources,
                public_ips: 1,
                deposit: 100_000,
                blob: Some(Hash::of(b"blob")),
            },
        ),
        tx(
            7,
            TxBody::ReportUsage {
                contract: 1,
                window_start: 100,
                window_end: 3_700,
                nu_bytes: 1 << 30,
                cpu_usec: 90_000_000,
                memory_bytes: 256 << 20,
            },
        ),
    ]
}

const OWNER: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn deployments() -> Vec<Deployment> {
    let volume = format!(
        "version = 1\nowner = \"{OWNER}\"\n[metadata]\ndescription = \"a data volume\"\n\
         [[workloads]]\nname = \"data\"\nspec.volume.size = \"1G\"\n"
    );
    let shard = format!(
        "version = 1\nowner = \"{OWNER}\"\n[[workloads]]\nname = \"backup\"\n\
         spec.shard = {{ size = \"4G\", mode = \"seq\", password = \"s3cret\" }}\n\
         [[workloads]]\nname = \"plain\"\nspec.shard.size = \"1G\"\nspec.shard.password = \"pw\"\n"
    );
    let mut out: Vec<Deployment> = [volume, shard]
        .iter()
        .map(|t| toml::from_str(t).expect("toml"))
        .collect();
    for d in &mut out {
        d.sign(&key(2));
    }
    out
}

fn deployment_seeds() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = deployments()
        .iter()
        .map(|d| serde_json::to_vec(d).expect("json"))
        .collect();
    out.push(
        format!(
            "version = 1\nowner = \"{OWNER}\"\n[[workloads]]\nname = \"data\"\nspec.volume.size = \"2G\"\n"
        )
        .into_bytes(),
    );
    out.push(
        format!(
            "version = 1\nowner = \"{OWNER}\"\n[[workloads]]\nname = \"s\"\nspec.shard = {{ size = 1048576, mode = \"user\" }}\n"
        )
        .into_bytes(),
    );
    out
}

fn sealed_seeds() -> Vec<Vec<u8>> {
    let to = keys::encryption_key(&key(NODE_KEY));
    let mut out: Vec<Vec<u8>> = deployments()
        .iter()
        .map(|d| {
            let json = serde_json::to_vec(d).expect("json");
            deployment::seal(&json, &to).expect("seal")
        })
        .collect();
    out.push(deployment::seal(b"not a deployment", &to).expect("seal"));
    out
}

fn resp_seeds() -> Vec<Vec<u8>> {
    let with = |mode: u8, s: &[u8]| {
        let mut v = vec![mode];
        v.extend_from_slice(s);
        v
    };
    vec![
        with(
            1,
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
        ),
        with(
            6,
            b"PING hello\r\n\r\nECHO  a  b\n*0\r\n*1\r\n$4\r\nPING\r\n",
        ),
        with(
            3,
            b"*2\r\n$6\r\nSELECT\r\n$3\r\nabc\r\n*1\r\n$4\r\nQUIT\r\n",
        ),
        with(
            0,
            b"+OK\r\n-ERR no\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*2\r\n$1\r\na\r\n*1\r\n:1\r\n*-1\r\n",
        ),
        with(9, b"*2\r\n$3\r\nGET\r\n$70\r\n"),
    ]
}

fn dispatch_seeds() -> Vec<Vec<u8>> {
    [
        &b"SET k v\r\nGET k\r\nEXISTS k x\r\nDBSIZE\r\nCHECK k\r\nDEL k\r\nGET k\r\n"[..],
        b"PING\r\nECHO hi\r\nINFO\r\nCOMMAND\r\nCONFIG GET maxmemory\r\nSCAN 0 COUNT 5\r\nQUIT\r\n",
        b"NSNEW ns maxsize 100000 password pw mode seq public 1\r\nNSINFO ns\r\nNSLIST\r\n\
          SELECT ns\r\nSET a b\r\nNSSET ns maxsize 5\r\nSET c d\r\nNSDEL ns\r\nSELECT default\r\n",
        b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$10\r\n0123456789\r\n*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n",
    ]
    .iter()
    .map(|s| s.to_vec())
    .collect()
}

fn cmdline_seeds() -> Vec<Vec<u8>> {
    let token = EnrollToken::issue(&key(5), "cellos-dev", 3, 2_000_000_000).to_text();
    vec![
        format!(
            "BOOT_IMAGE=/vmlinuz console=ttyS0 cellos.farm=3 cellos.ledger=http://10.0.2.2:8645 \
             cellos.enroll={token} cellos.mode=dev cellos.debug"
        )
        .into_bytes(),
        b"cellos.net=static:eth0,10.0.2.15/24,10.0.2.2,10.0.2.3 cellos.disks=wipe cellos.boot=usb"
            .to_vec(),
        b"quiet cellos.net=eth1 cellos.selftest=\"a b\" cellos.colour=blue cellos.farm=x cellos.debug=0"
            .to_vec(),
        b"cellos.ledger=https://ledger.example:443/v1?x=1 cellos.net=dhcp cellos.mode=prod".to_vec(),
    ]
}

fn bootcfg_seeds() -> Vec<Vec<u8>> {
    let token = EnrollToken::issue(&key(5), "cellos-dev", 3, 2_000_000_000).to_text();
    vec![
        format!(
            "farm = 3\nledger = \"http://10.0.2.2:8645\"\nenroll = \"{token}\"\n\
             extra = \"cellos.debug cellos.mode=dev\"\n"
        )
        .into_bytes(),
        "\u{feff}# written on Windows\r\nfarm = 12\r\nledger = \"https://ledger.example\"\r\n"
            .as_bytes()
            .to_vec(),
        b"farm = 1\ncolour = \"blue\"\n".to_vec(),
        b"ledger = \"\"\nextra = \"cellos.net=static:eth0,10.0.0.5/24,10.0.0.1\"\n".to_vec(),
    ]
}

fn dhcp_reply(kind: MessageType, domain: Option<&str>, dns: usize) -> Vec<u8> {
    let server = Ipv4Addr::new(10, 0, 2, 2);
    let mut m = Message::new_with_id(
        0x1234_5678,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::new(10, 0, 2, 15),
        server,
        Ipv4Addr::UNSPECIFIED,
        &[0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
    );
    m.set_opcode(Opcode::BootReply);
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    o.insert(DhcpOption::ServerIdentifier(server));
    o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
    o.insert(DhcpOption::Router(vec![server]));
    o.insert(DhcpOption::DomainNameServer(
        (0..dns)
            .map(|i| Ipv4Addr::new(10, 0, 2, 3 + i as u8))
            .collect(),
    ));
    o.insert(DhcpOption::AddressLeaseTime(86_400));
    if let Some(d) = domain {
        o.insert(DhcpOption::DomainName(d.into()));
        o.insert(DhcpOption::Renewal(600));
        o.insert(DhcpOption::Rebinding(900));
    }
    m.to_vec().expect("encode")
}

fn dhcp_seeds() -> Vec<Vec<u8>> {
    let join = |packets: &[Vec<u8>]| packets.join(PACKET_MARKER);
    vec![
        join(&[
            dhcp_reply(MessageType::Offer, None, 1),
            dhcp_reply(MessageType::Ack, None, 1),
            dhcp_reply(MessageType::Ack, None, 1),
        ]),
        join(&[
            dhcp_reply(MessageType::Offer, Some("lab.example"), 4),
            dhcp_reply(MessageType::Ack, Some("lab.example"), 4),
            dhcp_reply(MessageType::Nak, None, 0),
        ]),
        join(&[
            dhcp_reply(MessageType::Ack, None, 1),
            dhcp_reply(MessageType::Offer, None, 2),
            dhcp_reply(MessageType::Nak, None, 0),
        ]),
    ]
}

fn record_seeds() -> Vec<Vec<u8>> {
    let mut clean = Vec::new();
    record::encode(Kind::Set, b"alpha", b"one", &mut clean);
    record::encode(Kind::Set, b"beta", &[7; 40], &mut clean);
    record::encode(Kind::Del, b"alpha", &26u64.to_le_bytes(), &mut clean);
    record::encode(Kind::Set, b"gamma", b"three", &mut clean);
    let mut flipped = clean.clone();
    flipped[30] ^= 0x04;
    let mut bad_header = clean.clone();
    bad_header[24] ^= 0xff;
    let mut torn = clean.clone();
    torn.truncate(clean.len() - 3);
    let mut garbage = vec![0xce, 0x11, 0x01, 0x00, 0xff];
    garbage.extend_from_slice(&clean);
    vec![clean, flipped, bad_header, torn, garbage]
}

/// The backends' writes during `put`, as `object` target entries (leaving out
/// one backend's when `drop_backend` says so); checked to read back.
fn object_seed(data: &[u8], drop_backend: Option<usize>) -> Vec<u8> {
    let log = Log::default();
    let backends: Vec<RecBackend> = (0..OBJECT_K + OBJECT_M)
        .map(|index| RecBackend {
            index,
            log: log.clone(),
        })
        .collect();
    let store = Store::new(object_config(64), backends).expect("store");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        store.put(OBJECT_NAME, data).await.expect("put");
    });
    let mut out = Vec::new();
    for (b, key, value) in log.lock().expect("log").iter() {
        if Some(*b) == drop_backend {
            continue;
        }
        out.push(u8::try_from(*b).expect("backend index"));
        out.push(u8::try_from(key.len()).expect("short key"));
        out.extend_from_slice(key);
        out.extend_from_slice(
            &u16::try_from(value.len())
                .expect("short value")
                .to_le_bytes(),
        );
        out.extend_from_slice(value);
    }
    assert_eq!(read_object(&out, None), data);
    out
}

/// The object stored in an `object` target input, read back, with the writes
/// to backend `lose` left out.
fn read_object(input: &[u8], lose: Option<usize>) -> Vec<u8> {
    let mem: Vec<MemBackend> = (0..OBJECT_K + OBJECT_M)
        .map(|_| MemBackend::default())
        .collect();
    for (b, key, value) in object_entries(input) {
        if Some(b) != lose {
            mem[b].entries().insert(key, value);
        }
    }
    let store = Store::new(object_config(64), mem).expect("store");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async { store.get(OBJECT_NAME).await.expect("get") })
}

type Log = std::sync::Arc<std::sync::Mutex<Vec<(usize, Vec<u8>, Vec<u8>)>>>;

/// A backend that records every write, in order, and holds nothing.
struct RecBackend {
    index: usize,
    log: Log,
}

impl Backend for RecBackend {
    async fn set(&self, key: &[u8], value: &[u8]) -> Result<(), BackendError> {
        self.log
            .lock()
            .expect("log")
            .push((self.index, key.to_vec(), value.to_vec()));
        Ok(())
    }
    async fn get(&self, _key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(None)
    }
    async fn del(&self, _key: &[u8]) -> Result<(), BackendError> {
        Ok(())
    }
    async fn ping(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

/// What the object seeds hold, and whether a backend's writes are left out.
fn object_plaintexts() -> Vec<(Vec<u8>, Option<usize>)> {
    let text: Vec<u8> = (0..300u32).map(|i| (i * 7 % 251) as u8).collect();
    vec![
        (Vec::new(), None),
        (b"hello, shards".to_vec(), None),
        (text.clone(), None),
        (text, Some(1)),
    ]
}

fn object_seeds() -> Vec<Vec<u8>> {
    object_plaintexts()
        .iter()
        .map(|(data, drop)| object_seed(data, *drop))
        .collect()
}

/// Golden metadata: the committed object seeds were written by an earlier
/// store (their metadata names its Reed-Solomon crate and cipher); today's
/// store still reads each one back exactly, also with any one backend lost, so
/// that the code it names rebuilds a lost data shard.
#[test]
fn committed_object_seeds_still_read_back() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/object");
    for (i, (data, dropped)) in object_plaintexts().iter().enumerate() {
        let seed = std::fs::read(dir.join(format!("seed-{i}"))).expect("a committed seed");
        let losses = match dropped {
            Some(_) => vec![None],
            None => [None]
                .into_iter()
                .chain((0..OBJECT_K + OBJECT_M).map(Some))
                .collect(),
        };
        for lose in losses {
            assert_eq!(
                &read_object(&seed, lose),
                data,
                "seed-{i}, backend {lose:?} lost"
            );
        }
    }
}

#[test]
#[ignore = "rewrites fuzz/corpus/*/seed-*; run by hand when a format changes"]
fn write_seeds() {
    write("tx", &tx_seeds());
    write("deployment", &deployment_seeds());
    write("sealed", &sealed_seeds());
    write("resp", &resp_seeds());
    write("dispatch", &dispatch_seeds());
    write("cmdline", &cmdline_seeds());
    write("bootcfg", &bootcfg_seeds());
    write("dhcp", &dhcp_seeds());
    write("record", &record_seeds());
    write("object", &object_seeds());
}

/// The seeds are what they claim: each target accepts them (the replay test only
/// shows they do not crash it).
#[test]
fn seeds_are_valid_inputs() {
    for s in tx_seeds() {
        let stx: cellos_ledger::SignedTx = serde_json::from_slice(&s).expect("tx json");
        assert!(stx.verify().is_ok());
    }
    for d in deployments() {
        assert_eq!((d.validate(), d.verify()), (Ok(()), Ok(())));
    }
    let (cfg, _) =
        cellos_boot::cmdline::parse(std::str::from_utf8(&cmdline_seeds()[0]).expect("utf8"));
    assert!(cfg.enroll.is_some() && cfg.ledger.is_some());
    assert!(cellos_boot::stick::parse_file(
        std::str::from_utf8(&bootcfg_seeds()[0]).expect("utf8")
    )
    .is_ok());
}
