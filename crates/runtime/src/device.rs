//! Where the user asked to run: `auto`, `cpu`, `cuda`, `cuda:N`, and for
//! servers a set of GPUs (`cuda:all`, `cuda:0,1,...`).

use crate::error::{Error, Result};

/// One device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Auto,
    Cpu,
    Cuda(usize),
}

impl Device {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => Device::Auto,
            "cpu" => Device::Cpu,
            "cuda" => Device::Cuda(0),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Device::Cuda(n),
                _ if s == "cuda:all" || (s.starts_with("cuda:") && s.contains(',')) => {
                    return Err(Error::spec(format!(
                        "--device {s}: several GPUs are for `embedrt serve`; give one device here (cuda:N)"
                    )))
                }
                _ => {
                    return Err(Error::spec(format!(
                        "unknown device {s:?}; use auto, cpu, cuda or cuda:N"
                    )))
                }
            },
        })
    }
}

/// Where a server runs: one device, or one engine per GPU of a set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Devices {
    One(Device),
    /// `cuda:all`: every GPU the driver reports.
    AllGpus,
    /// `cuda:0,1,...`: these GPUs, in this order.
    Gpus(Vec<usize>),
}

impl Devices {
    pub fn parse(s: &str) -> Result<Self> {
        let Some(rest) = s.strip_prefix("cuda:") else {
            return Ok(Devices::One(Device::parse(s)?));
        };
        if rest == "all" {
            return Ok(Devices::AllGpus);
        }
        if !rest.contains(',') {
            return Ok(Devices::One(Device::parse(s)?));
        }
        let mut ordinals = Vec::new();
        for part in rest.split(',') {
            let Ok(n) = part.trim().parse::<usize>() else {
                return Err(Error::spec(format!(
                    "--device {s}: {part:?} is not a GPU number; use cuda:all or cuda:0,1,..."
                )));
            };
            if ordinals.contains(&n) {
                return Err(Error::spec(format!(
                    "--device {s}: cuda:{n} is listed twice"
                )));
            }
            ordinals.push(n);
        }
        Ok(Devices::Gpus(ordinals))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_sets_parse_and_bad_ones_are_refused() {
        assert_eq!(Devices::parse("cuda:all").unwrap(), Devices::AllGpus);
        assert_eq!(
            Devices::parse("cuda:0,1").unwrap(),
            Devices::Gpus(vec![0, 1])
        );
        assert_eq!(
            Devices::parse("cuda:3, 1").unwrap(),
            Devices::Gpus(vec![3, 1])
        );
        assert_eq!(
            Devices::parse("cuda:2").unwrap(),
            Devices::One(Device::Cuda(2))
        );
        assert_eq!(Devices::parse("cpu").unwrap(), Devices::One(Device::Cpu));
        assert_eq!(Devices::parse("auto").unwrap(), Devices::One(Device::Auto));
        for bad in [
            "cuda:0,0",
            "cuda:0,",
            "cuda:0,x",
            "cuda:",
            "cpu,cuda:0",
            "cuda:al",
        ] {
            assert!(Devices::parse(bad).is_err(), "{bad} was accepted");
        }
        // One-device callers refuse a set with a pointer to `serve`.
        let err = Device::parse("cuda:all").unwrap_err().to_string();
        assert!(err.contains("embedrt serve"), "{err}");
        assert!(Device::parse("cuda:0,1").is_err());
    }
}
