//! The kernel's receive work for an interface the loop cannot busy poll.
//!
//! In threaded NAPI (`/sys/class/net/IF/threaded`), an interface's
//! receive work runs in kernel threads (`napi/IF-ID`). When such a thread
//! shares a core with a poll loop, the two compete for it at equal weight.
//! Offered more than the loop can take, the thread keeps receiving frames
//! the loop has no time to take: it drops them (the socket's fill ring is
//! empty) at the cost of the very core time the loop needed, and the more
//! the interface is offered, the less gets through.
//!
//! Preferred busy polling solves this by having the loop drive the receive
//! work itself. Where the kernel gives the queue no NAPI context to busy
//! poll (veth on some kernels, tap), the loop gets the same effect from the
//! scheduler: a NAPI thread pinned to the loop's core runs at idle
//! priority (`SCHED_IDLE`). It then receives when the loop waits for
//! frames, and stops as soon as the frames it handed over wake the loop:
//! the kernel receives only as fast as the loop consumes, and what the
//! loop cannot take is dropped by the sender, at no cost to this core.
//!
//! The threads are found through the `netdev` generic netlink family
//! (`napi-get`, which names each NAPI context's thread), so a thread is
//! only ever one of the loop's own interfaces, in the loop's own network
//! namespace; the thread's scheduling is put back when the loop lets go.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// One NAPI context: its interface, its id and its kernel thread (0 when
/// the interface is not in threaded NAPI).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context {
    pub ifindex: u32,
    pub id: u32,
    pub pid: i32,
}

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_NAPI_GET: u8 = 11;
const NETDEV_A_NAPI_IFINDEX: u16 = 1;
const NETDEV_A_NAPI_ID: u16 = 2;
const NETDEV_A_NAPI_PID: u16 = 4;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDR: usize = 16;
const GENL_HDR: usize = 4;

/// The kernel's `netdev` generic netlink family, asked about NAPI
/// contexts (in this thread's network namespace).
#[derive(Debug)]
pub struct Netdev {
    sock: Genl,
    family: u16,
}

impl Netdev {
    /// # Errors
    /// The netlink socket fails, or the kernel has no `netdev` family.
    pub fn open() -> std::io::Result<Netdev> {
        let sock = Genl::open()?;
        let family = sock.family("netdev")?;
        Ok(Netdev { sock, family })
    }

    /// The NAPI contexts of interface `ifindex`, or of every interface of
    /// the namespace (one request, whatever their number).
    ///
    /// # Errors
    /// The kernel has no `napi-get` (before Linux 6.9), or the socket
    /// fails: the error says which.
    pub fn contexts(&self, ifindex: Option<u32>) -> std::io::Result<Vec<Context>> {
        let mut attrs = Vec::new();
        if let Some(i) = ifindex {
            put_attr(&mut attrs, NETDEV_A_NAPI_IFINDEX, &i.to_ne_bytes());
        }
        let mut out = Vec::new();
        self.sock.dump(self.family, NETDEV_CMD_NAPI_GET, &attrs, |payload| {
            let mut c = Context { ifindex: 0, id: 0, pid: 0 };
            for (t, v) in Attrs(payload) {
                match t {
                    NETDEV_A_NAPI_IFINDEX => c.ifindex = read_u32(v).unwrap_or(0),
                    NETDEV_A_NAPI_ID => c.id = read_u32(v).unwrap_or(0),
                    NETDEV_A_NAPI_PID => c.pid = read_u32(v).and_then(|p| i32::try_from(p).ok()).unwrap_or(0),
                    _ => {}
                }
            }
            out.push(c);
        })?;
        Ok(out)
    }
}

/// A generic netlink socket.
#[derive(Debug)]
struct Genl(OwnedFd);

impl Genl {
    fn open() -> std::io::Result<Genl> {
        // SAFETY: a plain socket call; the descriptor is owned below.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_GENERIC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // The kernel answers while the request is sent (and makes each
        // further part of a dump while the last is read), so an answer is
        // there at once; the timeout only bounds the loop's wait should it
        // not be.
        let timeout = libc::timeval { tv_sec: 0, tv_usec: 10_000 };
        let tlen = libc::socklen_t::try_from(std::mem::size_of::<libc::timeval>()).unwrap_or(16);
        // SAFETY: `timeout` is a valid timeval of `tlen` bytes.
        unsafe { libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&raw const timeout).cast(), tlen) };
        Ok(Genl(fd))
    }

    /// The id of generic netlink family `name`.
    fn family(&self, name: &str) -> std::io::Result<u16> {
        let mut attrs = Vec::new();
        let mut z = name.as_bytes().to_vec();
        z.push(0);
        put_attr(&mut attrs, CTRL_ATTR_FAMILY_NAME, &z);
        let mut id = None;
        self.exchange(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 0, &attrs, |payload| {
            id = Attrs(payload)
                .find(|&(t, _)| t == CTRL_ATTR_FAMILY_ID)
                .and_then(|(_, v)| v.get(..2))
                .map(|b| u16::from_ne_bytes([b[0], b[1]]));
        })
        .map_err(|e| std::io::Error::new(e.kind(), format!("generic netlink family {name}: {e}")))?;
        id.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("generic netlink family {name}: no id in the answer")))
    }

    fn dump(&self, family: u16, cmd: u8, attrs: &[u8], each: impl FnMut(&[u8])) -> std::io::Result<()> {
        self.exchange(family, cmd, NLM_F_DUMP, attrs, each)
    }

    /// Sends one request and hands each answer's attributes to `each`,
    /// until the kernel says it is done (or, for a request that is not a
    /// dump, after the one answer).
    fn exchange(&self, family: u16, cmd: u8, flags: u16, attrs: &[u8], mut each: impl FnMut(&[u8])) -> std::io::Result<()> {
        let req = request(family, cmd, NLM_F_REQUEST | flags, attrs);
        // SAFETY: `req` is a valid buffer of its length; the kernel is the
        // default destination of an unbound netlink socket.
        if unsafe { libc::send(self.0.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            // SAFETY: `buf` is a valid buffer of its length for the kernel.
            let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let n = usize::try_from(n).map_err(|_| std::io::Error::last_os_error())?;
            for m in Messages(&buf[..n]) {
                match m {
                    Message::Done => return Ok(()),
                    Message::Error(0) if flags & NLM_F_DUMP == 0 => return Ok(()),
                    Message::Error(0) => {}
                    Message::Error(e) => return Err(std::io::Error::from_raw_os_error(e)),
                    Message::Data(payload) => {
                        each(payload);
                        if flags & NLM_F_DUMP == 0 {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
}

/// A generic netlink request: the netlink header, the generic header, the
/// attributes.
fn request(family: u16, cmd: u8, flags: u16, attrs: &[u8]) -> Vec<u8> {
    let len = u32::try_from(NLMSG_HDR + GENL_HDR + attrs.len()).unwrap_or(u32::MAX);
    let mut m = Vec::with_capacity(NLMSG_HDR + GENL_HDR + attrs.len());
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&family.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[cmd, 1, 0, 0]);
    m.extend_from_slice(attrs);
    m
}

/// Appends one attribute, padded to 4 bytes.
fn put_attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = u16::try_from(4 + value.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len().next_multiple_of(4), 0);
}

fn read_u32(v: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?))
}

/// One netlink message of an answer.
#[derive(Debug, PartialEq, Eq)]
enum Message<'a> {
    /// A generic netlink answer's attributes.
    Data(&'a [u8]),
    /// `NLMSG_ERROR`: 0 acknowledges, else the (positive) errno.
    Error(i32),
    Done,
}

/// The messages of a buffer the kernel filled; stops at the first that is
/// cut short.
struct Messages<'a>(&'a [u8]);

impl<'a> Iterator for Messages<'a> {
    type Item = Message<'a>;

    fn next(&mut self) -> Option<Message<'a>> {
        let b = self.0;
        let len = usize::try_from(read_u32(b)?).ok()?;
        if len < NLMSG_HDR || len > b.len() {
            self.0 = &[];
            return None;
        }
        let kind = u16::from_ne_bytes([b[4], b[5]]);
        let body = &b[NLMSG_HDR..len];
        self.0 = b.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        Some(match kind {
            NLMSG_DONE => Message::Done,
            NLMSG_ERROR => {
                Message::Error(body.get(..4).map_or(libc::EPROTO, |e| i32::from_ne_bytes([e[0], e[1], e[2], e[3]]).saturating_neg()))
            }
            _ => Message::Data(body.get(GENL_HDR..).unwrap_or(&[])),
        })
    }
}

/// The attributes of a message: (type without its flag bits, value).
struct Attrs<'a>(&'a [u8]);

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<(u16, &'a [u8])> {
        let b = self.0;
        let h = b.get(..4)?;
        let len = usize::from(u16::from_ne_bytes([h[0], h[1]]));
        let kind = u16::from_ne_bytes([h[2], h[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            self.0 = &[];
            return None;
        }
        self.0 = b.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        Some((kind, &b[4..len]))
    }
}

/// A NAPI thread running at idle priority for a loop; its scheduling as
/// it was is put back when this is dropped.
#[derive(Debug)]
pub struct Yielded {
    pub pid: i32,
    /// Its name (`napi/IF-ID`), as the kernel gives it.
    pub name: String,
    policy: i32,
    priority: i32,
    nice: i32,
}

/// A thread's name (`/proc/PID/comm`).
fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim_end().to_owned())
}

/// Whether thread `pid` may run on `core` only.
pub fn pinned_to(pid: i32, core: usize) -> bool {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size given.
    if unsafe { libc::sched_getaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &raw mut set) } != 0 {
        return false;
    }
    // SAFETY: reading a valid set (a bit within its size, and its count).
    core < libc::CPU_SETSIZE as usize && unsafe { libc::CPU_ISSET(core, &set) && libc::CPU_COUNT(&set) == 1 }
}

/// Why a thread was left as it is.
#[derive(Debug)]
pub enum Left {
    /// It runs under a real-time policy (or another that is not the
    /// default): someone chose that; the switch leaves it.
    Chosen(i32),
    /// It is not a NAPI thread (the id was reused), or is gone.
    NotNapi,
    Refused(std::io::Error),
}

impl std::fmt::Display for Left {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Left::Chosen(p) => write!(f, "it runs under scheduling policy {p}, which someone chose"),
            Left::NotNapi => write!(f, "it is gone"),
            Left::Refused(e) => write!(f, "sched_setscheduler: {e}"),
        }
    }
}

/// Runs NAPI thread `pid` at idle priority, if it runs at the default
/// policy now (or at idle priority already).
///
/// # Errors
/// [`Left`]: why it was not.
pub fn yield_thread(pid: i32) -> Result<Yielded, Left> {
    let name = comm(pid).filter(|n| n.starts_with("napi/")).ok_or(Left::NotNapi)?;
    // SAFETY: plain queries of a thread's scheduling.
    let policy = unsafe { libc::sched_getscheduler(pid) };
    if policy < 0 {
        return Err(Left::NotNapi);
    }
    if policy == libc::SCHED_IDLE {
        // Left so by a switch that did not exit cleanly (killed): put
        // back to the kernel's default for its NAPI threads at exit.
        return Ok(Yielded { pid, name, policy: libc::SCHED_OTHER, priority: 0, nice: 0 });
    }
    if policy != libc::SCHED_OTHER {
        return Err(Left::Chosen(policy));
    }
    let mut param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param.
    unsafe { libc::sched_getparam(pid, &raw mut param) };
    // SAFETY: as above; -1 is a valid nice value, so errno is not checked
    // (a failure here means the thread is gone, and the next call fails).
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, pid as libc::id_t) };
    let idle = libc::sched_param { sched_priority: 0 };
    // SAFETY: `idle` is a valid sched_param; SCHED_IDLE takes priority 0.
    if unsafe { libc::sched_setscheduler(pid, libc::SCHED_IDLE, &raw const idle) } != 0 {
        return Err(Left::Refused(std::io::Error::last_os_error()));
    }
    Ok(Yielded { pid, name, policy, priority: param.sched_priority, nice })
}

impl Drop for Yielded {
    fn drop(&mut self) {
        // The id may have gone to another thread since: only a thread of
        // the same name is put back.
        if comm(self.pid).as_deref() != Some(self.name.as_str()) {
            return;
        }
        let param = libc::sched_param { sched_priority: self.priority };
        // SAFETY: `param` is a valid sched_param; the policy and nice are
        // the thread's own from before.
        unsafe {
            libc::sched_setscheduler(self.pid, self.policy, &raw const param);
            libc::setpriority(libc::PRIO_PROCESS, self.pid as libc::id_t, self.nice);
        }
    }
}

/// The scheduling policy of thread `pid` (`SCHED_*`), for the tests.
pub fn policy(pid: i32) -> Option<i32> {
    // SAFETY: a plain query.
    let p = unsafe { libc::sched_getscheduler(pid) };
    (p >= 0).then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&u32::try_from(NLMSG_HDR + body.len()).unwrap().to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(body);
        m.resize(m.len().next_multiple_of(4), 0);
        m
    }

    #[test]
    fn an_answer_is_read_message_by_message_and_attribute_by_attribute() {
        let mut attrs = Vec::new();
        put_attr(&mut attrs, NETDEV_A_NAPI_ID, &8195u32.to_ne_bytes());
        put_attr(&mut attrs, 3, &[1, 2, 3]);
        put_attr(&mut attrs, NETDEV_A_NAPI_PID | 0x8000, &1234u32.to_ne_bytes());
        let mut body = vec![NETDEV_CMD_NAPI_GET, 1, 0, 0];
        body.extend_from_slice(&attrs);
        let mut buf = message(20, &body);
        buf.extend(message(NLMSG_ERROR, &(-libc::EOPNOTSUPP).to_ne_bytes()));
        buf.extend(message(NLMSG_DONE, &0u32.to_ne_bytes()));
        let got: Vec<Message<'_>> = Messages(&buf).collect();
        assert_eq!(got.len(), 3);
        let Message::Data(payload) = got[0] else { panic!("{got:?}") };
        let a: Vec<(u16, &[u8])> = Attrs(payload).collect();
        assert_eq!(
            a,
            vec![(NETDEV_A_NAPI_ID, &8195u32.to_ne_bytes()[..]), (3, &[1, 2, 3][..]), (NETDEV_A_NAPI_PID, &1234u32.to_ne_bytes()[..])]
        );
        assert_eq!(got[1], Message::Error(libc::EOPNOTSUPP));
        assert_eq!(got[2], Message::Done);
    }

    #[test]
    fn a_cut_answer_ends_the_reading_without_a_panic() {
        let mut attrs = Vec::new();
        put_attr(&mut attrs, NETDEV_A_NAPI_ID, &7u32.to_ne_bytes());
        let mut body = vec![0u8; 4];
        body.extend_from_slice(&attrs);
        let buf = message(20, &body);
        for cut in 0..buf.len() {
            for m in Messages(&buf[..cut]) {
                if let Message::Data(p) = m {
                    let _ = Attrs(p).count();
                }
            }
        }
        // An attribute whose length runs past its message.
        let mut bad = attrs.clone();
        bad[0] = 200;
        assert_eq!(Attrs(&bad).count(), 0);
        assert_eq!(Attrs(&[4, 0]).count(), 0);
    }

    #[test]
    fn the_request_is_laid_out_as_the_kernel_reads_it() {
        let mut attrs = Vec::new();
        put_attr(&mut attrs, CTRL_ATTR_FAMILY_NAME, b"netdev\0");
        assert_eq!(attrs.len(), 12, "4 of header, 7 of name, 1 of padding");
        let r = request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, NLM_F_REQUEST, &attrs);
        assert_eq!(read_u32(&r), Some(32));
        assert_eq!(&r[4..6], &GENL_ID_CTRL.to_ne_bytes());
        assert_eq!(r[16], CTRL_CMD_GETFAMILY);
        assert_eq!(&r[20..], &attrs[..]);
    }
}
