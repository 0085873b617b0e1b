//! Command line: `postern run`, `postern check`, `postern schema`.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "postern", version, about = "An API gateway built on Pingora")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the gateway.
    Run {
        /// Configuration file.
        #[arg(short, long, default_value = "conf/postern.yaml")]
        conf: String,
        /// Run in the background (writes server.pid_file).
        #[arg(short, long)]
        daemon: bool,
        /// Take over the listening sockets of a running Postern (graceful upgrade).
        #[arg(short, long)]
        upgrade: bool,
        /// Check the configuration and exit (same as `postern check`).
        #[arg(short, long)]
        test: bool,
    },
    /// Check a configuration file and exit: 0 when valid, 1 with every error listed.
    Check {
        #[arg(short, long, default_value = "conf/postern.yaml")]
        conf: String,
    },
    /// Print the JSON Schema of the configuration (for editor completion).
    Schema,
}
