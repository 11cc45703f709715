//! Remote command lines for Windows hosts (Win32-OpenSSH, whose default shell is
//! cmd.exe): PowerShell for the lock and the entrypoint, `tar.exe` for the bundle.
//!
//! Bookkeeping scripts go as `-EncodedCommand` (base64 of UTF-16LE), so no quoting
//! layer can bend them. The entrypoint is a readable `-Command` line: PowerShell's
//! `-File` does not change the working folder, so it is `Set-Location` to the run
//! folder first, then `& '<dir>\run.ps1'`. Unlike Linux runs, a Windows run is not
//! detached: it streams over its own session and a stop kills its tree with
//! `taskkill /T`.
//!
//! A stale lock (its agent died holding it) is not taken over on Windows, unlike
//! Linux: it refuses other runs until `<base>\lock` is removed by hand.
use base64::Engine;

use super::RemoteRun;

/// The PowerShell prefix every command uses.
pub const POWERSHELL: &str = "powershell -NoProfile -NonInteractive -ExecutionPolicy Bypass";

/// Quotes `s` as one PowerShell single-quoted string (`'` doubled).
pub fn ps_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Refuses folder names that cmd.exe or Windows cannot carry inside `"…"`.
pub fn check_path(p: &str) -> Result<(), String> {
    match p
        .chars()
        .find(|c| matches!(c, '"' | '%' | '\n' | '\r' | '<' | '>' | '|'))
    {
        Some(c) => Err(format!("windows path {p:?} contains {c:?}")),
        None => Ok(()),
    }
}

/// The base folder as a PowerShell expression: `$HOME\.kiln` by default, `~` and
/// `~\…` under `$HOME`, anything else literal.
pub fn base_expr(base: Option<&str>) -> String {
    match base {
        None | Some("") => "(Join-Path $HOME '.kiln')".into(),
        Some("~") => "$HOME".into(),
        Some(b) => match b.strip_prefix("~\\").or_else(|| b.strip_prefix("~/")) {
            Some(rest) => format!("(Join-Path $HOME {})", ps_quote(rest)),
            None => ps_quote(b),
        },
    }
}

/// `powershell … -EncodedCommand <base64 UTF-16LE of script>`.
pub fn encoded(script: &str) -> String {
    let utf16: Vec<u8> = script.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(utf16);
    format!("{POWERSHELL} -EncodedCommand {b64}")
}

fn vars(r: &RemoteRun) -> String {
    format!(
        "$ErrorActionPreference = 'Stop'\n$B = {}; $R = {}; $N = {}\n\
         $L = Join-Path $B 'lock'; $D = Join-Path $B \"runs\\$N\"; $M = \"$D.kiln\"\n",
        base_expr(r.base.as_deref()),
        ps_quote(&r.run),
        ps_quote(&r.name)
    )
}

/// Takes the lock and makes a fresh run folder. Prints `kiln-ready <dir>`,
/// `kiln-busy <run>` or `kiln-error <why>`. A run that already holds the lock
/// starts over (its old tree is killed): Windows runs are not reattached.
pub fn start(r: &RemoteRun) -> String {
    encoded(&format!(
        r#"{vars}function Fail($w) {{ Write-Output "kiln-error $w"; exit 1 }}
try {{ New-Item -ItemType Directory -Force -Path (Join-Path $B 'runs') | Out-Null }} catch {{ Fail "cannot create $B\runs" }}
try {{ New-Item -ItemType Directory -Path $L | Out-Null }} catch {{
  $o = $null
  for ($i = 0; $i -lt 50 -and -not $o; $i++) {{ $o = Get-Content -LiteralPath "$L\run" -ErrorAction SilentlyContinue; if (-not $o) {{ Start-Sleep -Milliseconds 20 }} }}
  if ($o -ne $R) {{ if (-not $o) {{ $o = 'unknown' }}; Write-Output "kiln-busy $o"; exit 0 }}
  $p = Get-Content -LiteralPath "$L\dir" -ErrorAction SilentlyContinue
  if ($p) {{ $q = Get-Content -LiteralPath (Join-Path $B "runs\$p.kiln\pid") -ErrorAction SilentlyContinue; if ($q) {{ taskkill /T /F /PID $q 2>&1 | Out-Null }} }}
}}
try {{
  Set-Content -LiteralPath "$L\run" -Value $R; Set-Content -LiteralPath "$L\dir" -Value $N
  Remove-Item -LiteralPath $D, $M -Recurse -Force -ErrorAction SilentlyContinue
  New-Item -ItemType Directory -Force -Path $D, $M | Out-Null
}} catch {{ Fail "cannot create $D" }}
Write-Output "kiln-ready $D"
"#,
        vars = vars(r)
    ))
}

/// Unpacks the bundle from stdin into `dir` (cmd.exe line).
pub fn upload(dir: &str) -> String {
    format!("tar -xf - -C \"{dir}\"")
}

/// The entrypoint: records PowerShell's pid for a later `taskkill`, sets the
/// plan's environment, moves the uploaded secrets (`secrets`: environment name, file
/// name) out of the run folder and sets them, changes to the run folder and runs
/// `run.ps1` there, removes the secrets and exits with its exit code.
pub fn entry(dir: &str, env: &[(String, String)], secrets: &[(String, String)]) -> String {
    let mut pre = format!(
        "Set-Content -LiteralPath {} -Value $PID; ",
        ps_quote(&format!("{dir}.kiln\\pid"))
    );
    for (k, v) in env {
        pre.push_str(&format!("$env:{k} = {}; ", ps_quote(v)));
    }
    let mut exit = "exit $LASTEXITCODE".to_string();
    if !secrets.is_empty() {
        let held = ps_quote(&format!("{dir}.kiln\\secrets"));
        pre.push_str(&format!(
            "Move-Item -LiteralPath {} -Destination {held}; $env:KILN_SECRETS_DIR = {held}; ",
            ps_quote(&format!("{dir}\\{}", super::SECRETS_DIR)),
        ));
        for (var, file) in secrets {
            pre.push_str(&format!(
                "$env:{var} = (Get-Content -Raw -LiteralPath {}).TrimEnd([char]13, [char]10); ",
                ps_quote(&format!("{dir}.kiln\\secrets\\{file}"))
            ));
        }
        exit =
            format!("$c = $LASTEXITCODE; Remove-Item -LiteralPath {held} -Recurse -Force; exit $c");
    }
    format!(
        "{POWERSHELL} -Command \"{pre}Set-Location -LiteralPath {d}; & {s}; {exit}\"",
        d = ps_quote(dir),
        s = ps_quote(&format!("{dir}\\run.ps1")),
    )
}

/// Writes `artifacts\` of the run folder as a tar on stdout, if there is one.
pub fn fetch(dir: &str) -> String {
    format!("if exist \"{dir}\\artifacts\\\" tar -cf - -C \"{dir}\" artifacts")
}

/// Kills the run's tree if `kill`, removes the run folders unless kept, releases
/// the lock if this run holds it.
pub fn teardown(r: &RemoteRun, kill: bool) -> String {
    let mut s = vars(r);
    s.push_str("$ErrorActionPreference = 'SilentlyContinue'\n");
    if kill {
        s.push_str(
            "$q = Get-Content -LiteralPath \"$M\\pid\"; if ($q) { taskkill /T /F /PID $q 2>&1 | Out-Null }\n",
        );
    }
    s.push_str(&format!(
        "Remove-Item -LiteralPath (Join-Path $M 'secrets'), (Join-Path $D '{}') -Recurse -Force\n",
        super::SECRETS_DIR
    ));
    if !r.keep {
        s.push_str("Remove-Item -LiteralPath $D, $M -Recurse -Force\n");
    }
    s.push_str(
        "if ((Get-Content -LiteralPath \"$L\\run\") -eq $R) { Remove-Item -LiteralPath $L -Recurse -Force }\nexit 0\n",
    );
    encoded(&s)
}

#[cfg(test)]
mod tests {
    //! Windows cannot run here: these tests pin the exact command strings (a fake of
    //! the Windows host, by construction); the Linux path runs against real sshd.
    use super::*;

    #[test]
    fn fake_windows_entry_sets_location_then_runs_with_quoted_paths() {
        let dir = r"C:\Users\ci user\.kiln\runs\0a1b-it's-1";
        assert_eq!(
            entry(dir, &[], &[]),
            "powershell -NoProfile -NonInteractive -ExecutionPolicy Bypass -Command \
             \"Set-Content -LiteralPath 'C:\\Users\\ci user\\.kiln\\runs\\0a1b-it''s-1.kiln\\pid' -Value $PID; \
             Set-Location -LiteralPath 'C:\\Users\\ci user\\.kiln\\runs\\0a1b-it''s-1'; \
             & 'C:\\Users\\ci user\\.kiln\\runs\\0a1b-it''s-1\\run.ps1'; exit $LASTEXITCODE\""
        );
    }

    #[test]
    fn fake_windows_entry_sets_env_quoted() {
        let line = entry(r"C:\k", &[("LEVEL".into(), "it's 2".into())], &[]);
        assert!(
            line.contains("$env:LEVEL = 'it''s 2'; Set-Location -LiteralPath 'C:\\k'; "),
            "{line}"
        );
    }

    #[test]
    fn fake_windows_entry_moves_sets_and_removes_secrets_by_file_never_by_value() {
        let secrets = [("KILN_SECRET_API_TOKEN".to_string(), "api-token".to_string())];
        assert_eq!(
            entry(r"C:\a b\r", &[], &secrets),
            "powershell -NoProfile -NonInteractive -ExecutionPolicy Bypass -Command \
             \"Set-Content -LiteralPath 'C:\\a b\\r.kiln\\pid' -Value $PID; \
             Move-Item -LiteralPath 'C:\\a b\\r\\.kiln-secrets' -Destination 'C:\\a b\\r.kiln\\secrets'; \
             $env:KILN_SECRETS_DIR = 'C:\\a b\\r.kiln\\secrets'; \
             $env:KILN_SECRET_API_TOKEN = (Get-Content -Raw -LiteralPath 'C:\\a b\\r.kiln\\secrets\\api-token').TrimEnd([char]13, [char]10); \
             Set-Location -LiteralPath 'C:\\a b\\r'; & 'C:\\a b\\r\\run.ps1'; \
             $c = $LASTEXITCODE; Remove-Item -LiteralPath 'C:\\a b\\r.kiln\\secrets' -Recurse -Force; exit $c\""
        );
    }

    #[test]
    fn fake_windows_upload_and_fetch_quote_spaces() {
        assert_eq!(upload(r"C:\a b\r"), r#"tar -xf - -C "C:\a b\r""#);
        assert_eq!(
            fetch(r"C:\a b\r"),
            r#"if exist "C:\a b\r\artifacts\" tar -cf - -C "C:\a b\r" artifacts"#
        );
    }

    #[test]
    fn fake_windows_encoded_command_is_utf16le_base64() {
        // "a'b" → 61 00 27 00 62 00
        assert_eq!(
            encoded("a'b"),
            format!("{POWERSHELL} -EncodedCommand YQAnAGIA")
        );
    }

    #[test]
    fn fake_windows_base_and_paths() {
        assert_eq!(base_expr(None), "(Join-Path $HOME '.kiln')");
        assert_eq!(base_expr(Some(r"~\k i")), "(Join-Path $HOME 'k i')");
        assert_eq!(base_expr(Some(r"D:\it's")), r"'D:\it''s'");
        assert!(check_path(r"C:\ok dir").is_ok());
        assert!(check_path(r"C:\%PATH%").is_err());
    }
}
