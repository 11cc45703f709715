//! `GET|POST /login`, `POST /logout`, who a request comes from (a session cookie or
//! an API token), and the guards the reading and acting routes pass.
use tiny_http::{Request, Response, ResponseBox, StatusCode};

use super::{Ctx, Reply, hdr, header, read_body, text};
use crate::auth::{Identity, Role, Session};
use crate::html::escape;
use crate::ingest::Refusal;

/// The session cookie's name.
pub const COOKIE: &str = "kiln_session";
/// Largest login or action form read.
pub const MAX_FORM: usize = 8 * 1024;

const HTML: &str = "text/html; charset=utf-8";

/// Who is asking, and through what.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A browser session (forms must carry its CSRF token).
    Session(String, Session),
    /// An API token (`Authorization: Bearer …`): no CSRF, a script's own request.
    Token(Identity),
}

impl Caller {
    /// The identity behind it.
    pub fn who(&self) -> &Identity {
        match self {
            Caller::Session(_, s) => &s.who,
            Caller::Token(i) => i,
        }
    }
}

fn cookie<'r>(rq: &'r Request, name: &str) -> Option<&'r str> {
    rq.headers()
        .iter()
        .filter(|h| h.field.equiv("Cookie"))
        .flat_map(|h| h.value.as_str().split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The caller, if the request carries a valid token or session.
pub fn caller(ctx: &Ctx, rq: &Request) -> Option<Caller> {
    if let Some(auth) = header(rq, "Authorization") {
        let token = auth.strip_prefix("Bearer ")?;
        return crate::auth::check_token(&ctx.state, token.trim()).map(Caller::Token);
    }
    let id = cookie(rq, COOKIE)?;
    ctx.sessions
        .get(id)
        .map(|s| Caller::Session(id.to_string(), s))
}

/// Guard of a page: the caller, `None` when reading is public, or a redirect to the
/// login page.
pub fn page_reader(ctx: &Ctx, rq: &Request, here: &str) -> Result<Option<Caller>, ResponseBox> {
    match caller(ctx, rq) {
        Some(c) => Ok(Some(c)),
        None if ctx.public_read => Ok(None),
        None => Err(Response::from_data(Vec::new())
            .with_status_code(StatusCode(303))
            .with_header(hdr(
                "Location",
                &format!("/login?next={}", next_param(here)),
            ))
            .boxed()),
    }
}

/// Guard of a JSON read: the caller, `None` when reading is public, else 401.
pub fn api_reader(ctx: &Ctx, rq: &Request) -> Result<Option<Caller>, Refusal> {
    match caller(ctx, rq) {
        Some(c) => Ok(Some(c)),
        None if ctx.public_read => Ok(None),
        None => Err(Refusal::new(
            401,
            "log in (POST /login) or send Authorization: Bearer <token>",
        )),
    }
}

/// Guard of an action: an operator, and for a browser session the form's CSRF
/// token (`csrf` field or `Kiln-CSRF` header). 403 otherwise.
pub fn operator(ctx: &Ctx, rq: &Request, form_csrf: Option<&str>) -> Result<Caller, Refusal> {
    let Some(c) = caller(ctx, rq) else {
        return Err(Refusal::new(403, "log in as an operator to do this"));
    };
    if c.who().role != Role::Operator {
        return Err(Refusal::new(
            403,
            format!("{} is a viewer: operators only", c.who().name),
        ));
    }
    if let Caller::Session(_, s) = &c {
        let from_header = header(rq, "Kiln-CSRF");
        let given = from_header.as_deref().or(form_csrf).unwrap_or("");
        if given.is_empty() || given != s.csrf {
            return Err(Refusal::new(
                403,
                "missing or wrong CSRF token: reload the page",
            ));
        }
    }
    Ok(c)
}

/// Keeps only a local path for `next=` (never another site).
fn next_param(p: &str) -> String {
    let safe = p.starts_with('/')
        && !p.starts_with("//")
        && p.len() < 512
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b));
    if safe { p.to_string() } else { "/".into() }
}

/// A form body (`application/x-www-form-urlencoded`), bounded.
pub fn form(rq: &mut Request) -> Result<Vec<(String, String)>, Refusal> {
    let body = read_body(rq, MAX_FORM)?;
    Ok(form_urlencoded::parse(&body).into_owned().collect())
}

/// The value of `name` in a form.
pub fn field<'f>(f: &'f [(String, String)], name: &str) -> Option<&'f str> {
    f.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn login_page(status: u16, next: &str, why: Option<&str>) -> ResponseBox {
    let mut out = String::from(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>kiln: log in</title>\
         <style>body{font:14px/1.4 system-ui,sans-serif;margin:3em}input{margin:.3em 0}\
         .error{color:#b3261e}</style></head><body><h1>kiln</h1>\n",
    );
    if let Some(w) = why {
        out.push_str(&format!("<p class=\"error\">{}</p>\n", escape(w)));
    }
    out.push_str(&format!(
        "<form method=\"post\" action=\"/login\"><input type=\"hidden\" name=\"next\" \
         value=\"{}\"><p><label>user<br><input name=\"user\" autocomplete=\"username\" \
         autofocus></label></p><p><label>password<br><input name=\"password\" \
         type=\"password\" autocomplete=\"current-password\"></label></p>\
         <p><button type=\"submit\">log in</button></p></form></body></html>\n",
        escape(&next_param(next))
    ));
    text(status, out, HTML)
}

/// `GET /login`.
pub fn get(query: &str) -> Reply {
    let next = super::param(query, "next").unwrap_or("/");
    Ok(login_page(200, next, None))
}

/// `POST /login`: a right password opens a session (cookie `HttpOnly;
/// SameSite=Strict`, `Secure` when the request came over HTTPS through a proxy);
/// a wrong one is 401; more than [`crate::auth::MAX_FAILURES`] from one address in
/// [`crate::auth::FAIL_WINDOW`] are 429 without checking.
pub fn post(ctx: &Ctx, rq: &mut Request) -> Reply {
    let addr = rq
        .remote_addr()
        .map(|a| a.ip())
        .ok_or_else(|| Refusal::new(400, "request has no peer address"))?;
    if !ctx.sessions.may_try(addr) {
        return Ok(login_page(
            429,
            "/",
            Some("too many wrong passwords from your address: wait five minutes"),
        ));
    }
    let secure = header(rq, "X-Forwarded-Proto").as_deref() == Some("https");
    let f = form(rq)?;
    let next = field(&f, "next").unwrap_or("/");
    let who = match (field(&f, "user"), field(&f, "password")) {
        (Some(u), Some(p)) => crate::auth::check_password(&ctx.state, u, p),
        _ => None,
    };
    let Some(who) = who else {
        ctx.sessions.failed(addr);
        log::warn!("login refused from {addr}");
        return Ok(login_page(401, next, Some("wrong user or password")));
    };
    ctx.sessions.succeeded(addr);
    log::info!("{} logged in from {addr}", who.name);
    let (id, _) = ctx.sessions.open(who);
    Ok(Response::from_data(Vec::new())
        .with_status_code(StatusCode(303))
        .with_header(hdr("Location", &next_param(next)))
        .with_header(hdr(
            "Set-Cookie",
            &format!(
                "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
                crate::auth::SESSION_TTL.as_secs(),
                if secure { "; Secure" } else { "" }
            ),
        ))
        .boxed())
}

/// `POST /logout` (CSRF-checked).
pub fn logout(ctx: &Ctx, rq: &mut Request) -> Reply {
    let f = form(rq)?;
    if let Some(Caller::Session(id, s)) = caller(ctx, rq) {
        if field(&f, "csrf") != Some(s.csrf.as_str()) {
            return Err(Refusal::new(403, "missing or wrong CSRF token"));
        }
        ctx.sessions.close(&id);
    }
    Ok(Response::from_data(Vec::new())
        .with_status_code(StatusCode(303))
        .with_header(hdr("Location", "/login"))
        .with_header(hdr(
            "Set-Cookie",
            &format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
        ))
        .boxed())
}
