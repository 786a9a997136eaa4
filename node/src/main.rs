//! `hotshard`: the data node binary. Serving arrives with the node issue; today it reports
//! what the device layer sees on this machine.

use anyhow::Context;
use clap::{Parser, Subcommand};
use hotshard_nvme::{Device, DeviceOptions};

#[derive(Parser)]
#[command(name = "hotshard", version, about = "hotshard data node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open a device (creating a file of --size bytes if asked) and print what it supports.
    Probe {
        path: std::path::PathBuf,
        /// Create a regular file of this many bytes if it does not exist.
        #[arg(long)]
        size: Option<u64>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Probe { path, size } => {
            let mut opts = DeviceOptions::new(&path);
            opts.file_size = size;
            let dev = Device::open(&opts).with_context(|| format!("opening {}", path.display()))?;
            println!("{:#?}", dev.info());
        }
    }
    Ok(())
}
