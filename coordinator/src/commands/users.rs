//! `user add|rm|list` and `token create|list|rm`: who may use the pages and the
//! JSON API (`crate::auth`).
use anyhow::{Context, Result, bail};
use argh::FromArgs;
use std::io::{BufRead, IsTerminal, Read, Write};

use crate::auth::{self, Role};
use crate::exit;
use crate::state::State;

/// Manage the users who log in to the pages.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "user")]
pub struct UserCmd {
    #[argh(subcommand)]
    /// user command
    pub command: UserSub,
}

/// User subcommands.
#[derive(FromArgs, Debug)]
#[argh(subcommand)]
#[allow(missing_docs)]
pub enum UserSub {
    Add(UserAddCmd),
    Rm(UserRmCmd),
}

/// Add a user (or set a user's password): the password is read from standard input
/// (not echoed on a terminal), never from the command line.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "add")]
pub struct UserAddCmd {
    /// user name
    #[argh(positional)]
    pub name: String,
    /// viewer or operator (default operator)
    #[argh(option, default = "String::from(\"operator\")")]
    pub role: String,
}

/// Remove a user.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "rm")]
pub struct UserRmCmd {
    /// user name
    #[argh(positional)]
    pub name: String,
}

/// Manage API tokens for scripts (`Authorization: Bearer …`).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "token")]
pub struct TokenCmd {
    #[argh(subcommand)]
    /// token command
    pub command: TokenSub,
}

/// Token subcommands.
#[derive(FromArgs, Debug)]
#[argh(subcommand)]
#[allow(missing_docs)]
pub enum TokenSub {
    Create(TokenCreateCmd),
    List(TokenListCmd),
    Rm(TokenRmCmd),
}

/// Create a token; it is printed once (only its digest is kept).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "create")]
pub struct TokenCreateCmd {
    /// a name for it (who or what uses it)
    #[argh(positional)]
    pub name: String,
    /// viewer or operator (default viewer)
    #[argh(option, default = "String::from(\"viewer\")")]
    pub role: String,
}

/// List tokens (id, name, role; never the secret).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
pub struct TokenListCmd {}

/// Remove a token by id.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "rm")]
pub struct TokenRmCmd {
    /// token id (as `token list` shows)
    #[argh(positional)]
    pub id: String,
}

/// Reads one line from stdin; on a terminal, prompts and turns echo off meanwhile.
fn read_password() -> Result<String> {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    let saved = if tty {
        eprint!("password: ");
        let _ = std::io::stderr().flush();
        let t = nix::sys::termios::tcgetattr(&stdin).context("reading the terminal's mode")?;
        let mut quiet = t.clone();
        quiet
            .local_flags
            .remove(nix::sys::termios::LocalFlags::ECHO);
        nix::sys::termios::tcsetattr(&stdin, nix::sys::termios::SetArg::TCSANOW, &quiet)
            .context("turning echo off")?;
        Some(t)
    } else {
        None
    };
    let mut line = String::new();
    let read = stdin
        .lock()
        .take(auth::MAX_PASSWORD as u64 + 2)
        .read_line(&mut line);
    if let Some(t) = saved {
        let _ = nix::sys::termios::tcsetattr(&stdin, nix::sys::termios::SetArg::TCSANOW, &t);
        eprintln!();
    }
    read.context("reading the password from standard input")?;
    let pw = line.trim_end_matches(['\n', '\r']).to_string();
    if pw.is_empty() {
        bail!("no password on standard input (echo PASSWORD | kiln-coordinator user add NAME)");
    }
    Ok(pw)
}

/// `user add`.
pub fn cmd_user_add(state: &State, c: &UserAddCmd) -> Result<i32> {
    let role = Role::parse(&c.role)?;
    let pw = read_password()?;
    auth::add_user(state, &c.name, &pw, role)?;
    println!("user {} ({})", c.name, role.as_str());
    Ok(exit::OK)
}

/// `user rm`.
pub fn cmd_user_rm(state: &State, c: &UserRmCmd) -> Result<i32> {
    auth::remove_user(state, &c.name)?;
    Ok(exit::OK)
}

/// `token create`.
pub fn cmd_token_create(state: &State, c: &TokenCreateCmd) -> Result<i32> {
    let t = auth::create_token(state, &c.name, Role::parse(&c.role)?)?;
    println!("{t}");
    eprintln!("(shown once: only its digest is kept)");
    Ok(exit::OK)
}

/// `token list`.
pub fn cmd_token_list(state: &State) -> Result<i32> {
    for (id, name, role) in auth::tokens(state)? {
        println!(
            "{id}  {}  {}",
            role.as_str(),
            crate::visible::visible(&name)
        );
    }
    Ok(exit::OK)
}

/// `token rm`.
pub fn cmd_token_rm(state: &State, c: &TokenRmCmd) -> Result<i32> {
    auth::remove_token(state, &c.id)?;
    Ok(exit::OK)
}
