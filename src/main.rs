use clap::Parser;
use postern::cli::{Cli, Command};
use std::process::ExitCode;

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let conf = match &cli.command {
        Command::Run { conf, .. }
        | Command::Check { conf }
        | Command::Reload { conf }
        | Command::Upgrade { conf, .. } => Some(postern::cli::config_path(conf.clone())),
        _ => None,
    };
    let log = init_logging(conf.as_deref());
    let conf = conf.unwrap_or_default();
    match cli.command {
        Command::Schema => print_quietly(&format!("{:#}\n", postern::config::json_schema())),
        Command::Completions { shell } => {
            print_quietly(&String::from_utf8_lossy(&postern::cli::completions(shell)))
        }
        Command::Man => match postern::cli::man_page() {
            Ok(page) => print_quietly(&String::from_utf8_lossy(&page)),
            Err(e) => {
                eprintln!("cannot render the man page: {e}");
                ExitCode::from(1)
            }
        },
        Command::Check { .. } | Command::Run { test: true, .. } => check(&conf),
        Command::Reload { .. } => report(postern::control::reload(&conf)),
        Command::Upgrade { no_systemctl, .. } => {
            report(postern::control::upgrade(&conf, !no_systemctl))
        }
        Command::Run {
            daemon,
            upgrade,
            test,
            ..
        } => {
            log::info!(
                "postern {} starting with {conf}{}",
                postern::cli::VERSION,
                log.map_or(String::new(), |l| format!(" (log: {l})"))
            );
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

/// The process log, as `server.log` of `conf` says (defaults when the file cannot be read: the
/// run reports that itself). `RUST_LOG` overrides the level. Returns how it was set up.
fn init_logging(conf: Option<&str>) -> Option<String> {
    use postern::config::schema::{LogConfig, LogFormat, LogLevel};
    let settings = conf
        .and_then(|c| postern::config::load(c).ok())
        .map(|l| l.config.server.log)
        .unwrap_or_default();
    let LogConfig { format, level } = settings;
    let level = match level {
        LogLevel::Error => log::LevelFilter::Error,
        LogLevel::Warn => log::LevelFilter::Warn,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Debug => log::LevelFilter::Debug,
        LogLevel::Trace => log::LevelFilter::Trace,
    };
    let mut b = env_logger::Builder::new();
    b.filter_level(level);
    if level < log::LevelFilter::Debug {
        // Pingora's per-connection and per-request messages are for debugging Pingora.
        for m in [
            "pingora_core",
            "pingora_proxy",
            "pingora_cache",
            "pingora_pool",
        ] {
            b.filter_module(m, level.min(log::LevelFilter::Warn));
        }
        // Started services are worth one line each.
        b.filter_module("pingora_core::server", level);
    }
    // Pingora warns once that cached headers are stored without a zstd dictionary: that is the
    // intended setup, not a problem to report.
    b.filter_module("pingora_cache::meta", log::LevelFilter::Error);
    let overridden = std::env::var("RUST_LOG").is_ok();
    if overridden {
        b.parse_env("RUST_LOG");
    }
    if format == LogFormat::Json {
        b.format(|buf, r| {
            use std::io::Write;
            let line = serde_json::json!({
                "time": postern::observability::access_log::now_rfc3339_millis().as_str(),
                "level": r.level().as_str(),
                "target": r.target(),
                "message": r.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    b.init();
    conf.map(|_| {
        format!(
            "{} at {}{}",
            if format == LogFormat::Json {
                "json"
            } else {
                "text"
            },
            level.as_str().to_ascii_lowercase(),
            if overridden {
                ", RUST_LOG overrides"
            } else {
                ""
            }
        )
    })
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

fn report(r: Result<String, String>) -> ExitCode {
    match r {
        Ok(m) => {
            println!("{m}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}", e.trim_end());
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
