//! cellos-ledger.
