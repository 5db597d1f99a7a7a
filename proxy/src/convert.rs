//! `flowtap convert`: records from one encoding to another (JSON lines, protobuf, HAR), streamed
//! record by record, so the encodings are provably the same records.

use anyhow::Context;
use clap::{Args, ValueEnum};
use flowtap_schema::{delimited, json, Flow};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;

/// Largest protobuf record accepted when reading (a record with captured bodies is far smaller).
const MAX_PB_RECORD: usize = 64 << 20;

/// What records can be read from.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Input {
    Jsonl,
    Pb,
}

/// What records can be written as.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Encoding {
    Jsonl,
    Pb,
    Har,
}

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Encoding of the input (default: pb for *.pb / *.binpb files, jsonl otherwise).
    #[arg(long, value_enum)]
    pub from: Option<Input>,
    /// Encoding of the output.
    #[arg(long, value_enum)]
    pub to: Encoding,
    /// Output file (default: stdout).
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Input file, or - for stdin.
    #[arg(default_value = "-", value_name = "INPUT")]
    pub input: PathBuf,
}

/// Reads records one at a time from JSON lines or length-delimited protobuf.
pub struct Reader {
    inner: Box<dyn BufRead>,
    encoding: Input,
    line: Vec<u8>,
    n: u64,
}

impl Reader {
    pub fn new(inner: Box<dyn BufRead>, encoding: Input) -> Self {
        Reader {
            inner,
            encoding,
            line: Vec::new(),
            n: 0,
        }
    }

    fn next_jsonl(&mut self) -> anyhow::Result<Option<Flow>> {
        loop {
            self.line.clear();
            if self.inner.read_until(b'\n', &mut self.line)? == 0 {
                return Ok(None);
            }
            self.n += 1;
            if self.line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let flow = json::decode_line(&self.line)
                .with_context(|| format!("line {}: not a flowtap JSON record", self.n))?;
            return Ok(Some(flow));
        }
    }

    fn next_pb(&mut self) -> anyhow::Result<Option<Flow>> {
        // Varint length prefix, then the message.
        let mut len: u64 = 0;
        let mut shift = 0;
        let mut byte = [0u8; 1];
        loop {
            match self.inner.read(&mut byte)? {
                0 if shift == 0 => return Ok(None),
                0 => anyhow::bail!("record {}: truncated length prefix", self.n + 1),
                _ => {}
            }
            len |= u64::from(byte[0] & 0x7f) << shift;
            if byte[0] & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 63 {
                anyhow::bail!("record {}: invalid length prefix", self.n + 1);
            }
        }
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > MAX_PB_RECORD {
            anyhow::bail!(
                "record {}: length {len} exceeds {MAX_PB_RECORD}",
                self.n + 1
            );
        }
        let mut buf = vec![0u8; len];
        self.inner
            .read_exact(&mut buf)
            .with_context(|| format!("record {}: truncated", self.n + 1))?;
        self.n += 1;
        let flow = <Flow as prost::Message>::decode(buf.as_slice())
            .with_context(|| format!("record {}: not a flowtap protobuf record", self.n))?;
        Ok(Some(flow))
    }

    pub fn next_flow(&mut self) -> anyhow::Result<Option<Flow>> {
        match self.encoding {
            Input::Jsonl => self.next_jsonl(),
            Input::Pb => self.next_pb(),
        }
    }
}

impl Iterator for Reader {
    type Item = anyhow::Result<Flow>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_flow().transpose()
    }
}

pub fn run(a: ConvertArgs) -> anyhow::Result<()> {
    let from = a
        .from
        .unwrap_or_else(|| match a.input.extension().and_then(|e| e.to_str()) {
            Some("pb" | "binpb") => Input::Pb,
            _ => Input::Jsonl,
        });
    let input: Box<dyn BufRead> = if a.input.as_os_str() == "-" {
        Box::new(BufReader::new(std::io::stdin()))
    } else {
        let f = std::fs::File::open(&a.input)
            .with_context(|| format!("cannot open {}", a.input.display()))?;
        Box::new(BufReader::with_capacity(64 << 10, f))
    };
    let mut out: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut reader = Reader::new(input, from);
    match a.to {
        Encoding::Har => {
            let mut error = None;
            let mut flows = std::iter::from_fn(|| match reader.next_flow() {
                Ok(f) => f,
                Err(e) => {
                    error = Some(e);
                    None
                }
            });
            crate::output::har::write_document(&mut flows, &mut out).map_err(anyhow::Error::msg)?;
            if let Some(e) = error {
                return Err(e);
            }
        }
        to => {
            let mut buf = Vec::with_capacity(4096);
            while let Some(flow) = reader.next_flow()? {
                buf.clear();
                match to {
                    Encoding::Pb => delimited::encode(&flow, &mut buf),
                    _ => json::encode_line(&flow, &mut buf),
                }
                out.write_all(&buf)?;
            }
        }
    }
    out.flush()?;
    Ok(())
}
