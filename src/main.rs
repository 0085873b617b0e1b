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
        Command::Schema => {
            println!("{:#}", postern::config::json_schema());
            ExitCode::SUCCESS
        }
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
