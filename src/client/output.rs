//! Output: human tables or JSON; colour only when stdout is a terminal and `NO_COLOR` is unset.
//! States are always printed as words too, so nothing depends on colour.

use std::io::IsTerminal;

use comfy_table::{presets, ContentArrangement, Table};

pub struct Out {
    pub json: bool,
    pub color: bool,
    pub tty: bool,
}

impl Out {
    pub fn detect(json: bool) -> Self {
        let tty = std::io::stdout().is_terminal();
        let color = tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        Self { json, color, tty }
    }

    /// Plain output (tests, pipes).
    pub fn plain(json: bool) -> Self {
        Self {
            json,
            color: false,
            tty: false,
        }
    }

    /// Prints a `model::api` answer (or any serialisable value) as pretty JSON.
    pub fn json(&self, v: &impl serde::Serialize) {
        match serde_json::to_string_pretty(v) {
            Ok(text) => stdout_line(&text),
            Err(e) => self.error(&format!("cannot print the answer as JSON: {e}")),
        }
    }

    pub fn table(&self, headers: &[&str], rows: Vec<Vec<String>>) {
        stdout_line(&render_table(headers, rows));
    }

    /// The answer `v` as JSON with `--json`, else the one line `text` makes of it.
    pub fn answer(&self, v: &impl serde::Serialize, text: impl FnOnce() -> String) {
        if self.json {
            self.json(v);
        } else {
            self.line(&text());
        }
    }

    pub fn line(&self, s: &str) {
        stdout_line(s);
    }

    pub fn error(&self, msg: &str) {
        if std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
            eprintln!("\x1b[31merror:\x1b[0m {msg}");
        } else {
            eprintln!("error: {msg}");
        }
    }

    /// Colours a state word (ready/healthy green, drain/deploying yellow, down/failed red).
    pub fn state(&self, s: &str) -> String {
        if !self.color {
            return s.to_string();
        }
        let code = match s {
            "ready" | "healthy" | "up" | "running" | "succeeded" | "ok" | "valid" => "32",
            "drain" | "draining" | "deploying" | "pending" | "starting" | "renewing" => "33",
            "maint" | "down" | "failed" | "unhealthy" | "aborted" | "error" | "expired" => "31",
            _ => return s.to_string(),
        };
        format!("\x1b[{code}m{s}\x1b[0m")
    }
}

/// Writes one line to stdout. A reader that went away (`berth deployments APP | head -3`)
/// ends the program quietly with success, as the shell's SIGPIPE would, instead of the panic
/// `println!` raises on EPIPE.
pub fn stdout_line(s: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{s}").and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

/// Renders a borderless table with upper-case headers (stable for snapshot tests).
pub fn render_table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers.iter().map(|h| h.to_uppercase()));
    for r in rows {
        t.add_row(r);
    }
    let text = t.to_string();
    let lines: Vec<&str> = text.lines().collect();
    // comfy-table pads every cell with one space on the left; drop that column only.
    let pad = lines.iter().all(|l| l.starts_with(' ') || l.is_empty());
    lines
        .iter()
        .map(|l| {
            let l = if pad {
                l.strip_prefix(' ').unwrap_or(l)
            } else {
                l
            };
            l.trim_end().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// An optional value as display text: `-` when the daemon sent none (`null`).
pub fn or_dash(v: Option<impl std::fmt::Display>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_snapshot() {
        let t = render_table(
            &["app", "replicas", "state"],
            vec![
                vec!["shop".into(), "3/3".into(), "healthy".into()],
                vec!["blog".into(), "1/2".into(), "deploying".into()],
            ],
        );
        assert_eq!(
            t,
            "APP   REPLICAS  STATE\nshop  3/3       healthy\nblog  1/2       deploying"
        );
    }

    #[test]
    fn dashes_only_for_none() {
        assert_eq!(or_dash(Some(3)), "3");
        assert_eq!(or_dash(Some("x")), "x");
        assert_eq!(or_dash(None::<u8>), "-");
    }
}
