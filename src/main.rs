//! The `ioregionfd-model` command line: a thin layer over the library.
//!
//! ```text
//! ioregionfd-model script [--design seed|rfc-v3|proposed] [FILE|-]
//! ioregionfd-model invariants
//! ```

use ioregionfd_model::design::Design;
use ioregionfd_model::invariants::CATALOGUE;
use ioregionfd_model::script::run_script;
use std::io::{BufReader, Write};
use std::process::ExitCode;

const USAGE: &str = "usage:
  ioregionfd-model script [--design seed|rfc-v3|proposed] [FILE|-]
      run one operation per line (from FILE, or standard input) and print one result line each;
      exit 1 if an invariant was violated, 2 on a line that does not parse
  ioregionfd-model invariants
      print the invariant catalogue (id and statement)
  ioregionfd-model help";

fn script(args: &[String]) -> Result<ExitCode, String> {
    let mut design = Design::default();
    let mut file: Option<&str> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--design" => {
                let name = it.next().ok_or("--design needs a name: seed, rfc-v3 or proposed")?;
                design = Design::from_name(name)
                    .ok_or_else(|| format!("unknown design `{name}`: seed, rfc-v3 or proposed"))?;
            }
            f if file.is_none() && (f == "-" || !f.starts_with('-')) => file = Some(f),
            other => return Err(format!("unexpected argument `{other}`")),
        }
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut err = std::io::stderr();
    let code = match file {
        None | Some("-") => run_script(std::io::stdin().lock(), &mut out, &mut err, design),
        Some(path) => {
            let f = std::fs::File::open(path).map_err(|e| format!("cannot open {path}: {e}"))?;
            run_script(BufReader::new(f), &mut out, &mut err, design)
        }
    };
    Ok(ExitCode::from(code as u8))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("script") => script(&args[1..]),
        Some("invariants") => {
            let mut out = std::io::stdout().lock();
            for inv in CATALOGUE {
                let _ = writeln!(out, "{:<10} {}", inv.id, inv.statement);
            }
            Ok(ExitCode::SUCCESS)
        }
        Some("help" | "--help" | "-h") => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        Some(other) => Err(format!("unknown command `{other}`\n{USAGE}")),
        None => Err(USAGE.to_string()),
    };
    result.unwrap_or_else(|e| {
        eprintln!("ioregionfd-model: {e}");
        ExitCode::from(2)
    })
}
