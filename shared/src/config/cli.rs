//! The command-line flags both nodes have ([`CommonFlags`], flattened into each binary's clap
//! parser) and the one place they override a config.

use super::{LogConfig, LogFormat, TransportConfig, TransportKind};

/// `--transport`, `--rdma-device` and `--log-format`: flags of both nodes that override their
/// config's `[transport]` and `[log]`.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct CommonFlags {
    /// Data transport (overrides transport.kind). An accelerator with rdma serves RDMA sessions
    /// as well as TCP ones.
    #[arg(long, value_parser = ["tcp", "rdma"])]
    pub transport: Option<String>,
    /// RDMA device, e.g. mlx5_0 or rxe0 (overrides transport.rdma.device; default: the first).
    #[arg(long)]
    pub rdma_device: Option<String>,
    /// Log format (overrides log.format).
    #[arg(long, value_parser = ["text", "json"])]
    pub log_format: Option<String>,
}

impl CommonFlags {
    /// Writes the flags that were given over `transport` and `log`; absent flags leave the config
    /// as it is.
    pub fn apply(&self, transport: &mut TransportConfig, log: &mut LogConfig) {
        if let Some(v) = &self.transport {
            transport.kind = if v == "rdma" { TransportKind::Rdma } else { TransportKind::Tcp };
        }
        if let Some(v) = &self.rdma_device {
            transport.rdma.device = v.clone();
        }
        if let Some(v) = &self.log_format {
            log.format = if v == "json" { LogFormat::Json } else { LogFormat::Text };
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        common: CommonFlags,
    }

    fn applied(args: &[&str]) -> (TransportConfig, LogConfig) {
        let cli = Cli::try_parse_from(std::iter::once("node").chain(args.iter().copied())).unwrap();
        let (mut transport, mut log) = (TransportConfig::default(), LogConfig::default());
        cli.common.apply(&mut transport, &mut log);
        (transport, log)
    }

    #[test]
    fn given_flags_override_and_absent_ones_keep_the_config() {
        let (t, l) = applied(&["--transport", "rdma", "--rdma-device", "rxe0", "--log-format", "json"]);
        assert_eq!((t.kind, t.rdma.device.as_str(), l.format), (TransportKind::Rdma, "rxe0", LogFormat::Json));
        let (t, l) = applied(&[]);
        assert_eq!((t, l), (TransportConfig::default(), LogConfig::default()));
        assert!(Cli::try_parse_from(["node", "--transport", "udp"]).is_err());
    }
}
