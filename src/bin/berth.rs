//! `berth`: the Berth CLI. Thin: everything lives in `berth::client`.

fn main() -> std::process::ExitCode {
    berth::client::main()
}
