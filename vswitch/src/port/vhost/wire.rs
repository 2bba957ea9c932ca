//! vhost-user messages on the socket: a 12-byte header (request, flags,
//! size), a body of `size` bytes, and file descriptors beside the header
//! (SCM_RIGHTS). Only what a virtio-net backend with one queue pair is sent
//! is parsed; every length is checked before it is read.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;

pub(super) const GET_FEATURES: u32 = 1;
pub(super) const SET_FEATURES: u32 = 2;
pub(super) const SET_OWNER: u32 = 3;
pub(super) const RESET_OWNER: u32 = 4;
pub(super) const SET_MEM_TABLE: u32 = 5;
pub(super) const SET_VRING_NUM: u32 = 8;
pub(super) const SET_VRING_ADDR: u32 = 9;
pub(super) const SET_VRING_BASE: u32 = 10;
pub(super) const GET_VRING_BASE: u32 = 11;
pub(super) const SET_VRING_KICK: u32 = 12;
pub(super) const SET_VRING_CALL: u32 = 13;
pub(super) const SET_VRING_ERR: u32 = 14;
pub(super) const GET_PROTOCOL_FEATURES: u32 = 15;
pub(super) const SET_PROTOCOL_FEATURES: u32 = 16;
pub(super) const GET_QUEUE_NUM: u32 = 17;
pub(super) const SET_VRING_ENABLE: u32 = 18;

/// The protocol's version in a header's flags.
const VERSION: u32 = 1;
const FLAG_REPLY: u32 = 1 << 2;
const FLAG_NEED_REPLY: u32 = 1 << 3;
/// The largest body the switch takes (SET_MEM_TABLE with its 8 regions is
/// 264 bytes).
const MAX_BODY: usize = 4096;
/// File descriptors one message may carry.
const MAX_FDS: usize = 8;
/// SET_VRING_KICK/CALL/ERR: no descriptor comes (polling instead).
const NO_FD: u64 = 1 << 8;

/// One message from the frontend.
#[derive(Debug)]
pub(super) struct Message {
    pub(super) code: u32,
    flags: u32,
    body: Vec<u8>,
    pub(super) files: Vec<File>,
}

/// One region of the guest's memory (SET_MEM_TABLE).
#[derive(Debug, Clone, Copy)]
pub(super) struct Region {
    pub(super) guest: u64,
    pub(super) size: u64,
    /// Where the frontend has it mapped: ring addresses are given so.
    pub(super) frontend: u64,
    pub(super) offset: u64,
}

impl Message {
    pub(super) fn needs_reply(&self) -> bool {
        self.flags & FLAG_NEED_REPLY != 0
    }

    fn word(&self, at: usize) -> Result<u64, String> {
        self.body.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))).ok_or_else(|| self.short())
    }

    fn half(&self, at: usize) -> Result<u32, String> {
        self.body.get(at..at + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4]))).ok_or_else(|| self.short())
    }

    fn short(&self) -> String {
        format!("request {}: a body of {} bytes is too short", self.code, self.body.len())
    }

    pub(super) fn u64(&self) -> Result<u64, String> {
        self.word(0)
    }

    /// (index, num) of a vring state.
    pub(super) fn vring_state(&self) -> Result<(u32, u32), String> {
        Ok((self.half(0)?, self.half(4)?))
    }

    /// (index, descriptor table, used ring, available ring), in the
    /// frontend's addresses.
    pub(super) fn vring_addr(&self) -> Result<(u32, u64, u64, u64), String> {
        Ok((self.half(0)?, self.word(8)?, self.word(16)?, self.word(24)?))
    }

    /// The ring of a SET_VRING_KICK/CALL/ERR, and its descriptor unless it
    /// came with none.
    pub(super) fn vring_fd(mut self) -> Result<(u32, Option<File>), String> {
        let v = self.u64()?;
        let index = u32::try_from(v & 0xff).unwrap_or(0);
        let file = if v & NO_FD != 0 { None } else { Some(self.files.pop().ok_or("a ring's eventfd is missing")?) };
        Ok((index, file))
    }

    /// SET_MEM_TABLE's regions.
    pub(super) fn regions(&self) -> Result<Vec<Region>, String> {
        let n = self.half(0)? as usize;
        if n > MAX_FDS {
            return Err(format!("{n} memory regions (at most {MAX_FDS})"));
        }
        (0..n)
            .map(|k| {
                let at = 8 + 32 * k;
                Ok(Region { guest: self.word(at)?, size: self.word(at + 8)?, frontend: self.word(at + 16)?, offset: self.word(at + 24)? })
            })
            .collect()
    }
}

/// Reads one message; `None` when the frontend closed the connection.
///
/// # Errors
/// A broken or oversized message, or the socket failed.
pub(super) fn read(stream: &mut UnixStream) -> Result<Option<Message>, String> {
    let mut head = [0u8; 12];
    let (n, files) = recv_with_files(stream, &mut head)?;
    if n == 0 {
        return Ok(None);
    }
    if n < head.len() {
        stream.read_exact(&mut head[n..]).map_err(|e| format!("a message header: {e}"))?;
    }
    let word = |k: usize| u32::from_le_bytes([head[k], head[k + 1], head[k + 2], head[k + 3]]);
    let (code, flags, size) = (word(0), word(4), word(8) as usize);
    if flags & 0x3 != VERSION {
        return Err(format!("protocol version {} (the switch speaks {VERSION})", flags & 0x3));
    }
    if size > MAX_BODY {
        return Err(format!("request {code}: a body of {size} bytes"));
    }
    let mut body = vec![0u8; size];
    stream.read_exact(&mut body).map_err(|e| format!("request {code}: its body: {e}"))?;
    Ok(Some(Message { code, flags, body, files }))
}

/// Sends the reply to request `code`.
///
/// # Errors
/// The socket failed.
pub(super) fn reply(stream: &mut UnixStream, code: u32, body: &[u8]) -> Result<(), String> {
    let mut out = Vec::with_capacity(12 + body.len());
    out.extend_from_slice(&code.to_le_bytes());
    out.extend_from_slice(&(VERSION | FLAG_REPLY).to_le_bytes());
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(0).to_le_bytes());
    out.extend_from_slice(body);
    stream.write_all(&out).map_err(|e| e.to_string())
}

/// `recvmsg` into `buf`, with the descriptors that came along.
#[allow(unsafe_code, reason = "recvmsg with SCM_RIGHTS has no safe std API")]
fn recv_with_files(stream: &UnixStream, buf: &mut [u8]) -> Result<(usize, Vec<File>), String> {
    const SPACE: usize = 64;
    // `u64` storage keeps the control buffer aligned for cmsghdr.
    let mut control = [0u64; SPACE / 8];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: msghdr is plain data; all-zero is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = SPACE as _;
    // SAFETY: `msg` points at `iov` (into `buf`) and `control`, which
    // outlive the call and are as long as their lengths say.
    let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &raw mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(format!("recvmsg: {}", std::io::Error::last_os_error()));
    }
    let mut files = Vec::new();
    // SAFETY: the CMSG_* walk stays within `msg.msg_control` as the kernel
    // filled it (`msg_controllen`); each SCM_RIGHTS payload holds
    // `(cmsg_len - CMSG_LEN(0)) / 4` descriptors, now ours to own.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<libc::c_int>();
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<libc::c_int>();
                for k in 0..count {
                    files.push(File::from_raw_fd(std::ptr::read_unaligned(data.add(k))));
                }
            }
            c = libc::CMSG_NXTHDR(&raw const msg, c);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err("more file descriptors than a message may carry".into());
    }
    Ok((usize::try_from(n).unwrap_or(0), files))
}
