//! `berthd`: the Berth daemon. Thin: everything lives in `berth::daemon`.

fn main() -> std::process::ExitCode {
    berth::daemon::main()
}
