//! What each subcommand does: the dispatch from the parsed command line to the
//! module that runs it.

use anyhow::Result;

use crate::args::{BenchCmd, Cli, Cmd, ImageCmd, NetworkCmd, QemuCmd};
use crate::{ledger, qemu, signal, tx};

pub async fn run(cli: Cli) -> Result<()> {
    let g = cli.global;
    match cli.cmd {
        Cmd::Ledger(c) => ledger::run(&g, c).await,
        Cmd::Key(c) => tx::key(&g, c),
        Cmd::Account(c) => tx::account(&g, c).await,
        Cmd::Farm(c) => tx::farm(&g, c).await,
        Cmd::Node(c) => tx::node(&g, c).await,
        Cmd::Contract(c) => tx::contract(&g, c).await,
        Cmd::Deploy {
            file,
            node,
            deposit,
            timeout,
        } => tx::deploy(&g, &file, node, deposit, timeout).await,
        Cmd::Deployment(d) => tx::deployment(&g, d).await,
        Cmd::Logs {
            contract,
            workload,
            follow,
            api,
        } => tx::logs(&g, contract, &workload, follow, api.as_deref()).await,
        Cmd::Network(NetworkCmd::Plan {
            nodes,
            range,
            name,
            port,
            interface,
            out,
            force,
        }) => {
            let req = crate::network::PlanRequest {
                name,
                nodes,
                range,
                port,
                interface,
                out,
                force,
            };
            crate::network::run_plan(&g, req).await
        }
        Cmd::Image(ImageCmd::Build {
            farm,
            ledger,
            enroll,
            extra,
            out,
            manifest,
            cache,
            bin_dir,
        }) => {
            let req = qemu::ImageRequest {
                boot: cellos_image::BootParams {
                    farm,
                    ledger,
                    enroll,
                    extra,
                },
                out,
                manifest,
                cache,
                bin_dir: match bin_dir {
                    Some(d) => d,
                    None => qemu::default_bin_dir()?,
                },
            };
            tokio::task::spawn_blocking(move || qemu::build_image(&req)).await??;
            Ok(())
        }
        Cmd::Image(ImageCmd::Flash {
            device,
            image,
            force,
        }) => tokio::task::spawn_blocking(move || qemu::flash(&image, &device, force)).await?,
        Cmd::Qemu(QemuCmd::Run {
            image,
            vm,
            work_dir,
        }) => {
            let req = qemu::RunRequest {
                image,
                vm,
                work_dir,
                cmdline_extra: String::new(),
                segment: None,
            };
            signal::run_with_ctrl_c(move |stop| {
                let mut machine = qemu::boot(&req)?;
                qemu::follow(&mut machine, stop)
            })
            .await
        }
        Cmd::Demo {
            listen,
            data,
            vm,
            once,
        } => {
            crate::demo::run(crate::demo::DemoOptions {
                listen,
                data,
                vm,
                once,
            })
            .await
        }
        Cmd::Bench(BenchCmd::Ledger {
            txs,
            nodes,
            concurrency,
            batch,
            startup_blocks,
            etcd_txs,
        }) => {
            crate::bench::ledger(crate::bench::LedgerBench {
                txs,
                nodes,
                concurrency,
                batch,
                startup_blocks,
                etcd_txs,
            })
            .await
        }
        Cmd::Bench(BenchCmd::Ec {
            seconds,
            size,
            pipeline,
        }) => crate::bench_shard::ec(seconds, size as usize, pipeline as usize).await,
        Cmd::Bench(BenchCmd::Network {
            seconds,
            accel,
            cpus,
            memory,
            boot_timeout,
        }) => {
            crate::bench_network::network(crate::bench_network::NetworkBenchOptions {
                seconds,
                accel,
                cpus,
                memory,
                boot_timeout,
            })
            .await
        }
        Cmd::Bench(BenchCmd::Container {
            accel,
            cpus,
            memory,
            boot_timeout,
            starts,
        }) => {
            crate::bench_container::container(crate::bench_container::ContainerBenchOptions {
                accel,
                cpus,
                memory,
                boot_timeout,
                starts,
            })
            .await
        }
        Cmd::Bench(BenchCmd::Shard {
            requests,
            clients,
            shardd,
        }) => crate::bench_shard::shard(requests, clients, shardd).await,
        Cmd::Store(c) => crate::store::run(c, g.json).await,
    }
}
