//! What gwctl prints to a terminal. Names, messages and a peer's refusal come from a gateway,
//! which may pass on what other peers sent: a control character there would clear the screen,
//! retitle the window or forge a line of output. As kubectl does, every such character is
//! written as an escape, except the line breaks and tabs of gwctl's own layout. The escape is
//! `\uXXXX`, which a JSON string reads as the same character, so `-o json` stays valid and
//! means what the gateway sent. YAML is escaped only on a terminal (see [`yaml`]).

use std::borrow::Cow;
use std::fmt::Write as _;

use clusterlink_api::text::is_unsafe_char;

/// `text` with every unsafe character but `\n` and `\t` escaped.
pub fn safe(text: &str) -> Cow<'_, str> {
    let unsafe_here = |c: char| c != '\n' && c != '\t' && is_unsafe_char(c);
    if !text.contains(unsafe_here) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if unsafe_here(c) {
            // Every unsafe character is in the Basic Multilingual Plane: four digits hold it.
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// YAML as it should reach stdout: [safe](safe) on a terminal; exact when piped (into
/// `gwctl apply`, say), since a YAML plain scalar would read an escape as text.
pub fn yaml(text: &str) -> Cow<'_, str> {
    use std::io::IsTerminal as _;
    if std::io::stdout().is_terminal() {
        safe(text)
    } else {
        Cow::Borrowed(text)
    }
}

/// `print!`, made [safe](safe) for a terminal.
macro_rules! out {
    ($($arg:tt)*) => { print!("{}", $crate::terminal::safe(&format!($($arg)*))) };
}

/// `println!`, made [safe](safe) for a terminal.
macro_rules! outln {
    ($($arg:tt)*) => { println!("{}", $crate::terminal::safe(&format!($($arg)*))) };
}

/// `eprintln!`, made [safe](safe) for a terminal.
macro_rules! errln {
    ($($arg:tt)*) => { eprintln!("{}", $crate::terminal::safe(&format!($($arg)*))) };
}

pub(crate) use {errln, out, outln};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_are_written_out_and_the_layout_is_kept() {
        assert_eq!(
            safe("a\tb\n\x1b]0;pwned\x07\x1b[2J\r\u{9b}\u{202e}"),
            "a\tb\n\\u001b]0;pwned\\u0007\\u001b[2J\\u000d\\u009b\\u202e"
        );
        assert!(matches!(safe("plain ✓\n"), Cow::Borrowed(_)));
    }

    #[test]
    fn escaped_json_still_reads_as_what_was_sent() {
        let sent = "denied\u{9b}2J\u{7f}\u{202e}";
        let json = serde_json::to_string(&serde_json::json!({ "message": sent })).unwrap();
        let shown = safe(&json);
        assert!(!shown.contains(|c: char| is_unsafe_char(c)), "{shown}");
        let read: serde_json::Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(read["message"], sent);
    }

    #[test]
    fn escaped_yaml_still_reads_as_what_was_sent() {
        let sent = "denied\x1b[2J\u{9b}\u{7f}\r\u{202e}";
        let yaml = serde_yaml_ng::to_string(&serde_json::json!({ "message": sent })).unwrap();
        let shown = safe(&yaml);
        assert!(
            !shown.contains(|c: char| c != '\n' && is_unsafe_char(c)),
            "{shown}"
        );
        let read: serde_json::Value = serde_yaml_ng::from_str(&shown).unwrap();
        assert_eq!(read["message"], sent, "{shown}");
    }
}
