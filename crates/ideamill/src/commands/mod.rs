//! One module per subcommand. Each returns the process exit code.

mod add;
mod alert;
mod bench;
mod bench_health;
pub(crate) mod bench_history;
pub(crate) mod bench_saturation;
pub mod bench_soak;
mod bench_web;
mod cancel;
mod doctor;
mod eval;
mod events;
mod export;
mod import;
mod init;
mod init_agent;
mod list;
mod prune;
mod retry;
mod run;
mod scheduling;
mod service;
mod show;
mod status;
mod store_copy;
mod validate;

use std::process::ExitCode;

use clap::CommandFactory;

use crate::cli::{Cli, Command};

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = cli.config.as_deref();
    match cli.command {
        Command::Init(args) => init::run(&args),
        Command::Validate(args) => validate::run(config, &args),
        Command::Completions(args) => {
            clap_complete::generate(
                args.shell,
                &mut Cli::command(),
                "ideamill",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Add(args) => client_block_on(add::run(config, args)),
        Command::Import(args) => match args.what {
            crate::cli::ImportWhat::Legacy(args) => block_on(import::legacy(config, args)),
        },
        Command::Export(args) => block_on(export::run(config, args)),
        Command::List(args) => block_on(list::run(config, args)),
        Command::Show(args) => block_on(show::run(config, args)),
        Command::Retry(args) => client_block_on(retry::run(config, args)),
        Command::Cancel(args) => client_block_on(cancel::run(config, args)),
        Command::Status(args) => block_on(status::run(config, args)),
        Command::Events(args) => block_on(events::run(config, args)),
        Command::Run(args) => run::main(config, args),
        Command::Doctor(args) => block_on(doctor::run(config, args)),
        Command::Service(args) => service::run(config, &args),
        Command::Prune(args) => block_on(prune::run(config, args)),
        Command::Store(args) => match args.what {
            crate::cli::StoreWhat::Copy(args) => block_on(store_copy::run(args)),
        },
        Command::Bench(args) => {
            // An engine that runs in this process (or in its `bench
            // worker`s) is scheduled as `ideamill run` schedules one; the
            // adder is a client, as `ideamill add` is.
            use crate::cli::BenchWhat;
            match args.what {
                BenchWhat::Throughput { .. }
                | BenchWhat::Pickup { .. }
                | BenchWhat::Worker { .. }
                | BenchWhat::Telemetry { .. }
                | BenchWhat::Saturation(_)
                | BenchWhat::History(_) => scheduling::batch(),
                BenchWhat::Adder { .. } => {
                    scheduling::ordinary();
                    scheduling::one_cpu();
                }
                _ => {}
            }
            block_on(bench::run(args))
        }
        Command::Eval(args) => block_on(eval::run(config, args)),
        Command::RecordEvent { kind } => crate::supervisor::record_event_helper(config, &kind),
        Command::Alert(args) => match args.what {
            crate::cli::AlertWhat::Test(args) => block_on(alert::test(config, args)),
        },
    }
}

/// A client that hands the engine work (the engine's pickup waits on it),
/// run on one CPU ([`scheduling::one_cpu`]).
fn client_block_on<F: Future<Output = anyhow::Result<ExitCode>>>(f: F) -> anyhow::Result<ExitCode> {
    scheduling::one_cpu();
    block_on(f)
}

fn block_on<F: Future<Output = anyhow::Result<ExitCode>>>(f: F) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(f)
}
