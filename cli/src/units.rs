//! Sizes on the command line: `512M`, `2G`, `2GiB`, `1T` or plain bytes (binary
//! units), read exactly as sizes in deployment files are.

pub fn parse_size(s: &str) -> Result<u64, String> {
    cellos_ledger::deployment::Size::parse(s).map(|size| size.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1t"), Ok(1 << 40));
        assert!(parse_size("G").is_err());
        assert!(parse_size("2X").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
