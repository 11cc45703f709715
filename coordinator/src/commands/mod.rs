//! The command handlers, one file per command group: each holds its commands' argh
//! types and `cmd_*` functions, which translate arguments into plain calls on the
//! domain modules and print the results. Only `cli.rs` imports them; no domain
//! module does.

pub mod admin;
pub mod gc;
pub mod hold;
pub mod notify;
pub mod power;
pub mod runs;
pub mod serve;
pub mod ticket;
pub mod users;
pub mod watch;
