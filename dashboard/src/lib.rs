//! cellos-dashboard: the node's console dashboard (tty1), and the view cellosd serves it.
//!
//! A farmer standing at the server sees what the node is (id, key, farm, ledger),
//! what it holds (capacity, pools, NIC addresses) and what it runs (contracts and their
//! workloads), refreshed every few seconds. It only reads: no key on the console stops,
//! changes or reveals anything, and nothing secret is ever in what it is given
//! ([`view`] has no field that could hold one).
//!
//! - [`view`]: the JSON document cellosd writes on its local unix socket; with the
//!   default `tui` feature off this is all the crate is, and all cellosd links.
//! - `model`: the snapshot plus what the dashboard sees itself (NIC addresses, the
//!   time), mapped to the strings and ratios the screen shows; tests feed it directly.
//! - `ui`: draws a model on any ratatui backend (golden tests use `TestBackend`).
//! - `sys`: the tty, the socket and `getifaddrs`, the only OS calls.

pub mod view;

#[cfg(feature = "tui")]
pub mod model;
#[cfg(feature = "tui")]
pub mod sys;
#[cfg(feature = "tui")]
pub mod ui;
