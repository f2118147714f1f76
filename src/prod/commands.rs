//! The external commands of the procedure — `ansible-playbook`, `hugo`, the restart
//! command: run with an explicit argument list (no shell, and never a secret in it), every
//! output line into a log file under the state directory (and to stderr with `-v`); a failure
//! says the exit status and the log's last lines.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::error::Fault;
use crate::printer::Printer;

/// A command line to run in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    pub argv: Vec<String>,
    pub cwd: PathBuf,
}

impl fmt::Display for CommandLine {
    /// Shell-quoted, as a person would type it (for `--dry-run`, logs and the journal).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quoted: Vec<String> = self.argv.iter().map(|a| quote(a)).collect();
        write!(f, "{}", quoted.join(" "))
    }
}

fn quote(a: &str) -> String {
    let plain = !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c));
    if plain {
        a.to_owned()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot run `{program}`: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}); log: {log}\n{tail}")]
    Failed {
        command: String,
        status: String,
        log: String,
        tail: String,
    },
}

impl CommandError {
    /// A missing program and a failing deployment are the machine's or the far end's.
    pub fn fault(&self) -> Fault {
        Fault::Environment
    }
}

/// What a finished command printed.
#[derive(Debug, Clone, Default)]
pub struct Ran {
    pub lines: Vec<String>,
}

/// Runs `cmd`, its output going to `log` (appended) and, when `verbose`, to stderr.
pub async fn run(
    cmd: &CommandLine,
    log: &Path,
    printer: &Printer,
    verbose: bool,
) -> Result<Ran, CommandError> {
    let spawn_err = |source| CommandError::Spawn {
        program: cmd.argv.first().cloned().unwrap_or_default(),
        source,
    };
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(spawn_err)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(spawn_err)?;
    let _ = writeln!(file, "$ {cmd}    (in {})", cmd.cwd.display());
    let (program, args) = cmd
        .argv
        .split_first()
        .ok_or_else(|| spawn_err(std::io::Error::other("an empty command line")))?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(&cmd.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_err)?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let _ = tx.send(l);
            }
        });
    }
    drop(tx);
    let mut ran = Ran::default();
    while let Some(line) = rx.recv().await {
        let _ = writeln!(file, "{line}");
        if verbose {
            printer.raw(&format!("  | {line}"));
        }
        ran.lines.push(line);
    }
    let status = child.wait().await.map_err(spawn_err)?;
    if status.success() {
        return Ok(ran);
    }
    let start = ran.lines.len().saturating_sub(15);
    Err(CommandError::Failed {
        command: cmd.to_string(),
        status: status.to_string(),
        log: log.display().to_string(),
        tail: ran.lines[start..]
            .iter()
            .map(|l| format!("    | {l}"))
            .collect::<Vec<_>>()
            .join("\n"),
    })
}

/// The `PLAY RECAP` lines of an ansible run (`host : ok=3 changed=1 …`), joined by `; `.
pub fn ansible_recap(lines: &[String]) -> String {
    let Some(at) = lines.iter().position(|l| l.starts_with("PLAY RECAP")) else {
        return String::new();
    };
    lines[at + 1..]
        .iter()
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_print_as_typed() {
        let c = CommandLine {
            argv: vec![
                "ansible-playbook".into(),
                "-e".into(),
                "git_head=abc".into(),
                "it's".into(),
            ],
            cwd: ".".into(),
        };
        assert_eq!(c.to_string(), r"ansible-playbook -e git_head=abc 'it'\''s'");
    }

    #[test]
    fn the_recap_is_kept() {
        let lines: Vec<String> = [
            "TASK [x] ***",
            "PLAY RECAP *********",
            "localhost                  : ok=3    changed=1    unreachable=0    failed=0",
            "",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            ansible_recap(&lines),
            "localhost : ok=3 changed=1 unreachable=0 failed=0"
        );
    }

    #[tokio::test]
    async fn a_failure_says_its_status_and_tail() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("logs/x.log");
        let printer = Printer::new(crate::printer::ColorChoice::Never, true);
        let ok = CommandLine {
            argv: vec!["sh".into(), "-c".into(), "echo one; echo two >&2".into()],
            cwd: d.path().into(),
        };
        let ran = run(&ok, &log, &printer, false).await.unwrap();
        assert_eq!(ran.lines.len(), 2);
        let bad = CommandLine {
            argv: vec!["sh".into(), "-c".into(), "echo last words; exit 3".into()],
            cwd: d.path().into(),
        };
        let e = run(&bad, &log, &printer, false)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("exit status: 3") && e.contains("| last words"),
            "{e}"
        );
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("$ sh -c 'echo one; echo two >&2'"), "{text}");
        let missing = CommandLine {
            argv: vec!["no-such-program-kci".into()],
            cwd: d.path().into(),
        };
        let e = run(&missing, &log, &printer, false).await.unwrap_err();
        assert_eq!(e.fault(), Fault::Environment);
    }
}
