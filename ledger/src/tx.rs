//! Signed transactions.
//!
//! What is signed is a deterministic binary encoding: a domain tag, then the postcard
//! encoding of {chain id, signer, nonce, body}. The tag keeps a transaction signature
//! from ever being valid as a block or enrollment signature; the chain id keeps it
//! from being replayed on another ledger; the nonce (strictly increasing per signer)
//! keeps it from being replayed on this one. The transaction hash is BLAKE3 over the
//! same bytes, so it names exactly what was signed.

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::types::*;

const TX_DOMAIN: &[u8] = b"cellos-tx-v1\0";
const ENROLL_DOMAIN: &[u8] = b"cellos-enroll-v1\0";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tx {
    pub chain_id: String,
    pub signer: PublicKey,
    pub nonce: u64,
    pub body: TxBody,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedTx {
    pub tx: Tx,
    pub signature: Signature,
}

/// What a transaction does. See DESIGN §3 for the rules of each.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TxBody {
    CreateAccount {
        encryption_key: Option<EncryptionKey>,
    },
    /// Dev mode only: mints `amount` to the signer.
    Faucet {
        amount: Amount,
    },
    Transfer {
        to: PublicKey,
        amount: Amount,
    },
    CreateFarm {
        name: String,
        prices: Prices,
        enrollment_key: Option<PublicKey>,
    },
    AddFarmIp {
        farm: FarmId,
        ip: String,
        gateway: String,
    },
    RemoveFarmIp {
        farm: FarmId,
        ip: String,
    },
    /// Signed by the node's own key.
    RegisterNode {
        farm: FarmId,
        capacity: Resources,
        interfaces: Vec<Interface>,
        #[serde(default)]
        gpus: Vec<Gpu>,
        #[serde(default)]
        accel: Accel,
        encryption_key: EncryptionKey,
        location: Option<String>,
        enrollment: Option<EnrollToken>,
        /// Whether the node keeps its state on disk; a node that does not takes no
        /// contracts (it would lose them at reboot).
        #[serde(default = "yes")]
        persistent: bool,
    },
    /// Signed by the farm owner.
    ApproveNode {
        node: NodeId,
    },
    /// Signed by the farm owner or the node.
    RemoveNode {
        node: NodeId,
    },
    /// Signed by the node.
    UpdateNode {
        node: NodeId,
        capacity: Resources,
        interfaces: Vec<Interface>,
        #[serde(default)]
        gpus: Vec<Gpu>,
        #[serde(default)]
        accel: Accel,
        encryption_key: EncryptionKey,
        #[serde(default = "yes")]
        persistent: bool,
    },
    /// Signed by the node; `timestamp` must be within the skew of ledger time.
    ReportUptime {
        node: NodeId,
        timestamp: u64,
        uptime_secs: u64,
    },
    /// Signed by the node or the farm owner.
    SetNodeStatus {
        node: NodeId,
        status: NodeStatus,
    },
    CreateContract {
        node: NodeId,
        deployment_hash: Hash,
        resources: Resources,
        public_ips: u32,
        deposit: Amount,
        /// Mailbox blob holding the deployment sealed to the node.
        #[serde(default)]
        blob: Option<Hash>,
    },
    /// Signed by the node: it provisioned the deployment with this hash; `result` is
    /// the mailbox blob with the results sealed to the owner.
    AcceptContract {
        contract: ContractId,
        deployment_hash: Hash,
        #[serde(default)]
        result: Option<Hash>,
    },
    /// Signed by the node.
    RejectContract {
        contract: ContractId,
        reason: String,
    },
    /// Signed by the owner: a new deployment (and reservation) for the same contract.
    UpdateContract {
        contract: ContractId,
        deployment_hash: Hash,
        resources: Resources,
        #[serde(default)]
        blob: Option<Hash>,
    },
    TopUp {
        contract: ContractId,
        amount: Amount,
    },
    /// Signed by the node: usage over `[window_start, window_end)` in ledger seconds.
    ReportUsage {
        contract: ContractId,
        window_start: u64,
        window_end: u64,
        #[serde(default)]
        nu_bytes: u64,
        /// CPU time the contract's containers used in the window, in microseconds
        /// (measured in their cgroups; not billed, kept on the contract).
        #[serde(default)]
        cpu_usec: u64,
        /// Memory the contract's containers hold at the report, in bytes: the peak
        /// since they started where the kernel keeps one, else the current use.
        #[serde(default)]
        memory_bytes: u64,
    },
    /// Signed by the owner or the node.
    CancelContract {
        contract: ContractId,
    },
}

fn yes() -> bool {
    true
}

impl TxBody {
    pub fn name(&self) -> &'static str {
        match self {
            TxBody::CreateAccount { .. } => "CreateAccount",
            TxBody::Faucet { .. } => "Faucet",
            TxBody::Transfer { .. } => "Transfer",
            TxBody::CreateFarm { .. } => "CreateFarm",
            TxBody::AddFarmIp { .. } => "AddFarmIp",
            TxBody::RemoveFarmIp { .. } => "RemoveFarmIp",
            TxBody::RegisterNode { .. } => "RegisterNode",
            TxBody::ApproveNode { .. } => "ApproveNode",
            TxBody::RemoveNode { .. } => "RemoveNode",
            TxBody::UpdateNode { .. } => "UpdateNode",
            TxBody::ReportUptime { .. } => "ReportUptime",
            TxBody::SetNodeStatus { .. } => "SetNodeStatus",
            TxBody::CreateContract { .. } => "CreateContract",
            TxBody::AcceptContract { .. } => "AcceptContract",
            TxBody::RejectContract { .. } => "RejectContract",
            TxBody::UpdateContract { .. } => "UpdateContract",
            TxBody::TopUp { .. } => "TopUp",
            TxBody::ReportUsage { .. } => "ReportUsage",
            TxBody::CancelContract { .. } => "CancelContract",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("signer {0} is not a valid ed25519 public key")]
    BadKey(PublicKey),
    #[error("signature does not verify for signer {0}")]
    BadSignature(PublicKey),
}

/// A domain tag followed by the postcard encoding of `value`: the canonical bytes
/// everything on the ledger is signed and hashed over.
pub(crate) fn encode<T: Serialize>(domain: &[u8], value: &T) -> Vec<u8> {
    let out = domain.to_vec();
    // postcard only fails on types it cannot represent (maps with non-string keys
    // are fine; there are none here), never on values.
    match postcard::to_extend(value, out) {
        Ok(v) => v,
        Err(e) => unreachable!("postcard cannot encode a ledger type: {e}"),
    }
}

impl Tx {
    /// The exact bytes that are signed and hashed.
    pub fn signing_bytes(&self) -> Vec<u8> {
        encode(TX_DOMAIN, self)
    }

    pub fn hash(&self) -> Hash {
        Hash::of(&self.signing_bytes())
    }

    pub fn sign(self, key: &SigningKey) -> SignedTx {
        let signature = Signature(key.sign(&self.signing_bytes()).to_bytes());
        SignedTx {
            tx: self,
            signature,
        }
    }
}

impl SignedTx {
    pub fn hash(&self) -> Hash {
        self.tx.hash()
    }

    pub fn verify(&self) -> Result<(), SignatureError> {
        verify_sig(&self.tx.signer, &self.tx.signing_bytes(), &self.signature)
    }

    /// Checks the signature; the returned proof is what the state machine accepts.
    pub fn into_verified(self) -> Result<VerifiedTx, SignatureError> {
        self.verify()?;
        Ok(VerifiedTx(self))
    }
}

pub(crate) fn verify_sig(
    signer: &PublicKey,
    msg: &[u8],
    sig: &Signature,
) -> Result<(), SignatureError> {
    let vk = VerifyingKey::from_bytes(&signer.0).map_err(|_| SignatureError::BadKey(*signer))?;
    let sig = ed25519_dalek::Signature::from_bytes(&sig.0);
    vk.verify_strict(msg, &sig)
        .map_err(|_| SignatureError::BadSignature(*signer))
}

/// A transaction whose signature has been checked. Only [`SignedTx::into_verified`]
/// makes one, and the ledger's own replay of blocks it wrote and fsynced itself.
#[derive(Clone, Debug)]
pub struct VerifiedTx(SignedTx);

impl VerifiedTx {
    pub fn get(&self) -> &SignedTx {
        &self.0
    }

    pub fn into_inner(self) -> SignedTx {
        self.0
    }

    /// For blocks read back from the ledger's own store at start-up: they were
    /// verified before they were written. `cellos ledger verify` does not use this.
    pub(crate) fn trusted(tx: SignedTx) -> Self {
        VerifiedTx(tx)
    }
}

/// A farm's consent for a node to join already approved. Signed by the farm's
/// enrollment key over {chain id, farm, expiry}; it is a bearer token an image
/// carries on its cmdline (`cellos.enroll=`), so it carries an expiry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollToken {
    pub farm: FarmId,
    /// Ledger time after which the token is no longer accepted.
    pub expires: u64,
    pub signature: Signature,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad enrollment token: {0} (expected <farm>.<expires>.<128 hex digits>)")]
pub struct EnrollTokenParseError(String);

impl EnrollToken {
    fn message(chain_id: &str, farm: FarmId, expires: u64) -> Vec<u8> {
        encode(ENROLL_DOMAIN, &(chain_id, farm, expires))
    }

    pub fn issue(key: &SigningKey, chain_id: &str, farm: FarmId, expires: u64) -> Self {
        let sig = key.sign(&Self::message(chain_id, farm, expires));
        EnrollToken {
            farm,
            expires,
            signature: Signature(sig.to_bytes()),
        }
    }

    pub fn verify(&self, chain_id: &str, key: &PublicKey) -> Result<(), SignatureError> {
        verify_sig(
            key,
            &Self::message(chain_id, self.farm, self.expires),
            &self.signature,
        )
    }

    /// The text form used on the kernel cmdline.
    pub fn to_text(&self) -> String {
        format!("{}.{}.{}", self.farm, self.expires, self.signature)
    }

    pub fn parse(s: &str) -> Result<Self, EnrollTokenParseError> {
        let mut parts = s.trim().splitn(3, '.');
        let bad = |m: &str| EnrollTokenParseError(m.to_string());
        let farm = parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| bad("the farm id is not a number"))?;
        let expires = parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| bad("the expiry is not a number"))?;
        let signature = parts
            .next()
            .ok_or_else(|| bad("the signature is missing"))?
            .parse()
            .map_err(|e: ParseBytesError| bad(&e.to_string()))?;
        Ok(EnrollToken {
            farm,
            expires,
            signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn tx(k: &SigningKey, nonce: u64) -> Tx {
        Tx {
            chain_id: "test".into(),
            signer: PublicKey(k.verifying_key().to_bytes()),
            nonce,
            body: TxBody::Faucet { amount: 5 },
        }
    }

    #[test]
    fn signing_is_deterministic_and_covers_everything() {
        let k = key(1);
        let a = tx(&k, 1);
        assert_eq!(a.signing_bytes(), tx(&k, 1).signing_bytes());
        assert!(a.signing_bytes().starts_with(TX_DOMAIN));
        let s = a.clone().sign(&k);
        assert!(s.verify().is_ok());
        assert!(s.clone().into_verified().is_ok());

        let mut other_nonce = s.clone();
        other_nonce.tx.nonce = 2;
        assert_eq!(
            other_nonce.verify().unwrap_err(),
            SignatureError::BadSignature(s.tx.signer)
        );
        let mut other_chain = s.clone();
        other_chain.tx.chain_id = "prod".into();
        assert!(other_chain.verify().is_err());
        let mut other_body = s.clone();
        other_body.tx.body = TxBody::Faucet { amount: 6 };
        assert!(other_body.verify().is_err());
        let mut other_signer = s;
        other_signer.tx.signer = PublicKey(key(2).verifying_key().to_bytes());
        assert!(other_signer.verify().is_err());
    }

    #[test]
    fn json_rejects_unknown_fields() {
        let k = key(1);
        let s = tx(&k, 1).sign(&k);
        let mut v = serde_json::to_value(&s).expect("json");
        v["tx"]["body"]["faucet"]["bogus"] = serde_json::json!(1);
        let err = serde_json::from_value::<SignedTx>(v).unwrap_err();
        assert!(err.to_string().contains("unknown field `bogus`"), "{err}");
        let mut v = serde_json::to_value(&s).expect("json");
        v["extra"] = serde_json::json!(1);
        assert!(serde_json::from_value::<SignedTx>(v).is_err());
    }

    #[test]
    fn enroll_token_round_trip() {
        let k = key(3);
        let t = EnrollToken::issue(&k, "test", 4, 1000);
        let parsed = EnrollToken::parse(&t.to_text()).expect("parse");
        assert_eq!(parsed, t);
        let pk = PublicKey(k.verifying_key().to_bytes());
        assert!(parsed.verify("test", &pk).is_ok());
        assert!(parsed.verify("other", &pk).is_err());
        let mut wrong_farm = parsed;
        wrong_farm.farm = 5;
        assert!(wrong_farm.verify("test", &pk).is_err());
        assert!(EnrollToken::parse("x.1.00").is_err());
        assert!(EnrollToken::parse("1.2.zz").is_err());
        assert!(EnrollToken::parse("1").is_err());
    }
}
