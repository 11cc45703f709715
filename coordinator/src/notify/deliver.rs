//! Sending one notification to one receiver: a signed JSON webhook, an ntfy topic
//! POST, or a mail through an SMTP relay (a minimal hand-written dialogue: EHLO,
//! MAIL, RCPT, DATA, QUIT; no AUTH, no STARTTLS: a lab's relay). Every byte read
//! from a receiver is size-bounded; errors never carry a URL's path or a secret.
use anyhow::{Result, bail};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::{Entry, Kind, Notification, Receiver, Via, cut, hex};
use crate::state::State;

/// How long connecting to a receiver may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one read or write to a receiver may wait (and a whole HTTP exchange).
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// Most bytes of a receiver's HTTP answer read (for the error line).
pub const MAX_ANSWER_BYTES: u64 = 4096;

/// Longest SMTP reply line read; most lines in one reply.
const MAX_SMTP_LINE: u64 = 1024;
const MAX_SMTP_LINES: usize = 64;

/// The webhook signature header: `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "Kiln-Signature";

/// The idempotency-key header of webhook and ntfy deliveries.
pub const KEY_HEADER: &str = "Kiln-Delivery";

/// The event header of webhook deliveries.
pub const EVENT_HEADER: &str = "Kiln-Event";

/// Checks a webhook or ntfy URL: `http(s)://host[:port][/path]`. Returns host:port.
pub fn http_target(url: &str) -> Result<String> {
    if let Some(rest) = url.strip_prefix("https://") {
        return host_port(rest, 443, "https://");
    }
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("a receiver URL starts with http:// or https://");
    };
    host_port(rest, 80, "http://")
}

/// Checks an SMTP URL: `smtp://host[:port]` (port 25 by default). Returns host:port.
pub fn smtp_target(url: &str) -> Result<String> {
    let Some(rest) = url.strip_prefix("smtp://") else {
        bail!("an SMTP receiver is smtp://host[:port]");
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        bail!("an SMTP receiver is smtp://host[:port], nothing more");
    }
    host_port(rest, 25, "smtp://")
}

fn host_port(rest: &str, default_port: u16, scheme: &str) -> Result<String> {
    let auth = rest.split(['/', '?', '#']).next().unwrap_or("");
    if auth.is_empty() || auth.contains('@') || url_unsafe(rest) {
        bail!("bad receiver URL {scheme}{}", super::redact(rest));
    }
    let (host, port) = match auth.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || auth.starts_with('[') => {
            let port: u16 = p
                .parse()
                .map_err(|_| anyhow::anyhow!("bad port in {scheme}{auth}"))?;
            (h, port)
        }
        _ => (auth, default_port),
    };
    if host.is_empty() {
        bail!("no host in {scheme}{auth}");
    }
    Ok(format!("{host}:{port}"))
}

fn url_unsafe(s: &str) -> bool {
    s.bytes().any(|b| b <= b' ' || b == 0x7f) || s.len() > 2048
}

/// Checks a mail address: `local@domain`, no spaces, brackets or line breaks.
pub fn check_address(a: &str) -> Result<()> {
    let ok = a.len() <= 254
        && a.split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && !d.contains('@'))
        && a.bytes()
            .all(|b| b.is_ascii_graphic() && !b"<>()[],;:\\\"".contains(&b));
    if !ok {
        bail!("bad mail address {a:?}");
    }
    Ok(())
}

/// HMAC-SHA256 of `body` with `key`, as `sha256=<hex>` ([`SIGNATURE_HEADER`]).
pub fn signature(key: &[u8], body: &[u8]) -> String {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(body);
    format!("sha256={}", hex(&m.finalize().into_bytes()))
}

/// Sends `e` to `r`; the error is one line for the outbox and the log.
pub fn send(state: &State, r: &Receiver, e: &Entry) -> Result<(), String> {
    let secret = match &r.secret {
        Some(name) => Some(
            state
                .secret(name)
                .map_err(|_| format!("secret {name:?} is not set"))?,
        ),
        None => None,
    };
    match r.via {
        Via::Webhook => webhook(r, &e.notification, secret.as_deref()),
        Via::Ntfy => ntfy(r, &e.notification, secret.as_deref()),
        Via::Smtp => smtp(r, &e.notification),
    }
}

/// An HTTP client for receiver `r`: over https, its pinned certificates (`ca`) or
/// else the public roots.
fn agent_for(r: &Receiver) -> Result<ureq::Agent, String> {
    let mut b = ureq::AgentBuilder::new()
        .timeout_connect(CONNECT_TIMEOUT)
        .timeout(IO_TIMEOUT)
        .redirects(0)
        .user_agent(concat!("kiln-coordinator/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = &r.ca {
        let config =
            crate::power::tls::client_config(&crate::power::tls::Trust::Pinned(pem.clone()))
                .map_err(|e| format!("{e:#}"))?;
        b = b.tls_config(config);
    }
    Ok(b.build())
}

fn webhook(r: &Receiver, n: &Notification, key: Option<&[u8]>) -> Result<(), String> {
    let body = serde_json::to_vec(n).map_err(|e| e.to_string())?;
    let mut req = agent_for(r)?
        .post(&r.url)
        .set("Content-Type", "application/json")
        .set(KEY_HEADER, &n.key)
        .set(EVENT_HEADER, n.event.as_str());
    if let Some(k) = key {
        req = req.set(SIGNATURE_HEADER, &signature(k, &body));
    }
    answer(req.send_bytes(&body))
}

/// The ntfy tag (an emoji short code) of a kind.
fn tag(k: Kind) -> &'static str {
    match k {
        Kind::Failed => "x",
        Kind::Passed => "white_check_mark",
        Kind::Held => "pause_button",
        Kind::NeverBooted => "zzz",
        Kind::Stale => "hourglass",
        Kind::Contested => "warning",
    }
}

/// The one-line title of a notification (ntfy's Title, the mail's Subject).
pub fn title(n: &Notification) -> String {
    let host = if n.host.is_empty() {
        String::new()
    } else {
        format!(" on {}", n.host)
    };
    header_safe(&format!("kiln: {}{host} ({})", n.event.as_str(), n.plan))
}

/// The text of a notification (ntfy's message, the mail's body): one field a line,
/// each cut to one line (no CR or LF inside: nothing to smuggle into a mail).
pub fn text(n: &Notification) -> String {
    format!(
        "run {}\nhost {}\nplan {}\nevent {}\n{}\nkey {}\n",
        cut(&n.run, 64),
        cut(&n.host, 200),
        cut(&n.plan, 200),
        n.event.as_str(),
        cut(&n.detail, super::MAX_DETAIL),
        cut(&n.key, 64)
    )
}

/// Printable ASCII only (a header value): anything else becomes `?`.
fn header_safe(s: &str) -> String {
    cut(s, 200)
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

fn ntfy(r: &Receiver, n: &Notification, token: Option<&[u8]>) -> Result<(), String> {
    let priority = match n.event {
        Kind::Failed | Kind::Contested | Kind::NeverBooted => "high",
        _ => "default",
    };
    let mut req = agent_for(r)?
        .post(&r.url)
        .set("Title", &title(n))
        .set("Tags", tag(n.event))
        .set("Priority", priority)
        .set(KEY_HEADER, &n.key);
    if let Some(t) = token {
        let t = std::str::from_utf8(t)
            .map_err(|_| "the ntfy token is not UTF-8".to_string())?
            .trim();
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    answer(req.send_string(&text(n)))
}

/// Ok for a 2xx; else one line with the status and the start of the answer.
fn answer(r: Result<ureq::Response, ureq::Error>) -> Result<(), String> {
    match r {
        Ok(_) => Ok(()),
        Err(ureq::Error::Status(code, resp)) => {
            let mut body = Vec::new();
            let _ = resp
                .into_reader()
                .take(MAX_ANSWER_BYTES)
                .read_to_end(&mut body);
            let body = String::from_utf8_lossy(&body);
            Err(format!("HTTP {code}: {}", header_safe(body.trim())))
        }
        // Not the transport error's Display: it names the URL, whose path may hold a
        // token.
        Err(ureq::Error::Transport(t)) => {
            let cause = std::error::Error::source(&t).map(|s| format!(" ({s})"));
            Err(format!(
                "{}{}{}",
                t.kind(),
                t.message().map(|m| format!(": {m}")).unwrap_or_default(),
                cause.unwrap_or_default()
            ))
        }
    }
}

fn smtp(r: &Receiver, n: &Notification) -> Result<(), String> {
    let target = smtp_target(&r.url).map_err(|e| e.to_string())?;
    let from = r.from.as_deref().ok_or("no sender address")?;
    let addr = target
        .to_socket_addrs()
        .map_err(|e| format!("resolving {target}: {e}"))?
        .next()
        .ok_or_else(|| format!("{target} resolves to no address"))?;
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .map_err(|e| format!("connecting to {target}: {e}"))?;
    let io = |e: std::io::Error| format!("{target}: {e}");
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    let mut w = stream.try_clone().map_err(io)?;
    let mut rd = BufReader::new(stream);
    let mut say = |cmd: &str, want: &[u16], rd: &mut BufReader<TcpStream>| {
        if !cmd.is_empty() {
            w.write_all(cmd.as_bytes())
                .and_then(|()| w.write_all(b"\r\n"))
                .map_err(io)?;
        }
        let (code, line) = reply(rd).map_err(|e| format!("{target}: {e}"))?;
        if want.contains(&code) {
            Ok(())
        } else {
            let what = cmd.split([' ', ':']).next().unwrap_or("greeting");
            let what = if what.is_empty() { "greeting" } else { what };
            Err(format!("{target}: {what}: {}", header_safe(&line)))
        }
    };
    say("", &[220], &mut rd)?;
    say("EHLO kiln-coordinator", &[250], &mut rd)?;
    say(&format!("MAIL FROM:<{from}>"), &[250], &mut rd)?;
    for to in &r.to {
        say(&format!("RCPT TO:<{to}>"), &[250, 251], &mut rd)?;
    }
    say("DATA", &[354], &mut rd)?;
    say(&message(from, &r.to, n), &[250], &mut rd)?;
    let _ = say("QUIT", &[221], &mut rd);
    Ok(())
}

/// The mail: headers, the text dot-stuffed with CRLF line ends, and the closing
/// `.` line (without its last CRLF, which the dialogue adds).
pub fn message(from: &str, to: &[String], n: &Notification) -> String {
    let date = httpdate::fmt_http_date(
        std::time::UNIX_EPOCH + Duration::from_secs(n.time), // "GMT": RFC 5322 obs-zone
    );
    let mut m = format!(
        "From: <{from}>\r\nTo: {}\r\nSubject: {}\r\nDate: {date}\r\nMessage-ID: <{}@kiln>\r\n\
         X-Kiln-Delivery: {}\r\nX-Kiln-Event: {}\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
        to.iter()
            .map(|a| format!("<{a}>"))
            .collect::<Vec<_>>()
            .join(", "),
        title(n),
        n.key,
        n.key,
        n.event.as_str(),
    );
    for line in text(n).lines() {
        if line.starts_with('.') {
            m.push('.');
        }
        m.push_str(line);
        m.push_str("\r\n");
    }
    m.push('.');
    m
}

/// Reads one SMTP reply (its lines `NNN-…` then `NNN …`): the code and last line.
fn reply(rd: &mut impl BufRead) -> Result<(u16, String), String> {
    for _ in 0..MAX_SMTP_LINES {
        let mut buf = Vec::new();
        rd.take(MAX_SMTP_LINE + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| e.to_string())?;
        if buf.is_empty() {
            return Err("connection closed".into());
        }
        if !buf.ends_with(b"\n") {
            return Err("reply line too long".into());
        }
        let line = String::from_utf8_lossy(&buf).trim_end().to_string();
        let code = line
            .get(..3)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| format!("not an SMTP reply: {}", header_safe(&line)))?;
        match line.as_bytes().get(3) {
            Some(b'-') => continue,
            None | Some(b' ') => return Ok((code, line)),
            Some(_) => return Err(format!("not an SMTP reply: {}", header_safe(&line))),
        }
    }
    Err("SMTP reply too long".into())
}
