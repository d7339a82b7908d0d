//! Binding a listener and saying where: every service binds its listeners through [`bind`],
//! which logs one `listening` line naming the setting and the address actually bound. With port
//! 0 in the setting, the kernel picks a free port and that line is how a supervisor (the
//! integration tests) learns it, without choosing a port first and hoping it stays free.
//!
//! [`report`] is the only writer of the line and [`parse`] its only reader; the line is an
//! ordinary log event, so it reads the same in both log formats (text, with or without ANSI
//! colours, and JSON).

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// The message of the line.
const MESSAGE: &str = "listening";

/// Binds `addr` (from the setting named `setting`, e.g. `CHAT_HTTP_ADDR`) and reports the bound
/// address; an error names the setting.
pub async fn bind(setting: &'static str, addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} ({setting}): {e}"),
        )
    })?;
    report(setting, listener.local_addr()?);
    Ok(listener)
}

/// Logs `listening setting=<setting> addr=<bound address>`.
pub fn report(setting: &'static str, addr: SocketAddr) {
    // Display, not Debug: the text format would quote a `&str` field.
    tracing::info!(setting = %setting, %addr, "{MESSAGE}");
}

/// The setting and address of a `listening` line of a service's output, if `line` is one.
pub fn parse(line: &str) -> Option<(String, SocketAddr)> {
    let line = strip_ansi(line);
    if line.trim_start().starts_with('{') {
        let event: serde_json::Value = serde_json::from_str(&line).ok()?;
        let fields = event.get("fields").unwrap_or(&event);
        if fields["message"] != MESSAGE {
            return None;
        }
        let setting = fields["setting"].as_str()?.to_owned();
        return Some((setting, fields["addr"].as_str()?.parse().ok()?));
    }
    // Text: `<time> INFO <target>: listening setting=… addr=…`.
    let (_, fields) = line.split_once(&format!(": {MESSAGE} "))?;
    let mut setting = None;
    let mut addr = None;
    for field in fields.split_whitespace() {
        match field.split_once('=') {
            Some(("setting", value)) => setting = Some(value.trim_matches('"').to_owned()),
            Some(("addr", value)) => addr = value.parse().ok(),
            _ => {}
        }
    }
    Some((setting?, addr?))
}

/// `line` without ANSI escape sequences (`ESC [ … letter`): the text format colours fields.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn reads_the_line_in_every_log_format() {
        let addr = "127.0.0.1:43123".parse().unwrap();
        let want = Some(("CHAT_WS_ADDR".to_owned(), addr));
        let coloured = "\u{1b}[2m2026-12-02T05:38:18.830535Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \
            \u{1b}[2mtelemetry::listening\u{1b}[0m\u{1b}[2m:\u{1b}[0m listening \
            \u{1b}[3msetting\u{1b}[0m\u{1b}[2m=\u{1b}[0mCHAT_WS_ADDR \
            \u{1b}[3maddr\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:43123";
        assert_eq!(parse(coloured), want);
        let plain = "2026-12-02T05:38:18.830535Z  INFO telemetry::listening: listening \
            setting=CHAT_WS_ADDR addr=127.0.0.1:43123";
        assert_eq!(parse(plain), want);
        let quoted = "2026-12-02T05:38:18.830535Z  INFO telemetry::listening: listening \
            setting=\"CHAT_WS_ADDR\" addr=127.0.0.1:43123";
        assert_eq!(parse(quoted), want);
        let json = r#"{"timestamp":"2026-12-02T05:38:18.830535Z","level":"INFO","message":"listening","setting":"CHAT_WS_ADDR","addr":"127.0.0.1:43123","target":"telemetry::listening"}"#;
        assert_eq!(parse(json), want);
        for other in [
            "2026-12-02T05:38:18Z  INFO chat_api: REST API listening addr=127.0.0.1:1",
            "2026-12-02T05:38:18Z  INFO x: listening setting=CHAT_WS_ADDR addr=nonsense",
            r#"{"message":"shutdown requested"}"#,
            "",
        ] {
            assert_eq!(parse(other), None, "{other}");
        }
    }
}
