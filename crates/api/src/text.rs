//! Text that came from elsewhere (a peer's refusal message, a name a request carried), made safe
//! to print: in a log line, where a line break would forge the next line, and in a terminal,
//! where an escape sequence would clear the screen or retitle the window.
//!
//! Every control character (C0, DEL, C1) and every bidirectional override (which reorders what a
//! reader sees, as in "Trojan Source") is written as a `\u{…}` escape, the way Rust's own
//! `escape_debug` writes them; everything else is kept, so ordinary text reads as it was sent.

use std::fmt;

/// Whether `c` changes how a terminal or a log reader shows what follows it.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Writes `text` with every [unsafe character](is_unsafe_char) escaped.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(is_unsafe_char) {
            f.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            write!(f, "\\u{{{:x}}}", c as u32)?;
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

/// `text` with every [unsafe character](is_unsafe_char) escaped; borrowed when there is none.
pub fn escaped(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains(is_unsafe_char) {
        std::borrow::Cow::Owned(Escaped(text).to_string())
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_breaks_and_escape_sequences_are_written_out() {
        assert_eq!(
            escaped("denied\n2026-12-06T00:00:00Z INFO forged"),
            "denied\\u{a}2026-12-06T00:00:00Z INFO forged"
        );
        assert_eq!(escaped("a\rb"), "a\\u{d}b");
        // Screen clear, a window title (OSC ... BEL), a C1 CSI and DEL.
        assert_eq!(
            escaped("\x1b[2J\x1b]0;pwned\x07\u{9b}31m\x7f"),
            "\\u{1b}[2J\\u{1b}]0;pwned\\u{7}\\u{9b}31m\\u{7f}"
        );
        assert_eq!(escaped("admin\u{202E}txt.exe"), "admin\\u{202e}txt.exe");
    }

    #[test]
    fn ordinary_text_is_kept_as_it_is() {
        for text in [
            "",
            "peer server1 has no export default/web",
            "Zürich → 東京 ✓",
        ] {
            assert!(matches!(escaped(text), std::borrow::Cow::Borrowed(_)));
            assert_eq!(Escaped(text).to_string(), text);
        }
    }
}
