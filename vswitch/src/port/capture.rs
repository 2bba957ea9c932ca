//! Reading captures for `replay`: pcap (microsecond and nanosecond, either
//! byte order) and pcapng (sections of either byte order, interface
//! descriptions with their names and timestamp resolutions, enhanced,
//! simple and obsolete packet blocks), one record at a time.
//!
//! # Design
//! The formats are small and read here rather than through pcap-file 2.0,
//! which refuses a record whose original length exceeds the snapshot
//! length (every capture taken with a small snaplen) and reads a pcapng
//! file's blocks whole. This reader:
//! - holds one record at a time (memory is bounded by the largest record
//!   allowed, [`MAX_RECORD`], whatever the capture's size);
//! - gives a record captured short of its length back padded with zeros
//!   to that length (at most [`MAX_RECORD`]): the headers a switch decides
//!   on are at the front, and a truncated frame would otherwise fail its IP
//!   length checks as malformed;
//! - reports a capture that ends inside a record as
//!   [`CaptureError::Truncated`] with the record's offset, after every
//!   complete record before it, so a capture cut short (a full disk, a
//!   killed tcpdump) replays up to its last whole record;
//! - skips pcapng blocks it does not use without reading them into
//!   memory.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The largest record (and frame) read: a 64 KiB IP packet and its
/// Ethernet and VLAN headers, with room to spare.
pub const MAX_RECORD: usize = 256 * 1024;
/// The largest pcapng block skipped over (custom and statistics blocks).
const MAX_BLOCK: u64 = 64 << 20;
/// LINKTYPE_ETHERNET.
pub const ETHERNET: u16 = 1;

/// Why a capture cannot be read (further).
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a pcap or pcapng capture (it starts with {magic:02x?})")]
    NotCapture { path: PathBuf, magic: [u8; 4] },
    #[error("{path}: at byte {offset}: {what}")]
    Malformed { path: PathBuf, offset: u64, what: String },
    #[error("{path}: link type {link} (interface {interface}): only Ethernet (1) captures can be replayed")]
    NotEthernet { path: PathBuf, link: u16, interface: u32 },
    /// The capture ends inside the record that starts at `offset`.
    #[error("{path}: the capture ends inside the record at byte {offset}; the records before it were replayed")]
    Truncated { path: PathBuf, offset: u64 },
}

/// An interface of a pcapng capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub link: u16,
    /// The `if_name` option: the name of the interface the capture was
    /// taken on.
    pub name: Option<String>,
    /// Timestamp units per second.
    units: u64,
    snaplen: u32,
}

/// One record; its frame is [`Reader::data`] until the next is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub ts: Duration,
    /// The pcapng interface (by index) the frame came in on; `None` in a
    /// pcap file.
    pub interface: Option<u32>,
    /// The byte offset of the record in the file.
    pub offset: u64,
}

/// A record read into the buffer: its time, interface, offset and the
/// frame's length there.
type Got = Option<(Duration, Option<u32>, u64, usize)>;

/// A packet block's time, interface, where its frame starts in the block's
/// body, and the frame's captured and original lengths.
struct InBlock {
    ts: Duration,
    interface: u32,
    at: usize,
    caplen: usize,
    orig: usize,
}

enum Format {
    Pcap { swapped: bool, nanos: bool },
    PcapNg { swapped: bool },
}

/// A capture, read one record at a time.
pub struct Reader<R = BufReader<File>> {
    path: PathBuf,
    r: R,
    format: Format,
    /// The interfaces of the current pcapng section.
    interfaces: Vec<Interface>,
    offset: u64,
    buf: Vec<u8>,
    done: bool,
}

impl<R> std::fmt::Debug for Reader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Reader({} at byte {})", self.path.display(), self.offset)
    }
}

impl Reader {
    /// Opens a capture file and reads its header.
    ///
    /// # Errors
    /// The file cannot be read, is not a capture, or is not Ethernet.
    pub fn open(path: &Path) -> Result<Reader, CaptureError> {
        let f = File::open(path).map_err(|source| CaptureError::Io { path: path.to_owned(), source })?;
        Reader::new(path, BufReader::with_capacity(1 << 16, f))
    }
}

fn u16_of(b: &[u8], at: usize, swapped: bool) -> u16 {
    let v = u16::from_le_bytes([b[at], b[at + 1]]);
    if swapped { v.swap_bytes() } else { v }
}

fn u32_of(b: &[u8], at: usize, swapped: bool) -> u32 {
    let v = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    if swapped { v.swap_bytes() } else { v }
}

/// Reads exactly `buf.len()` bytes: `Ok(false)` at a clean end of file
/// (nothing read), an error if the file ends part way.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

const PCAP_MICROS: u32 = 0xa1b2_c3d4;
const PCAP_NANOS: u32 = 0xa1b2_3c4d;
const NG_SECTION: u32 = 0x0a0d_0d0a;
const NG_BYTE_ORDER: u32 = 0x1a2b_3c4d;

impl<R: Read> Reader<R> {
    /// Reads the header of the capture `r` (named `path` in messages).
    ///
    /// # Errors
    /// As [`Reader::open`].
    pub fn new(path: &Path, mut r: R) -> Result<Reader<R>, CaptureError> {
        let path = path.to_owned();
        let io = |source, path: &Path| CaptureError::Io { path: path.to_owned(), source };
        let mut head = [0u8; 24];
        let mut got = 0;
        while got < 24 {
            match r.read(&mut head[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io(e, &path)),
            }
        }
        let magic = [head[0], head[1], head[2], head[3]];
        let le = u32::from_le_bytes(magic);
        let short = |path: PathBuf| CaptureError::Malformed { path, offset: 0, what: "the file header is cut short".into() };
        let mut reader = Reader {
            path,
            r,
            format: Format::Pcap { swapped: false, nanos: false },
            interfaces: Vec::new(),
            offset: 0,
            buf: Vec::new(),
            done: false,
        };
        if le == NG_SECTION {
            if got < 12 {
                return Err(short(reader.path));
            }
            let order = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
            let swapped = match order {
                NG_BYTE_ORDER => false,
                o if o.swap_bytes() == NG_BYTE_ORDER => true,
                _ => {
                    return Err(CaptureError::Malformed {
                        path: reader.path,
                        offset: 8,
                        what: "a section header with no byte-order magic".into(),
                    });
                }
            };
            reader.format = Format::PcapNg { swapped };
            let len = u64::from(u32_of(&head, 4, swapped));
            // The rest of the section header block.
            reader.skip_to(len, got as u64)?;
            return Ok(reader);
        }
        let (swapped, nanos) = match le {
            PCAP_MICROS => (false, false),
            PCAP_NANOS => (false, true),
            m if m.swap_bytes() == PCAP_MICROS => (true, false),
            m if m.swap_bytes() == PCAP_NANOS => (true, true),
            _ => return Err(CaptureError::NotCapture { path: reader.path, magic }),
        };
        if got < 24 {
            return Err(short(reader.path));
        }
        let link = u16::try_from(u32_of(&head, 20, swapped) & 0xffff).unwrap_or(0);
        if link != ETHERNET {
            return Err(CaptureError::NotEthernet { path: reader.path, link, interface: 0 });
        }
        reader.format = Format::Pcap { swapped, nanos };
        reader.offset = 24;
        Ok(reader)
    }

    /// The interfaces of the pcapng section read so far.
    pub fn interfaces(&self) -> &[Interface] {
        &self.interfaces
    }

    /// Skips the rest of a block of `len` bytes of which `read` are read.
    fn skip_to(&mut self, len: u64, read: u64) -> Result<(), CaptureError> {
        let start = self.offset;
        if len < read || len > MAX_BLOCK || len % 4 != 0 {
            return Err(self.malformed(start, format!("a block of {len} bytes")));
        }
        let rest = len - read;
        let skipped = io::copy(&mut (&mut self.r).take(rest), &mut io::sink())
            .map_err(|source| CaptureError::Io { path: self.path.clone(), source })?;
        if skipped < rest {
            return Err(CaptureError::Truncated { path: self.path.clone(), offset: start });
        }
        self.offset += len;
        Ok(())
    }

    fn malformed(&self, offset: u64, what: String) -> CaptureError {
        CaptureError::Malformed { path: self.path.clone(), offset, what }
    }

    /// Reads `n` bytes into the record buffer; a short read is the record
    /// at `start` cut short.
    fn read_body(&mut self, n: usize, start: u64) -> Result<(), CaptureError> {
        self.buf.resize(n, 0);
        match fill(&mut self.r, &mut self.buf) {
            Ok(true) => Ok(()),
            Ok(false) if n == 0 => Ok(()),
            Ok(false) => Err(CaptureError::Truncated { path: self.path.clone(), offset: start }),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(CaptureError::Truncated { path: self.path.clone(), offset: start }),
            Err(source) => Err(CaptureError::Io { path: self.path.clone(), source }),
        }
    }

    /// Reads a record's (or block's) header at `start` into `h`: false at
    /// the clean end of the file, an error if the file ends inside it.
    fn header(&mut self, h: &mut [u8], start: u64) -> Result<bool, CaptureError> {
        match fill(&mut self.r, h) {
            Ok(got) => Ok(got),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(CaptureError::Truncated { path: self.path.clone(), offset: start }),
            Err(source) => Err(CaptureError::Io { path: self.path.clone(), source }),
        }
    }

    /// The frame of the record [`Reader::next_record`] gave last.
    pub fn data(&self) -> &[u8] {
        &self.buf
    }

    /// The next record, `None` at the end; an error ends the capture.
    pub fn next_record(&mut self) -> Option<Result<Record, CaptureError>> {
        if self.done {
            return None;
        }
        let r = match self.format {
            Format::Pcap { swapped, nanos } => self.next_pcap(swapped, nanos),
            Format::PcapNg { .. } => self.next_ng(),
        };
        match r {
            Ok(Some((ts, interface, offset, len))) => {
                self.buf.truncate(len);
                Some(Ok(Record { ts, interface, offset }))
            }
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }

    /// Pads the record buffer (holding `caplen` bytes) with zeros to the
    /// frame's original length, within [`MAX_RECORD`]; returns the length.
    fn padded(&mut self, caplen: usize, orig: usize) -> usize {
        let len = orig.clamp(caplen, MAX_RECORD.max(caplen));
        self.buf.resize(len, 0);
        len
    }

    fn next_pcap(&mut self, swapped: bool, nanos: bool) -> Result<Got, CaptureError> {
        let start = self.offset;
        let mut h = [0u8; 16];
        if !self.header(&mut h, start)? {
            return Ok(None);
        }
        let (sec, frac, caplen, orig) = (u32_of(&h, 0, swapped), u32_of(&h, 4, swapped), u32_of(&h, 8, swapped), u32_of(&h, 12, swapped));
        let caplen = caplen as usize;
        if caplen > MAX_RECORD {
            return Err(self.malformed(start, format!("a record of {caplen} bytes (at most {MAX_RECORD} are read)")));
        }
        self.read_body(caplen, start)?;
        self.offset += 16 + caplen as u64;
        let ts = Duration::from_secs(u64::from(sec))
            + if nanos { Duration::from_nanos(u64::from(frac)) } else { Duration::from_micros(u64::from(frac)) };
        let len = self.padded(caplen, orig as usize);
        Ok(Some((ts, None, start, len)))
    }

    fn next_ng(&mut self) -> Result<Got, CaptureError> {
        loop {
            let Format::PcapNg { swapped } = self.format else { return Ok(None) };
            let start = self.offset;
            let mut h = [0u8; 8];
            if !self.header(&mut h, start)? {
                return Ok(None);
            }
            let kind = u32_of(&h, 0, swapped);
            if kind == NG_SECTION {
                // A new section: its own byte order, its own interfaces.
                let mut order = [0u8; 4];
                if !fill(&mut self.r, &mut order).unwrap_or(false) {
                    return Err(CaptureError::Truncated { path: self.path.clone(), offset: start });
                }
                let o = u32::from_le_bytes(order);
                let swapped = if o == NG_BYTE_ORDER {
                    false
                } else if o.swap_bytes() == NG_BYTE_ORDER {
                    true
                } else {
                    return Err(self.malformed(start + 8, "a section header with no byte-order magic".into()));
                };
                self.format = Format::PcapNg { swapped };
                self.interfaces.clear();
                let len = u64::from(u32_of(&h, 4, swapped));
                self.skip_to(len, 12)?;
                continue;
            }
            let len = u64::from(u32_of(&h, 4, swapped));
            if len < 12 || len % 4 != 0 {
                return Err(self.malformed(start, format!("a block of {len} bytes")));
            }
            match kind {
                // Interface description, enhanced packet, simple packet,
                // obsolete packet: read whole (bounded).
                1 | 2 | 3 | 6 => {
                    let body = usize::try_from(len - 8).unwrap_or(usize::MAX);
                    if body > MAX_RECORD + 64 {
                        return Err(
                            self.malformed(start, format!("a packet block of {len} bytes (at most {MAX_RECORD} bytes of frame are read)"))
                        );
                    }
                    self.read_body(body, start)?;
                    self.offset += len;
                    // The trailing length, after the body proper.
                    let b = std::mem::take(&mut self.buf);
                    let out = self.block(kind, &b[..body - 4], swapped, start);
                    self.buf = b;
                    match out? {
                        Some(f) => {
                            // Move the frame to the front of the buffer.
                            self.buf.copy_within(f.at..f.at + f.caplen, 0);
                            self.buf.truncate(f.caplen);
                            let len = self.padded(f.caplen, f.orig);
                            return Ok(Some((f.ts, Some(f.interface), start, len)));
                        }
                        None => continue,
                    }
                }
                _ => self.skip_to(len, 8)?,
            }
        }
    }

    /// Reads a block's body: an interface is recorded (`None`), a packet
    /// gives its time, interface, where its frame starts in the body and
    /// (captured, original) lengths.
    fn block(&mut self, kind: u32, b: &[u8], swapped: bool, start: u64) -> Result<Option<InBlock>, CaptureError> {
        let need = |n: usize, what: &str| {
            if b.len() < n {
                Err(CaptureError::Malformed {
                    path: self.path.clone(),
                    offset: start,
                    what: format!("a {what} block too short for its fields"),
                })
            } else {
                Ok(())
            }
        };
        match kind {
            1 => {
                need(8, "interface description")?;
                let link = u16_of(b, 0, swapped);
                let snaplen = u32_of(b, 4, swapped);
                let (mut name, mut units) = (None, 1_000_000u64);
                let mut at = 8;
                while at + 4 <= b.len() {
                    let (code, olen) = (u16_of(b, at, swapped), usize::from(u16_of(b, at + 2, swapped)));
                    let Some(v) = b.get(at + 4..at + 4 + olen) else {
                        return Err(CaptureError::Malformed {
                            path: self.path.clone(),
                            offset: start,
                            what: format!("an interface description whose option {code} runs past the end of its block"),
                        });
                    };
                    match code {
                        0 => break,
                        2 => name = Some(String::from_utf8_lossy(v).trim_end_matches('\0').to_owned()),
                        9 if olen == 1 => {
                            let r = u32::from(v[0] & 0x7f);
                            units =
                                if v[0] & 0x80 == 0 { 10u64.checked_pow(r) } else { 2u64.checked_pow(r) }.unwrap_or(1_000_000_000).max(1);
                        }
                        _ => {}
                    }
                    at += 4 + olen.div_ceil(4) * 4;
                }
                self.interfaces.push(Interface { link, name, units, snaplen });
                Ok(None)
            }
            6 | 2 => {
                need(20, "packet")?;
                let (iface, high, low, caplen, orig) = if kind == 6 {
                    (u32_of(b, 0, swapped), u32_of(b, 4, swapped), u32_of(b, 8, swapped), u32_of(b, 12, swapped), u32_of(b, 16, swapped))
                } else {
                    (
                        u32::from(u16_of(b, 0, swapped)),
                        u32_of(b, 4, swapped),
                        u32_of(b, 8, swapped),
                        u32_of(b, 12, swapped),
                        u32_of(b, 16, swapped),
                    )
                };
                let caplen = caplen as usize;
                if 20 + caplen > b.len() {
                    return Err(CaptureError::Malformed {
                        path: self.path.clone(),
                        offset: start,
                        what: format!("a packet of {caplen} bytes in a block of {}", b.len() + 12),
                    });
                }
                let i = self.interface(iface, start)?;
                let ticks = u64::from(high) << 32 | u64::from(low);
                let ts = Duration::from_secs(ticks / i.units)
                    + Duration::from_nanos(u64::try_from(u128::from(ticks % i.units) * 1_000_000_000 / u128::from(i.units)).unwrap_or(0));
                Ok(Some(InBlock { ts, interface: iface, at: 20, caplen, orig: orig as usize }))
            }
            _ => {
                // A simple packet block: interface 0, no time.
                need(4, "simple packet")?;
                let orig = u32_of(b, 0, swapped) as usize;
                let i = self.interface(0, start)?;
                let snap = if i.snaplen == 0 { usize::MAX } else { i.snaplen as usize };
                let caplen = orig.min(snap).min(b.len() - 4);
                Ok(Some(InBlock { ts: Duration::ZERO, interface: 0, at: 4, caplen, orig }))
            }
        }
    }

    fn interface(&self, iface: u32, start: u64) -> Result<Interface, CaptureError> {
        let i = self.interfaces.get(iface as usize).cloned().ok_or_else(|| {
            self.malformed(start, format!("a packet of interface {iface}, which no interface description block declared"))
        })?;
        if i.link != ETHERNET {
            return Err(CaptureError::NotEthernet { path: self.path.clone(), link: i.link, interface: iface });
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pcapng section header, then an interface description block whose
    /// last option (`if_tsresol`, one byte) is cut by the end of its block:
    /// the value the option claims lies past the block.
    fn cut_option() -> Vec<u8> {
        let mut f = Vec::new();
        // Section header: type, length 28, byte-order magic, version 1.0,
        // section length unknown, length again.
        for w in [0x0A0D_0D0Au32, 28, 0x1A2B_3C4D, 1] {
            f.extend_from_slice(&w.to_le_bytes());
        }
        f.extend_from_slice(&u64::MAX.to_le_bytes());
        f.extend_from_slice(&28u32.to_le_bytes());
        // Interface description: type 1, length 24: link type 1, reserved,
        // snaplen, the option header `if_tsresol` (9) of length 1 and no
        // room for its value, the length again.
        f.extend_from_slice(&1u32.to_le_bytes());
        f.extend_from_slice(&24u32.to_le_bytes());
        f.extend_from_slice(&1u16.to_le_bytes());
        f.extend_from_slice(&0u16.to_le_bytes());
        f.extend_from_slice(&65535u32.to_le_bytes());
        f.extend_from_slice(&9u16.to_le_bytes());
        f.extend_from_slice(&1u16.to_le_bytes());
        f.extend_from_slice(&24u32.to_le_bytes());
        f
    }

    #[test]
    fn an_option_cut_by_the_end_of_its_block_is_not_read_past_it() {
        let data = cut_option();
        let mut r = Reader::new(Path::new("cut.pcapng"), std::io::Cursor::new(data)).expect("a pcapng header");
        let e = r.next_record().expect("a record or an error").expect_err("the cut option is an error");
        assert!(e.to_string().contains("option 9 runs past the end of its block"), "{e}");
    }
}
