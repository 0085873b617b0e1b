//! Command line: `postern run`, `postern check`, `postern schema`, `postern completions`,
//! `postern man`.

use clap::{Parser, Subcommand};

/// `postern --version`: the version, the commit it was built from and the Pingora it runs on.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("POSTERN_COMMIT"),
    ", pingora ",
    env!("POSTERN_PINGORA"),
    ")"
);

/// Where `run` and `check` look for the configuration without `-c`: the installed one, then
/// the development one of a source checkout.
pub const DEFAULT_CONFIGS: [&str; 2] = ["/etc/postern/postern.yaml", "conf/postern.yaml"];

/// The configuration file to use: the one given, else the first of [`DEFAULT_CONFIGS`] that
/// exists (the installed one when neither does, so the error names it).
pub fn config_path(given: Option<String>) -> String {
    given.unwrap_or_else(|| {
        DEFAULT_CONFIGS
            .iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or(&DEFAULT_CONFIGS[0])
            .to_string()
    })
}

#[derive(Debug, Parser)]
#[command(name = "postern", version = VERSION, about = "An API gateway built on Pingora")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the gateway.
    Run {
        /// Configuration file [default: /etc/postern/postern.yaml, else ./conf/postern.yaml]
        #[arg(short, long)]
        conf: Option<String>,
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
        /// Configuration file [default: /etc/postern/postern.yaml, else ./conf/postern.yaml]
        #[arg(short, long)]
        conf: Option<String>,
    },
    /// Reload the running instance: check the file, then SIGHUP (what `systemctl reload
    /// postern` runs); the binary hand-over instead when `postern upgrade` asked for it.
    Reload {
        /// Configuration file [default: /etc/postern/postern.yaml, else ./conf/postern.yaml]
        #[arg(short, long)]
        conf: Option<String>,
    },
    /// Replace the running binary without dropping a connection: the running process hands
    /// its listening sockets to a new one (through `systemctl reload` under systemd).
    Upgrade {
        /// Configuration file [default: /etc/postern/postern.yaml, else ./conf/postern.yaml]
        #[arg(short, long)]
        conf: Option<String>,
        /// Do the hand-over directly even where systemd runs.
        #[arg(long)]
        no_systemctl: bool,
    },
    /// Print the JSON Schema of the configuration (for editor completion).
    Schema,
    /// Print a shell completion script: `postern completions bash > /etc/bash_completion.d/postern`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `postern man > /usr/share/man/man1/postern.1`.
    Man,
}

/// The completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Vec<u8> {
    use clap::CommandFactory;
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "postern", &mut out);
    out
}

/// The man page, in roff.
pub fn man_page() -> std::io::Result<Vec<u8>> {
    use clap::CommandFactory;
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut out)?;
    Ok(out)
}
