//! TensorRT's calibration cache, the text file `trtexec --int8 --calib=FILE`
//! reads: a header line `TRT-<version>-EntropyCalibration2` (or
//! `-MinMaxCalibration`), then one line per tensor, `name: <hex>`, the hex
//! being the 8 digits of the big-endian IEEE float32 of the tensor's int8
//! scale (amax / 127).

use embedrt_core::{Error, Result};

/// The TensorRT version written into the header. TensorRT reads caches of
/// its own major version; 8.6 (8601) is what most deployments run.
pub const DEFAULT_TRT_VERSION: u32 = 8601;

/// Which TensorRT calibrator the header names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrtAlgorithm {
    Entropy2,
    MinMax,
}

impl TrtAlgorithm {
    fn header_suffix(self) -> &'static str {
        match self {
            TrtAlgorithm::Entropy2 => "EntropyCalibration2",
            TrtAlgorithm::MinMax => "MinMaxCalibration",
        }
    }

    /// TensorRT has no percentile or MSE calibrator: those caches claim
    /// EntropyCalibration2, the calibrator TensorRT reads for clipped ranges.
    pub fn for_method(method_name: &str) -> Self {
        if method_name == "minmax" {
            TrtAlgorithm::MinMax
        } else {
            TrtAlgorithm::Entropy2
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TrtCache {
    pub version: u32,
    pub algorithm: TrtAlgorithm,
    /// Tensor name and int8 scale (amax / 127), in file order.
    pub scales: Vec<(String, f32)>,
}

impl TrtCache {
    pub fn to_text(&self) -> String {
        let mut s = format!("TRT-{}-{}\n", self.version, self.algorithm.header_suffix());
        for (name, scale) in &self.scales {
            s.push_str(&format!("{name}: {:08x}\n", scale.to_bits()));
        }
        s
    }

    pub fn parse(text: &str) -> Result<Self> {
        let mut lines = text.lines();
        let header = lines.next().unwrap_or_default();
        let bad_header = || {
            Error::Input(format!(
                "calibration cache: first line {header:?} is not TRT-<version>-EntropyCalibration2 or TRT-<version>-MinMaxCalibration"
            ))
        };
        let rest = header.strip_prefix("TRT-").ok_or_else(bad_header)?;
        let (version, algo) = rest.split_once('-').ok_or_else(bad_header)?;
        let version: u32 = version.parse().map_err(|_| bad_header())?;
        let algorithm = match algo {
            "EntropyCalibration2" => TrtAlgorithm::Entropy2,
            "MinMaxCalibration" => TrtAlgorithm::MinMax,
            _ => return Err(bad_header()),
        };
        let mut scales = Vec::new();
        for (i, line) in lines.enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let parsed = line.rsplit_once(": ").and_then(|(name, hex)| {
                let bits = u32::from_str_radix(hex.trim(), 16).ok()?;
                (hex.trim().len() == 8).then(|| (name.to_string(), f32::from_bits(bits)))
            });
            match parsed {
                Some(entry) => scales.push(entry),
                None => {
                    return Err(Error::Input(format!(
                    "calibration cache: line {}: expected `name: <8 hex digits>`, found {line:?}",
                    i + 2
                )))
                }
            }
        }
        Ok(TrtCache {
            version,
            algorithm,
            scales,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_big_endian_hex_of_the_scale_and_parses_back() {
        let cache = TrtCache {
            version: 8601,
            algorithm: TrtAlgorithm::Entropy2,
            scales: vec![("input.1".into(), 1.0), ("/x/y_output_0".into(), 0.0123)],
        };
        let text = cache.to_text();
        assert!(text.starts_with("TRT-8601-EntropyCalibration2\ninput.1: 3f800000\n"));
        assert_eq!(TrtCache::parse(&text).unwrap(), cache);
        assert!(TrtCache::parse("TRT-86-Legacy\n").is_err());
        assert!(TrtCache::parse("TRT-8601-MinMaxCalibration\nx: 12\n").is_err());
    }
}
