//! `berth init` and `berth completions`: local commands that never talk to a daemon.

use std::path::Path;

use clap::CommandFactory;

use crate::client::appfile::{starter, AppFile};
use crate::client::output::Out;
use crate::client::{Cli, ClientError};

pub(super) fn init(name: Option<String>, force: bool, out: &Out) -> Result<u8, ClientError> {
    let path = Path::new("berth.yaml");
    if path.exists() && !force {
        return Err(ClientError::Usage(
            "berth.yaml already exists (use --force to overwrite)".into(),
        ));
    }
    let name = name.unwrap_or_else(|| {
        std::env::current_dir()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().to_lowercase()))
            .map(|n| {
                n.chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                    .collect::<String>()
                    .trim_matches('-')
                    .to_string()
            })
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "app".into())
    });
    std::fs::write(path, starter(&name))
        .map_err(|e| ClientError::Other(format!("writing berth.yaml: {e}")))?;
    // Check what we wrote parses, so `berth init` never produces a broken file.
    AppFile::load(path)?;
    out.line(&format!(
        "wrote berth.yaml for {name}; edit it, then run `berth deploy`"
    ));
    Ok(0)
}

pub(super) fn completions(shell: &str) -> Result<u8, ClientError> {
    let shell = match shell {
        "bash" => clap_complete::Shell::Bash,
        "zsh" => clap_complete::Shell::Zsh,
        _ => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut Cli::command(), "berth", &mut std::io::stdout());
    Ok(0)
}
