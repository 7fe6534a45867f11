//! The small shell-glob matcher that `modules.alias` patterns need.
//!
//! depmod writes patterns such as `pci:v00008086d*sv*sd*bc02sc00i*` and
//! `usb:v0BDAp8153d[0-2]*dc*...`: only `*`, `?` and bracket classes (`[a-z]`, `[!0-9]`) occur.
//! We match bytes (modaliases are ASCII) with the classic iterative backtracking walk, which
//! is linear enough for these short strings and cannot recurse deeply.

/// Does `text` match the glob `pattern`? A malformed class (no closing `]`) matches a literal `[`.
pub fn matches(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0usize, 0usize);
    // Where to resume after the most recent `*`: (pattern index after it, text index).
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = match p.get(pi) {
            Some(b'*') => {
                star = Some((pi + 1, ti));
                pi += 1;
                continue;
            }
            Some(b'?') => Some(1),
            Some(b'[') => match class(&p[pi..], t[ti]) {
                Some((true, len)) => Some(len),
                Some((false, _)) => None,
                None => (t[ti] == b'[').then_some(1),
            },
            Some(c) => (*c == t[ti]).then_some(1),
            None => None,
        };
        match (step, star) {
            (Some(len), _) => {
                pi += len;
                ti += 1;
            }
            (None, Some((sp, st))) => {
                pi = sp;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            (None, None) => return false,
        }
    }
    p[pi.min(p.len())..].iter().all(|c| *c == b'*')
}

/// Match byte `c` against the class starting at `p[0] == b'['`.
/// Returns `(matched, class length in pattern bytes)`, or `None` if the class is unterminated.
fn class(p: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(i), Some(b'!') | Some(b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = *p.get(i)?;
        if lo == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if p.get(i + 1) == Some(&b'-') && p.get(i + 2).is_some_and(|hi| *hi != b']') {
            let hi = *p.get(i + 2)?;
            if lo <= c && c <= hi {
                matched = true;
            }
            i += 3;
        } else {
            if lo == c {
                matched = true;
            }
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn literals_and_wildcards() {
        assert!(matches("abc", "abc"));
        assert!(!matches("abc", "abd"));
        assert!(!matches("abc", "abcd"));
        assert!(!matches("abcd", "abc"));
        assert!(matches("a?c", "abc"));
        assert!(!matches("a?c", "ac"));
        assert!(matches("*", ""));
        assert!(matches("a*", "a"));
        assert!(matches("*c", "abc"));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(matches("a*b*c", "abbbc"));
        assert!(!matches("a*b*c", "aXXbYY"));
        assert!(matches("**x", "x"));
        assert!(!matches("", "x"));
        assert!(matches("", ""));
    }

    #[test]
    fn classes() {
        assert!(matches("d[0-2]", "d1"));
        assert!(!matches("d[0-2]", "d3"));
        assert!(matches("d[!0-2]", "d3"));
        assert!(matches("d[^0-2]", "d3"));
        assert!(!matches("d[!0-2]", "d0"));
        assert!(matches("[abc]x", "bx"));
        assert!(matches("[]a]", "]"));
        assert!(matches("[a-]", "-"));
        assert!(matches("[0-9A-F]*", "Bzz"));
        // unterminated class is a literal '['
        assert!(matches("x[ab", "x[ab"));
        assert!(!matches("x[ab", "xa"));
    }

    #[test]
    fn real_modalias_patterns() {
        let alias = "pci:v00008086d0000100Esv00008086sd0000001Ebc02sc00i00";
        assert!(matches("pci:v00008086d0000100Esv*sd*bc*sc*i*", alias));
        assert!(!matches("pci:v00008086d0000100Fsv*sd*bc*sc*i*", alias));
        assert!(matches("pci:v*d*sv*sd*bc02sc00i*", alias));
        let usb = "usb:v0BDAp8153d3000dc00dsc00dp00icFFisc00ip00in00";
        assert!(matches(
            "usb:v0BDAp8153d[0-2]*dc*dsc*dp*ic*isc*ip*in*",
            "usb:v0BDAp8153d2000dc00dsc00dp00icFFisc00ip00in00"
        ));
        assert!(!matches(
            "usb:v0BDAp8153d[0-2]*dc*dsc*dp*ic*isc*ip*in*",
            usb
        ));
        assert!(matches("acpi*:PNP0C0C:*", "acpi:PNP0C0C:"));
        assert!(matches("virtio:d00000001v*", "virtio:d00000001v00001AF4"));
    }
}
