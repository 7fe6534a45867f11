//! The boot stick, as the image builder writes it and init reads it.
//!
//! A farmer writes `cellos-usb.img` to a stick once and changes farm, ledger or enrollment
//! token afterwards by editing one text file on the stick's FAT partition. The image build
//! names that partition [`PARTITION_NAME`], puts [`CONFIG_FILE`] at its root and adds
//! [`USB_MARKER`] to the USB image's cmdline only, so a PXE boot never waits for a stick
//! that is not there; init finds the partition by that name and reads the file with
//! [`parse_file`].
//!
//! The file is strict TOML with four optional keys (`farm`, `ledger`, `enroll`, `extra`);
//! anything else, or a value the cmdline parser would refuse, rejects the whole file, and
//! the values built into the image stay.

use serde::Deserialize;

use crate::cmdline::{self, key, CmdlineError};

/// The key of the marker, as a literal both constants below are built from.
macro_rules! boot_key {
    () => {
        "cellos.boot"
    };
}

/// The cmdline key that says how the node booted.
pub const BOOT_KEY: &str = boot_key!();
/// What the USB image adds to the cmdline: the node booted from a cellos USB image, so init
/// looks for the boot partition and its [`CONFIG_FILE`].
pub const USB_MARKER: &str = concat!(boot_key!(), "=usb");
/// The GPT name of the boot partition; Linux shows it as `PARTNAME` in the partition's
/// uevent, which is how init finds the stick.
pub const PARTITION_NAME: &str = "cellos-boot";
/// The config file at the root of the boot partition.
pub const CONFIG_FILE: &str = "cellos.cfg";

/// Whether the cmdline says the node booted from a cellos USB image: the last
/// [`BOOT_KEY`] on it is [`USB_MARKER`].
pub fn from_stick(cmdline: &str) -> bool {
    cmdline
        .split_whitespace()
        .rfind(|w| w.strip_prefix(BOOT_KEY).is_some_and(|v| v.starts_with('=')))
        == Some(USB_MARKER)
}

/// Whether a cmdline error is only the cmdline parser not knowing [`BOOT_KEY`], which
/// init handles itself.
pub fn is_boot_key(e: &CmdlineError) -> bool {
    matches!(e, CmdlineError::UnknownKey { key } if key == BOOT_KEY)
}

/// Why a `cellos.cfg` was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    /// Not TOML, an unknown key, or a value of the wrong type.
    #[error("line {line}: {message}")]
    Syntax { line: usize, message: String },
    /// A key whose value cellos cannot use.
    #[error("{key}: {reason}")]
    Value { key: &'static str, reason: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    farm: Option<u32>,
    ledger: Option<String>,
    enroll: Option<String>,
    extra: Option<String>,
}

/// One word a value must be: the kernel splits the cmdline on spaces.
fn word(key: &'static str, value: &str) -> Result<(), FileError> {
    if value.contains(|c: char| c.is_whitespace() || c == '"' || c.is_control()) {
        return Err(FileError::Value {
            key,
            reason: format!("{value:?} must be one word without spaces or quotes"),
        });
    }
    Ok(())
}

/// Parses `cellos.cfg` into the cmdline words it stands for (`cellos.farm=3 ...`), to
/// be appended to the cmdline so they win. Empty strings and missing keys add nothing.
pub fn parse_file(text: &str) -> Result<String, FileError> {
    // Windows editors may add a byte order mark; CRLF line ends are TOML already.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
        // serde reports an unknown key against the whole table: find its own line.
        let unknown = message
            .strip_prefix("unknown field `")
            .and_then(|m| m.split('`').next())
            .and_then(|key| {
                text.lines()
                    .position(|l| l.trim_start().starts_with(key))
                    .map(|i| i + 1)
            });
        let at = e.span().map_or(1, |s| {
            text[..s.start.min(text.len())].lines().count().max(1)
        });
        FileError::Syntax {
            line: unknown.unwrap_or(at),
            message,
        }
    })?;
    let mut words = Vec::new();
    if let Some(farm) = raw.farm {
        words.push(format!("{}={farm}", key::FARM));
    }
    for (name, key, value) in [
        ("ledger", key::LEDGER, &raw.ledger),
        ("enroll", key::ENROLL, &raw.enroll),
    ] {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            word(name, v)?;
            words.push(format!("{key}={v}"));
        }
    }
    for w in raw.extra.as_deref().unwrap_or_default().split_whitespace() {
        if !w.starts_with("cellos.") || w.starts_with(&format!("{BOOT_KEY}=")) || w == BOOT_KEY {
            return Err(FileError::Value {
                key: "extra",
                reason: format!(
                    "{w:?}: only cellos.* settings take effect from {CONFIG_FILE} (the kernel has already started)"
                ),
            });
        }
        word("extra", w)?;
        words.push(w.to_string());
    }
    let words = words.join(" ");
    let (_, errors) = cmdline::parse(&words);
    if let Some(e) = errors.first() {
        let name = match e {
            CmdlineError::BadValue { key, .. } | CmdlineError::UnknownKey { key } => {
                match key.as_str() {
                    key::FARM => "farm",
                    key::LEDGER => "ledger",
                    key::ENROLL => "enroll",
                    _ => "extra",
                }
            }
        };
        return Err(FileError::Value {
            key: name,
            reason: e.to_string(),
        });
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_is_read_from_the_cmdline() {
        assert!(from_stick("console=ttyS0 cellos.farm=1 cellos.boot=usb"));
        assert!(!from_stick("console=ttyS0 cellos.farm=1"));
        assert!(!from_stick("cellos.boot=usb cellos.boot=pxe"));
        assert!(!from_stick("cellos.bootx=usb"));
        let (_, errors) = cmdline::parse("cellos.boot=usb cellos.colour=blue");
        let left: Vec<_> = errors.iter().filter(|e| !is_boot_key(e)).collect();
        assert_eq!(left.len(), 1, "{errors:?}");
    }

    #[test]
    fn a_full_file_becomes_cmdline_words() {
        let text = "# comment\r\nfarm = 5\r\nledger = \"http://10.0.2.2:8080\"\r\n\
                    enroll = \"5.abc\"\r\nextra = \" cellos.mode=test  cellos.debug \"\r\n";
        assert_eq!(
            parse_file(&format!("\u{feff}{text}")).unwrap(),
            "cellos.farm=5 cellos.ledger=http://10.0.2.2:8080 cellos.enroll=5.abc \
             cellos.mode=test cellos.debug"
        );
        assert_eq!(parse_file("").unwrap(), "");
        assert_eq!(
            parse_file("enroll = \"\"\nextra = \"\"\nfarm = 2").unwrap(),
            "cellos.farm=2",
            "empty strings keep the image's values"
        );
    }

    #[test]
    fn the_words_win_over_the_cmdline() {
        let baked = "console=ttyS0 cellos.farm=1 cellos.ledger=http://a cellos.enroll=x";
        let words = parse_file("farm = 2\nenroll = \"y\"").unwrap();
        let (cfg, errors) = cmdline::parse(&format!("{baked} {words}"));
        assert!(errors.is_empty());
        assert_eq!(cfg.farm, Some(2));
        assert_eq!(cfg.ledger.as_deref(), Some("http://a"));
        assert_eq!(cfg.enroll.as_deref(), Some("y"));
    }

    #[test]
    fn malformed_files_are_refused_whole_with_the_reason() {
        for (text, want) in [
            ("farm = 3\nledger = http://x\n", "line 2: "),
            ("farm = \"3\"\n", "line 1: invalid type"),
            ("farm = -1\n", "line 1: "),
            (
                "farm = 3\ncolour = \"blue\"\n",
                "line 2: unknown field `colour`",
            ),
            ("farm = 3\nfarm = 4\n", "line 1: duplicate key `farm`"),
            (
                "ledger = \"ftp://x\"",
                "ledger: bad cellos.ledger=\"ftp://x\"",
            ),
            ("enroll = \"a b\"", "enroll: \"a b\" must be one word"),
            ("extra = \"quiet\"", "extra: \"quiet\": only cellos.*"),
            ("extra = \"cellos.mode=staging\"", "extra: bad cellos.mode"),
            (
                "extra = \"cellos.colour=blue\"",
                "extra: unknown key cellos.colour",
            ),
            ("extra = \"cellos.boot=pxe\"", "extra: \"cellos.boot=pxe\""),
        ] {
            let err = parse_file(text).unwrap_err().to_string();
            assert!(err.starts_with(want), "{text:?}: {err}");
            assert!(!err.contains('\n'), "one console line: {err:?}");
        }
    }
}
