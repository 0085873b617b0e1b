use clap::Parser;
use postern::cli::{Cli, Command};
use std::process::ExitCode;

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        // Pingora warns once that cached headers are stored without a zstd dictionary: that is
        // the intended setup, not a problem to report.
        .filter_module("pingora_cache::meta", log::LevelFilter::Error)
        .init();
    match Cli::parse().command {
        Command::Schema => print_quietly(&format!("{:#}\n", postern::config::json_schema())),
        Command::Check { conf } => check(&conf),
        Command::Run {
            conf, test: true, ..
        } => check(&conf),
        Command::Run {
            conf,
            daemon,
            upgrade,
            test,
        } => {
            match postern::app::run(
                &conf,
                postern::app::RunFlags {
                    daemon,
                    upgrade,
                    test,
                },
            ) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprint!("{e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// Writes to standard output; a reader that went away (`postern schema | head`) ends the
/// command quietly, as it does for other Unix tools, instead of `println!`'s panic.
fn print_quietly(text: &str) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cannot write the output: {e}");
            ExitCode::from(1)
        }
    }
}

fn check(conf: &str) -> ExitCode {
    let shared = postern::shared::Shared::new();
    match postern::snapshot::load_and_compile(conf, &shared) {
        Ok(_) => {
            println!("{conf}: configuration is valid");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprint!("{e}");
            ExitCode::from(1)
        }
    }
}
