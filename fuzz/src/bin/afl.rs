//! The AFL++ driver: `cellos-fuzz-afl TARGET` runs one target in AFL's persistent
//! mode, reading inputs from AFL (built by `cargo afl build --features afl`; see
//! scripts/fuzz.sh); `--list` prints the targets. One binary for every target keeps the build to one link.

use std::process::ExitCode;

fn main() -> ExitCode {
    let name = std::env::args().nth(1).unwrap_or_default();
    if name == "--list" {
        for t in cellos_fuzz::TARGETS {
            println!("{}\t{}", t.name, t.about);
        }
        return ExitCode::SUCCESS;
    }
    let Some(target) = cellos_fuzz::target(&name) else {
        let names: Vec<&str> = cellos_fuzz::TARGETS.iter().map(|t| t.name).collect();
        eprintln!(
            "usage: cellos-fuzz-afl TARGET (one of {})",
            names.join(", ")
        );
        return ExitCode::from(2);
    };
    let run = target.run;
    afl::fuzz!(|data: &[u8]| run(data));
    ExitCode::SUCCESS
}
