//! Remote POSIX sh scripts for Linux hosts: lock + upload + detached start, follow,
//! fetch, and teardown (kill the remote group, remove folders, release the lock).
//!
//! Remote layout under the base folder `B`:
//! `B/lock/` (created with `mkdir`, holding `run` and `dir`), `B/runs/<name>/` (the
//! unpacked bundle, the test's working folder) and `B/runs/<name>.kiln/` (`pgid`,
//! `out`, `err`, `exit`, `env` — the test's environment, sourced only by the shell
//! that becomes run.sh — and `secrets/` while the test runs). The test runs under
//! `setsid` so that it survives a lost connection (a resuming run reattaches) and its
//! whole group can be killed.
use super::RemoteRun;

/// Quotes `s` as one POSIX sh word.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The base folder as a sh word: `$HOME/.kiln` by default, `~` and `~/…` expand to
/// `$HOME`, anything else is taken literally.
pub fn base_word(base: Option<&str>) -> String {
    match base {
        None | Some("") => "\"$HOME\"/.kiln".to_string(),
        Some("~") => "\"$HOME\"".to_string(),
        Some(b) => match b.strip_prefix("~/") {
            Some(rest) => format!("\"$HOME\"/{}", sh_quote(rest)),
            None => sh_quote(b),
        },
    }
}

/// The shared preamble: `B`, `R`, `N`, `T` (this session's token), `D` (run folder)
/// and `M` (bookkeeping).
fn vars(r: &RemoteRun) -> String {
    let base = base_word(r.base.as_deref());
    format!(
        "B={base}; R={}; N={}; T={}; D=\"$B/runs/$N\"; M=\"$B/runs/$N.kiln\"\n",
        sh_quote(&r.run),
        sh_quote(&r.name),
        sh_quote(&r.token)
    )
}

/// Wraps a script as the remote command: `sh -c '<script>'`, whatever the login shell.
pub fn remote_command(script: &str) -> String {
    format!("sh -c {}", sh_quote(script))
}

/// Takes the lock (or takes over a stale one, see `STALE`), unpacks the bundle from
/// stdin into a fresh run folder and starts `run.sh` detached. Prints
/// `kiln-takeover <run>` first when it took over the stale lock of that run, then one
/// line: `kiln-started`, `kiln-resume` (this run already holds the lock for this
/// folder), `kiln-busy <run>` or `kiln-error <why>`.
pub fn start(r: &RemoteRun) -> String {
    // The test's environment goes into `$M/env`, sourced only by the subshell that
    // becomes run.sh: a plan variable named like one of these scripts' own (`M`,
    // `PATH`, …) cannot bend them. Secrets are read from their files there.
    let mut lines: Vec<String> = r
        .env
        .iter()
        .map(|(k, v)| format!("export {k}={}", sh_quote(v)))
        .collect();
    let mut env = String::new();
    if !r.secrets.is_empty() {
        // Out of the run folder (and so out of its artifacts) before the test starts.
        env.push_str(&format!(
            "mv \"$D\"/{} \"$M/secrets\" || fail \"cannot move the secrets\"\n",
            super::SECRETS_DIR
        ));
        lines.push("export KILN_SECRETS_DIR=\"$1/secrets\"".into());
        for (var, file) in &r.secrets {
            lines.push(format!(
                "export {var}=\"$(cat \"$1/secrets\"/{})\"",
                sh_quote(file)
            ));
        }
    }
    env.push_str("(umask 077; : > \"$M/env\") || fail \"cannot write $M/env\"\n");
    for l in &lines {
        env.push_str(&format!(
            "printf '%s\\n' {} >> \"$M/env\" || fail \"cannot write $M/env\"\n",
            sh_quote(l)
        ));
    }
    format!(
        r#"{vars}{ALIVE}{STALE}{MUTEX}fail() {{ echo "kiln-error $*"; exit 1; }}
holder() {{ o=; i=0
  while [ -z "$o" ] && [ $i -lt 50 ]; do o=$(cat "$B/lock/run" 2>/dev/null); [ -n "$o" ] || sleep 0.02; i=$((i+1)); done; }}
mkdir -p "$B/runs" || fail "cannot create $B/runs"
if ! mkdir "$B/lock" 2>/dev/null; then
  holder
  [ -d "$B/lock" ] || fail "lock vanished, try again"
  if [ "$o" != "$R" ]; then
    [ -n "$o" ] && stale || {{ echo "kiln-busy ${{o:-unknown}}"; exit 0; }}
    mx_take || {{ echo "kiln-busy $o"; exit 0; }}
    if [ "$(cat "$B/lock/run" 2>/dev/null)" = "$o" ] && stale && mv "$B/lock" "$B/lock.stale.$T" && mkdir "$B/lock"; then
      mx_drop; rm -rf "$B/lock.stale.$T"; echo "kiln-takeover $o"
    else
      mx_drop; holder; echo "kiln-busy ${{o:-unknown}}"; exit 0
    fi
  else
    p=$(cat "$B/lock/dir" 2>/dev/null)
    if [ "$p" = "$N" ] && [ -s "$M/pgid" ]; then printf '%s\n' "$T" > "$M/owner"; echo kiln-resume; exit 0; fi
    if [ -n "$p" ] && [ -s "$B/runs/$p.kiln/pgid" ]; then kill -KILL -"$(cat "$B/runs/$p.kiln/pgid")" 2>/dev/null; fi
  fi
fi
printf '%s\n' "$$" > "$B/lock/pid" && printf '%s\n' "$R" > "$B/lock/run" && printf '%s\n' "$N" > "$B/lock/dir" || fail "cannot write the lock"
rm -rf "$D" "$M" && mkdir -p "$D" "$M" && : > "$M/out" && : > "$M/err" && printf '%s\n' "$T" > "$M/owner" || fail "cannot create $D"
tar -xmof - -C "$D" || fail "unpacking the bundle failed"
[ -f "$D/run.sh" ] || fail "the bundle has no run.sh"
{env}setsid sh -c 'echo $$ > "$1/pgid.tmp" && mv "$1/pgid.tmp" "$1/pgid"; cd "$2" || exit 70
(. "$1/env" && exec "$3" ./run.sh) > "$1/out" 2> "$1/err" < /dev/null; c=$?; rm -rf "$1/secrets"; echo $c > "$1/exit.tmp"; mv "$1/exit.tmp" "$1/exit"' kiln "$M" "$D" "$(command -v sh)" > /dev/null 2>&1 < /dev/null &
i=0; while [ ! -s "$M/pgid" ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done
[ -s "$M/pgid" ] || fail "run.sh did not start (is setsid installed?)"
echo kiln-started
"#,
        vars = vars(r)
    )
}

/// `stale`: whether the lock's holder (another run) is gone for good: its test's
/// process group has no live member and either it wrote its exit status or it never
/// started (no `pgid`, and the start script that took the lock, `lock/pid`, is gone);
/// and no fetch session of it (`fetch`) is alive, which would still release the lock.
/// A run whose group vanished without an exit status (killed) is not judged stale.
const STALE: &str = r#"palive() { kill -0 "$1" 2>/dev/null || return 1; [ "$(sed 's/.*) //;s/ .*//' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
stale() { p=$(cat "$B/lock/dir" 2>/dev/null); H="$B/runs/$p.kiln"
  [ -n "$p" ] || return 1
  if [ -s "$H/pgid" ]; then alive "$(cat "$H/pgid")" && return 1; [ -e "$H/exit" ] || return 1
  else s=$(cat "$B/lock/pid" 2>/dev/null); [ -n "$s" ] && palive "$s" && return 1; fi
  f=$(cat "$H/fetch" 2>/dev/null); [ -n "$f" ] && palive "$f" && return 1
  return 0; }
"#;

/// `mx_take`/`mx_drop`: a short-held mutex (`B/lock.mx`) around taking over and
/// releasing the lock, so that a release never removes a lock just taken over. One
/// older than a minute was left by a killed holder and is broken.
const MUTEX: &str = r#"mx_take() { find "$B" -maxdepth 1 -name lock.mx -mmin +1 -exec rmdir {} \; 2>/dev/null; j=0
  while ! mkdir "$B/lock.mx" 2>/dev/null; do [ $j -lt 150 ] || return 1; sleep 0.02; j=$((j+1)); done; }
mx_drop() { rmdir "$B/lock.mx" 2>/dev/null; }
"#;

/// Streams the run's `out` and `err` from the start (stdout and stderr) until its
/// `exit` file appears, then exits with the test's exit code. Exits 255 with a line
/// on stderr if the process group vanished without an exit status.
pub fn follow(r: &RemoteRun) -> String {
    format!(
        r#"{vars}o=0; e=0; i=0; g=$(cat "$M/pgid")
while :; do
  f=0; [ -e "$M/exit" ] && f=1
  if [ $f = 0 ] && ! kill -0 -"$g" 2>/dev/null; then sleep 0.2; [ -e "$M/exit" ] && f=1 || f=2; fi
  n=$(wc -c < "$M/out"); if [ "$n" -gt "$o" ]; then tail -c +$((o+1)) "$M/out" | head -c $((n-o)); o=$n; fi
  n=$(wc -c < "$M/err"); if [ "$n" -gt "$e" ]; then tail -c +$((e+1)) "$M/err" | head -c $((n-e)) >&2; e=$n; fi
  [ $f = 1 ] && {{ c=$(cat "$M/exit"); : > "$M/followed"; exit "$c"; }}
  [ $f = 2 ] && {{ echo "kiln: the remote run ended without an exit status" >&2; exit 255; }}
  {POLL}
done
"#,
        vars = vars(r)
    )
}

/// One step of a polling loop on counter `i`: 10 ms at first, 50 ms after 0.5 s,
/// 200 ms after 5.5 s.
const POLL: &str = "i=$((i+1)); if [ $i -lt 50 ]; then sleep 0.01; elif [ $i -lt 150 ]; then sleep 0.05; else sleep 0.2; fi";

/// Prints the test's exit code (empty when there is none).
pub fn exit_code(r: &RemoteRun) -> String {
    format!("{}cat \"$M/exit\" 2>/dev/null; true\n", vars(r))
}

/// `alive G`: whether process group G has a member that is not a zombie (an init
/// that does not reap would otherwise keep a finished group "alive"); without `ps`,
/// `kill -0`.
const ALIVE: &str = r#"alive() { if command -v ps >/dev/null 2>&1; then
  { ps -e -o pgid= -o stat= 2>/dev/null || ps -o pgid= -o stat=; } | awk -v g="$1" '$1 == g && $2 !~ /^Z/ { f = 1 } END { exit !f }'
else kill -0 -"$1" 2>/dev/null; fi; }
"#;

/// Kills what is left of the run's process group (TERM, up to 2 s, KILL), removes
/// the secrets, and the run folders unless kept, and releases the lock if this run holds it (under
/// the mutex that a takeover holds; without it after 3 s, so a release is never lost).
pub fn teardown(r: &RemoteRun) -> String {
    format!(
        r#"{vars}{ALIVE}{MUTEX}[ -d "$M" ] && : > "$M/stopped"
if [ -s "$M/pgid" ]; then g=$(cat "$M/pgid")
  if alive "$g"; then kill -TERM -"$g" 2>/dev/null; i=0
    while alive "$g" && [ $i -lt 40 ]; do sleep 0.05; i=$((i+1)); done
    kill -KILL -"$g" 2>/dev/null; fi
fi
rm -rf "$M/secrets" "$D/{sd}"
{rm}if [ "$(cat "$B/lock/run" 2>/dev/null)" = "$R" ]; then
  if mx_take; then [ "$(cat "$B/lock/run" 2>/dev/null)" = "$R" ] && rm -rf "$B/lock"; mx_drop
  else [ "$(cat "$B/lock/run" 2>/dev/null)" = "$R" ] && rm -rf "$B/lock"; fi
fi
true
"#,
        vars = vars(r),
        sd = super::SECRETS_DIR,
        rm = if r.keep { "" } else { "rm -rf \"$D\" \"$M\"\n" }
    )
}

/// Records its pid (`fetch`: a lock whose holder still fetches is not stale), waits
/// until the run has an exit status, writes `artifacts/` of the run folder as
/// a tar on stdout, waits (up to 10 s) for [`follow`] to have read everything, then
/// tears down as [`teardown`] does. Runs beside `follow`, so its session is open
/// before the test ends. Exits 3 if the run was stopped, 4 if another agent session
/// has reattached to the run since (a crashed agent's leftover session must not
/// fetch or clean up under the new one).
pub fn fetch_when_done(r: &RemoteRun) -> String {
    format!(
        r#"{vars}[ -d "$M" ] && echo $$ > "$M/fetch"; i=0
while [ ! -e "$M/exit" ]; do
  {{ [ -e "$M/stopped" ] || [ ! -d "$M" ]; }} && exit 3
  {POLL}
done
[ "$(cat "$M/owner")" = "$T" ] || exit 4
mkdir -p "$D/artifacts" && tar -cf - -C "$D" artifacts || exit 1
i=0; while [ ! -e "$M/followed" ] && [ $i -lt 500 ]; do sleep 0.02; i=$((i+1)); done
{td}"#,
        vars = vars(r),
        td = teardown(r)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_sh() {
        for s in ["plain", "with space", "it's", "a\"b$c`d\\e", "", "-n", "~x"] {
            let out = std::process::Command::new("sh")
                .args(["-c", &format!("printf %s {}", sh_quote(s))])
                .output()
                .expect("sh");
            assert_eq!(String::from_utf8_lossy(&out.stdout), s, "{s}");
        }
    }

    #[test]
    fn base_folder_words() {
        assert_eq!(base_word(None), "\"$HOME\"/.kiln");
        assert_eq!(base_word(Some("~/my runs")), "\"$HOME\"/'my runs'");
        assert_eq!(base_word(Some("/srv/kiln")), "/srv/kiln");
    }
}
