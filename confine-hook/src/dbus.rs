//! A minimal D-Bus client for systemd's private socket (`/run/systemd/private`,
//! `/run/user/UID/systemd/private`): peer-to-peer, so no bus daemon, no `Hello`, no match rules
//! (systemd sends every signal to every private connection). It asks for one transient scope
//! and waits for its start job to end.
//!
//! The peer is hostile (a user can put any socket at their own path, and we run as root): every
//! read is bounded by one deadline, a message by [`MAX_MESSAGE`], a connection by
//! [`MAX_TOTAL`] bytes and [`MAX_MESSAGES`] messages, and every length, offset, alignment and
//! nesting is checked before use. Errors are one short phrase for the caller to wrap.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Instant;

/// The largest message accepted (header and body).
pub const MAX_MESSAGE: usize = 1 << 20;
/// The most bytes read from one connection.
pub const MAX_TOTAL: usize = 16 << 20;
/// The most messages read from one connection.
pub const MAX_MESSAGES: usize = 1 << 16;
/// The most values decoded from one message part, and the deepest container nesting.
const MAX_VALUES: usize = 1 << 16;
const MAX_DEPTH: u32 = 64;

pub const METHOD_CALL: u8 = 1;
pub const METHOD_RETURN: u8 = 2;
pub const ERROR: u8 = 3;
pub const SIGNAL: u8 = 4;

const F_PATH: u8 = 1;
const F_INTERFACE: u8 = 2;
const F_MEMBER: u8 = 3;
const F_ERROR_NAME: u8 = 4;
const F_REPLY_SERIAL: u8 = 5;
const F_DESTINATION: u8 = 6;
const F_SIGNATURE: u8 = 8;

const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER_IFACE: &str = "org.freedesktop.systemd1.Manager";

/// A decoded value: integers of every width (signed ones sign-extended, doubles as their
/// bits), strings (`s`, `o`, `g`), arrays, structs and dict entries, variants with their
/// signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Int(u64),
    Str(String),
    Array(Vec<Value>),
    Struct(Vec<Value>),
    Variant(String, Box<Value>),
}

/// One message; its body is decoded on demand ([`Message::args`]).
#[derive(Debug, Clone, Default)]
pub struct Message {
    pub kind: u8,
    pub serial: u32,
    pub reply_serial: Option<u32>,
    pub path: Option<String>,
    pub interface: Option<String>,
    pub member: Option<String>,
    pub error_name: Option<String>,
    pub destination: Option<String>,
    pub signature: String,
    big: bool,
    body: Vec<u8>,
}

impl Message {
    /// The body's values, checked against the signature.
    pub fn args(&self) -> Result<Vec<Value>, String> {
        let mut d = Dec::new(&self.body, self.big);
        let types = split_types(self.signature.as_bytes())?;
        let out = types
            .iter()
            .map(|t| d.value(t, 0))
            .collect::<Result<_, _>>()?;
        if d.pos != self.body.len() {
            return Err("message body longer than its signature".into());
        }
        Ok(out)
    }
}

/// Parses the message at the start of `buf`: `None` when more bytes are needed, else the
/// message and its length. Refuses anything malformed or over [`MAX_MESSAGE`] as soon as the
/// 16-byte fixed header shows it.
pub fn parse_message(buf: &[u8]) -> Result<Option<(Message, usize)>, String> {
    let Some(&[endian, kind, _flags, version]) = buf.get(..4) else {
        return Ok(None);
    };
    let big = match endian {
        b'l' => false,
        b'B' => true,
        _ => return Err("not a D-Bus message".into()),
    };
    if version != 1 {
        return Err(format!("unsupported D-Bus protocol version {version}"));
    }
    let Some(fixed) = buf.get(..16) else {
        return Ok(None);
    };
    let mut d = Dec::new(fixed, big);
    d.pos = 4;
    let (body_len, serial, fields_len) = (d.u32()? as u64, d.u32()?, d.u32()? as u64);
    let fields_end = 16 + fields_len;
    let total = fields_end.div_ceil(8) * 8 + body_len;
    if total > MAX_MESSAGE as u64 {
        return Err("message too large".into());
    }
    // All three fit in usize now.
    let (fields_end, total) = (fields_end as usize, total as usize);
    let Some(msg) = buf.get(..total) else {
        return Ok(None);
    };
    if kind == 0 || serial == 0 {
        return Err("invalid message header".into());
    }
    let mut d = Dec::new(msg.get(..fields_end).unwrap_or_default(), big);
    d.pos = 12;
    let Value::Array(fields) = d.value(b"a(yv)", 0)? else {
        return Err("invalid message header".into());
    };
    d.buf = msg;
    d.align(8)?;
    let body = msg.get(d.pos..).unwrap_or_default().to_vec();
    let mut m = Message {
        kind,
        serial,
        big,
        body,
        ..Message::default()
    };
    let mut seen = 0u32;
    for f in fields {
        let Value::Struct(f) = f else { continue };
        let [Value::Int(code), Value::Variant(sig, v)] = f.as_slice() else {
            continue;
        };
        // Unknown fields (and SENDER, UNIX_FDS) are ignored, as the spec says.
        let code = *code as u8;
        if !matches!(code, F_PATH..=F_DESTINATION | F_SIGNATURE) {
            continue;
        }
        if seen & (1 << code) != 0 {
            return Err("repeated header field".into());
        }
        seen |= 1 << code;
        let text = || match v.as_ref() {
            Value::Str(s) => Some(s.clone()),
            _ => None,
        };
        match (code, sig.as_str(), v.as_ref()) {
            (F_PATH, "o", _) => m.path = text(),
            (F_INTERFACE, "s", _) => m.interface = text(),
            (F_MEMBER, "s", _) => m.member = text(),
            (F_ERROR_NAME, "s", _) => m.error_name = text(),
            (F_DESTINATION, "s", _) => m.destination = text(),
            (F_REPLY_SERIAL, "u", &Value::Int(n)) => m.reply_serial = Some(n as u32),
            (F_SIGNATURE, "g", Value::Str(s)) => m.signature = s.clone(),
            _ => return Err(format!("header field {code} of the wrong type")),
        }
    }
    let complete = match kind {
        METHOD_CALL => m.path.is_some() && m.member.is_some(),
        METHOD_RETURN => m.reply_serial.is_some(),
        ERROR => m.error_name.is_some() && m.reply_serial.is_some(),
        SIGNAL => m.path.is_some() && m.interface.is_some() && m.member.is_some(),
        _ => true, // unknown kinds are ignored, as the spec says
    };
    if !complete {
        return Err("message without a required header field".into());
    }
    if m.signature.is_empty() && !m.body.is_empty() {
        return Err("message body without a signature".into());
    }
    Ok(Some((m, total)))
}

/// The length of the single complete type `sig` starts with; `arrays` and `structs` are the
/// enclosing nesting, each limited to 32 by the spec.
fn type_len(sig: &[u8], arrays: u32, structs: u32) -> Result<usize, String> {
    let bad = || "invalid signature".to_string();
    if arrays > 32 || structs > 32 {
        return Err("signature nested too deeply".into());
    }
    match sig.first() {
        Some(b'y' | b'b' | b'n' | b'q' | b'i' | b'u' | b'x' | b't' | b'd' | b'h') => Ok(1),
        Some(b's' | b'o' | b'g' | b'v') => Ok(1),
        Some(b'a') if sig.get(1) == Some(&b'{') => {
            // A dict entry: a basic key, one complete value type, `}`.
            let rest = sig.get(3..).ok_or_else(bad)?;
            if !matches!(sig.get(2), Some(c) if b"ybnqiuxtdhsog".contains(c)) {
                return Err(bad());
            }
            let n = type_len(rest, arrays + 1, structs + 1)?;
            match rest.get(n) {
                Some(b'}') => Ok(n + 4),
                _ => Err(bad()),
            }
        }
        Some(b'a') => Ok(1 + type_len(sig.get(1..).ok_or_else(bad)?, arrays + 1, structs)?),
        Some(b'(') => {
            let mut i = 1;
            loop {
                match sig.get(i) {
                    Some(b')') if i > 1 => return Ok(i + 1),
                    Some(_) => i += type_len(sig.get(i..).ok_or_else(bad)?, arrays, structs + 1)?,
                    None => return Err(bad()),
                }
            }
        }
        _ => Err(bad()),
    }
}

/// The complete types of the signature `sig`.
fn split_types(mut sig: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut types = vec![];
    while !sig.is_empty() {
        let (t, rest) = sig
            .split_at_checked(type_len(sig, 0, 0)?)
            .ok_or("invalid signature")?;
        types.push(t);
        sig = rest;
    }
    Ok(types)
}

fn valid_path(p: &str) -> bool {
    let element =
        |e: &str| !e.is_empty() && e.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    p == "/"
        || p.strip_prefix('/')
            .is_some_and(|p| p.split('/').all(element))
}

fn align_of(t: u8) -> usize {
    match t {
        b'n' | b'q' => 2,
        b'b' | b'i' | b'u' | b'h' | b's' | b'o' | b'a' => 4,
        b'x' | b't' | b'd' | b'(' | b'{' => 8,
        _ => 1,
    }
}

/// A decoder over one part of a message; `pos` counts from the message's start (a body starts
/// 8-aligned, so decoding it from 0 aligns the same).
struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
    big: bool,
    values: usize,
}

impl<'a> Dec<'a> {
    fn new(buf: &'a [u8], big: bool) -> Dec<'a> {
        let (pos, values) = (0, 0);
        Dec {
            buf,
            pos,
            big,
            values,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let s = self
            .pos
            .checked_add(n)
            .and_then(|end| self.buf.get(self.pos..end));
        let s = s.ok_or("truncated message")?;
        self.pos += n;
        Ok(s)
    }

    /// Skips the padding to `a`, which must be zero bytes.
    fn align(&mut self, a: usize) -> Result<(), String> {
        let pad = self.pos.next_multiple_of(a) - self.pos;
        if self.take(pad)?.iter().any(|&b| b != 0) {
            return Err("non-zero padding".into());
        }
        Ok(())
    }

    fn uint(&mut self, n: usize) -> Result<u64, String> {
        self.align(n)?;
        let b = self.take(n)?;
        let fold = |acc: u64, &x: &u8| (acc << 8) | x as u64;
        Ok(if self.big {
            b.iter().fold(0, fold)
        } else {
            b.iter().rev().fold(0, fold)
        })
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(self.uint(4)? as u32)
    }

    /// `n` bytes of UTF-8 without NUL, then a NUL.
    fn string(&mut self, n: usize) -> Result<String, String> {
        let b = self.take(n.checked_add(1).ok_or("truncated message")?)?;
        match b.split_last() {
            Some((0, s)) if !s.contains(&0) => {
                String::from_utf8(s.to_vec()).map_err(|_| "string not UTF-8".into())
            }
            _ => Err("string not NUL-terminated".into()),
        }
    }

    /// The value of the single complete type `t` (a checked signature).
    fn value(&mut self, t: &[u8], depth: u32) -> Result<Value, String> {
        self.values += 1;
        if self.values > MAX_VALUES || depth > MAX_DEPTH {
            return Err("message too complex".into());
        }
        let sign = |v: u64, bits: u32| ((v << (64 - bits)) as i64 >> (64 - bits)) as u64;
        let c = *t.first().ok_or("invalid signature")?;
        Ok(match c {
            b'y' => Value::Int(self.uint(1)?),
            b'b' => match self.u32()? {
                v @ (0 | 1) => Value::Int(v.into()),
                _ => return Err("invalid boolean".into()),
            },
            b'n' => Value::Int(sign(self.uint(2)?, 16)),
            b'q' => Value::Int(self.uint(2)?),
            b'i' => Value::Int(sign(self.uint(4)?, 32)),
            b'u' | b'h' => Value::Int(self.uint(4)?),
            b'x' | b't' | b'd' => Value::Int(self.uint(8)?),
            b's' | b'o' => {
                let n = self.u32()? as usize;
                let s = self.string(n)?;
                if c == b'o' && !valid_path(&s) {
                    return Err("invalid object path".into());
                }
                Value::Str(s)
            }
            b'g' => {
                let n = self.uint(1)? as usize;
                let s = self.string(n)?;
                if s.len() > 255 || split_types(s.as_bytes()).is_err() {
                    return Err("invalid signature".into());
                }
                Value::Str(s)
            }
            b'v' => {
                let sig = match self.value(b"g", depth)? {
                    Value::Str(sig) => sig,
                    _ => return Err("invalid variant".into()),
                };
                if sig.is_empty() || type_len(sig.as_bytes(), 0, 0)? != sig.len() {
                    return Err("variant signature not one type".into());
                }
                let v = self.value(sig.as_bytes(), depth + 1)?;
                Value::Variant(sig, Box::new(v))
            }
            b'a' => {
                let n = self.u32()? as usize;
                if n > 1 << 26 {
                    return Err("array too long".into());
                }
                let elem = t.get(1..).unwrap_or_default();
                // The length excludes the padding before the first element.
                self.align(align_of(*elem.first().ok_or("invalid signature")?))?;
                let end = self.pos + n;
                if end > self.buf.len() {
                    return Err("truncated message".into());
                }
                let mut items = vec![];
                while self.pos < end {
                    items.push(self.value(elem, depth + 1)?);
                }
                if self.pos != end {
                    return Err("array length mismatch".into());
                }
                Value::Array(items)
            }
            b'(' | b'{' => {
                self.align(8)?;
                let inner = t.get(1..t.len().saturating_sub(1)).unwrap_or_default();
                let types = split_types(inner)?;
                let items = types.iter().map(|t| self.value(t, depth + 1));
                Value::Struct(items.collect::<Result<_, _>>()?)
            }
            _ => return Err("invalid signature".into()),
        })
    }
}

/// An encoder; alignment counts from the message's (or the 8-aligned body's) start.
#[derive(Default)]
struct Enc {
    buf: Vec<u8>,
    big: bool,
}

impl Enc {
    fn pad(&mut self, a: usize) {
        self.buf.resize(self.buf.len().next_multiple_of(a), 0);
    }

    fn word(&self, v: u32) -> [u8; 4] {
        [v.to_le_bytes(), v.to_be_bytes()][self.big as usize]
    }

    fn u32(&mut self, v: u32) {
        self.pad(4);
        self.buf.extend(self.word(v));
    }

    /// A string or object path (the caller checks for NUL).
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.buf.extend(s.as_bytes());
        self.buf.push(0);
    }

    fn sig(&mut self, s: &str) {
        self.buf.push(s.len() as u8);
        self.buf.extend(s.as_bytes());
        self.buf.push(0);
    }

    /// An array whose elements align to `align`: the length, the padding, then `elems`.
    fn array(&mut self, align: usize, elems: impl FnOnce(&mut Enc)) {
        self.u32(0);
        let at = self.buf.len() - 4;
        self.pad(align);
        let start = self.buf.len();
        elems(self);
        let n = self.word((self.buf.len() - start) as u32);
        self.buf.splice(at..at + 4, n);
    }
}

/// A header field's value.
enum Field<'a> {
    Str(&'a str),
    Path(&'a str),
    #[cfg_attr(not(test), allow(dead_code))] // a reply's serial: the tests' fake manager
    U32(u32),
}

/// A whole message: the fixed header, the fields (and the signature's), the 8-aligned body.
fn message(
    big: bool,
    kind: u8,
    serial: u32,
    fields: &[(u8, Field)],
    sig: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut e = Enc {
        buf: vec![if big { b'B' } else { b'l' }, kind, 0, 1],
        big,
    };
    e.u32(body.len() as u32);
    e.u32(serial);
    e.array(8, |e| {
        for (code, f) in fields {
            e.pad(8);
            e.buf.push(*code);
            let (sig, s) = match f {
                Field::Str(s) => ("s", s),
                Field::Path(p) => ("o", p),
                Field::U32(n) => {
                    e.sig("u");
                    e.u32(*n);
                    continue;
                }
            };
            e.sig(sig);
            e.str(s);
        }
        if !sig.is_empty() {
            e.pad(8);
            e.buf.push(F_SIGNATURE);
            e.sig("g");
            e.sig(sig);
        }
    });
    e.pad(8);
    e.buf.extend(body);
    e.buf
}

/// The properties of a transient scope.
/// Why a manager did not start a scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// It said no, or the request was never sent: nothing will be started.
    Refused(String),
    /// No answer (a deadline, a hang-up, a reply that makes no sense): the request may still be
    /// acted upon, later.
    Lost(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused(why) | Failure::Lost(why) => f.write_str(why),
        }
    }
}

pub struct ScopeProps<'a> {
    pub pids: &'a [u32],
    pub slice: Option<&'a str>,
    pub description: &'a str,
}

/// A connected, authenticated stream to a systemd manager, with an overall deadline.
pub struct Conn {
    stream: UnixStream,
    deadline: Instant,
    buf: Vec<u8>,
    read: usize,
    messages: usize,
    serial: u32,
    /// The start job, once the manager has returned it.
    job: Option<String>,
    /// A `JobRemoved` (job, result) of our unit that came before the method return.
    early: Option<(String, String)>,
}

impl Conn {
    /// Connects and authenticates (SASL EXTERNAL with the effective uid, which the caller
    /// sets: `connect` and `SO_PEERCRED` use it).
    pub fn connect(path: &Path, deadline: Instant) -> Result<Conn, String> {
        let left = deadline.saturating_duration_since(Instant::now());
        let stream = crate::sys::connect_unix(path, left).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock => "no connection before the deadline".to_owned(),
            _ => format!("cannot connect: {e}"),
        })?;
        Conn::over(stream, deadline)
    }

    /// As `connect`, over a stream already connected.
    pub fn over(stream: UnixStream, deadline: Instant) -> Result<Conn, String> {
        let (buf, read, messages, serial, job, early) = (vec![], 0, 0, 0, None, None);
        let mut c = Conn {
            stream,
            deadline,
            buf,
            read,
            messages,
            serial,
            job,
            early,
        };
        let uid = crate::sys::geteuid().0.to_string();
        let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
        c.send(format!("\0AUTH EXTERNAL {hex}\r\n").as_bytes())?;
        let line = loop {
            if let Some(i) = c.buf.windows(2).position(|w| w == b"\r\n") {
                break c.buf.drain(..i + 2).collect::<Vec<u8>>();
            }
            if c.buf.len() > 512 {
                return Err("authentication reply too long".into());
            }
            c.fill()?;
        };
        if !line.starts_with(b"OK ") {
            return Err(match line.starts_with(b"REJECTED") {
                true => "authentication refused".into(),
                false => "unexpected authentication reply".into(),
            });
        }
        c.send(b"BEGIN\r\n")?;
        Ok(c)
    }

    /// `StartTransientUnit(unit, "fail", props, [])` of the manager: the job's object path; or
    /// `Refused` (an error reply, or a request that was never sent: nothing will be started),
    /// or `Lost` (no answer: the manager may still act on it).
    pub fn start_scope(&mut self, unit: &str, props: &ScopeProps) -> Result<String, Failure> {
        let strs = [unit, props.slice.unwrap_or_default(), props.description];
        if strs.iter().any(|s| s.contains('\0')) {
            return Err(Failure::Refused("NUL in a unit property".into()));
        }
        let mut e = Enc::default();
        e.str(unit);
        e.str("fail");
        let prop = |e: &mut Enc, name: &str, sig: &str, value: &dyn Fn(&mut Enc)| {
            e.pad(8);
            e.str(name);
            e.sig(sig);
            value(e);
        };
        e.array(8, |e| {
            prop(e, "PIDs", "au", &|e| {
                e.array(4, |e| props.pids.iter().for_each(|&p| e.u32(p)))
            });
            if let Some(slice) = props.slice {
                prop(e, "Slice", "s", &|e| e.str(slice));
            }
            prop(e, "Description", "s", &|e| e.str(props.description));
            prop(e, "CollectMode", "s", &|e| e.str("inactive-or-failed"));
        });
        e.array(8, |_| {});
        self.serial += 1;
        let fields = [
            (F_PATH, Field::Path(MANAGER_PATH)),
            (F_INTERFACE, Field::Str(MANAGER_IFACE)),
            (F_MEMBER, Field::Str("StartTransientUnit")),
            (F_DESTINATION, Field::Str("org.freedesktop.systemd1")),
        ];
        let sig = "ssa(sv)a(sa(sv))";
        let msg = message(false, METHOD_CALL, self.serial, &fields, sig, &e.buf);
        if msg.len() > MAX_MESSAGE {
            return Err(Failure::Refused("unit properties too large".into()));
        }
        self.send(&msg).map_err(Failure::Lost)?;
        loop {
            let m = self.next().map_err(Failure::Lost)?;
            if m.kind == SIGNAL {
                if let Some((job, result)) = job_removed(&m, unit).map_err(Failure::Lost)? {
                    self.early.get_or_insert((job, result));
                }
                continue;
            }
            if m.reply_serial != Some(self.serial) {
                continue;
            }
            match (m.kind, m.args().map_err(Failure::Lost)?.as_slice()) {
                (METHOD_RETURN, [Value::Str(job)]) if m.signature == "o" => {
                    self.job = Some(job.clone());
                    return Ok(job.clone());
                }
                (METHOD_RETURN, _) => {
                    return Err(Failure::Lost("unexpected reply signature".into()))
                }
                (ERROR, args) => {
                    let name = clean(m.error_name.as_deref().unwrap_or_default());
                    return Err(Failure::Refused(match args.first() {
                        Some(Value::Str(text)) => format!("{name}: {}", clean(text)),
                        _ => name,
                    }));
                }
                _ => {}
            }
        }
    }

    /// Reads messages until the `JobRemoved` signal of `unit`'s start job; its result
    /// (`done`, `failed`, ...).
    pub fn wait_job_removed(&mut self, unit: &str) -> Result<String, String> {
        let mine = |job: &str, want: &Option<String>| want.as_deref().is_none_or(|w| w == job);
        if let Some((job, result)) = self.early.take() {
            if mine(&job, &self.job) {
                return Ok(result);
            }
        }
        loop {
            let m = self.next()?;
            if let Some((job, result)) = job_removed(&m, unit)? {
                if mine(&job, &self.job) {
                    return Ok(result);
                }
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("no reply before the deadline".into());
        }
        let sent = self.stream.set_write_timeout(Some(left));
        sent.and_then(|()| self.stream.write_all(bytes))
            .map_err(|e| format!("cannot send: {e}"))
    }

    /// The next message, reading as needed.
    fn next(&mut self) -> Result<Message, String> {
        loop {
            if let Some((m, n)) = parse_message(&self.buf)? {
                self.buf.drain(..n);
                self.messages += 1;
                if self.messages > MAX_MESSAGES {
                    return Err("too many messages".into());
                }
                return Ok(m);
            }
            self.fill()?;
        }
    }

    /// One read, bounded by the deadline; EINTR is retried.
    fn fill(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 16384];
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("no reply before the deadline".into());
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|e| format!("cannot set a read timeout: {e}"))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err("connection closed by the peer".into()),
                Ok(n) => {
                    self.read += n;
                    if self.read > MAX_TOTAL {
                        return Err("too much data from the peer".into());
                    }
                    self.buf
                        .extend_from_slice(chunk.get(..n).unwrap_or_default());
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err("no reply before the deadline".into())
                }
                Err(e) => return Err(format!("cannot read: {e}")),
            }
        }
    }
}

/// The (job, result) of a `JobRemoved(u id, o job, s unit, s result)` signal of `unit`.
fn job_removed(m: &Message, unit: &str) -> Result<Option<(String, String)>, String> {
    if m.kind != SIGNAL
        || m.member.as_deref() != Some("JobRemoved")
        || m.interface.as_deref() != Some(MANAGER_IFACE)
        || m.path.as_deref() != Some(MANAGER_PATH)
        || m.signature != "uoss"
    {
        return Ok(None);
    }
    match m.args()?.as_slice() {
        [_, Value::Str(job), Value::Str(u), Value::Str(result)] if u == unit => {
            Ok(Some((job.clone(), result.clone())))
        }
        _ => Ok(None),
    }
}

/// Peer text fit for a one-line message: short, without control characters.
fn clean(s: &str) -> String {
    s.chars()
        .take(200)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Shutdown;
    use std::os::unix::net::UnixListener;
    use std::sync::mpsc;
    use std::thread;
    use std::time::Duration;

    const UNIT: &str = "snap.hello.hello.refreshd-0123456789abcdef.scope";
    const JOB: &str = "/org/freedesktop/systemd1/job/42";

    fn after(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    fn enc(big: bool, f: impl FnOnce(&mut Enc)) -> Vec<u8> {
        let mut e = Enc { buf: vec![], big };
        f(&mut e);
        e.buf
    }

    fn strs(big: bool, v: &[&str]) -> Vec<u8> {
        enc(big, |e| v.iter().for_each(|s| e.str(s)))
    }

    fn reply(big: bool, to: u32, sig: &str, body: &[u8]) -> Vec<u8> {
        let fields = [(F_REPLY_SERIAL, Field::U32(to))];
        message(big, METHOD_RETURN, 100, &fields, sig, body)
    }

    fn signal(big: bool, member: &str, sig: &str, body: &[u8]) -> Vec<u8> {
        let fields = [
            (F_PATH, Field::Path(MANAGER_PATH)),
            (F_INTERFACE, Field::Str(MANAGER_IFACE)),
            (F_MEMBER, Field::Str(member)),
        ];
        message(big, SIGNAL, 100, &fields, sig, body)
    }

    fn job_removed(big: bool, job: &str, unit: &str, result: &str) -> Vec<u8> {
        let body = [enc(big, |e| e.u32(7)), strs(big, &[job, unit, result])].concat();
        signal(big, "JobRemoved", "uoss", &body)
    }

    /// The manager's end of a connection, as sd-bus serves a private one.
    struct Peer {
        s: UnixStream,
        buf: Vec<u8>,
    }

    impl Peer {
        fn expect(&mut self, want: &str) {
            let mut got = vec![0; want.len()];
            self.s.read_exact(&mut got).unwrap();
            assert_eq!(String::from_utf8_lossy(&got), want);
        }

        fn auth(&mut self) {
            let uid = crate::sys::geteuid().0.to_string();
            let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
            self.expect(&format!("\0AUTH EXTERNAL {hex}\r\n"));
            self.send(b"OK 0123456789abcdef0123456789abcdef\r\n");
            self.expect("BEGIN\r\n");
        }

        fn recv(&mut self) -> Message {
            while parse_message(&self.buf).unwrap().is_none() {
                let mut chunk = [0; 4096];
                let n = self.s.read(&mut chunk).unwrap();
                assert!(n > 0, "the client closed the connection");
                self.buf.extend_from_slice(&chunk[..n]);
            }
            let (m, n) = parse_message(&self.buf).unwrap().unwrap();
            self.buf.drain(..n);
            m
        }

        /// Ignores EPIPE: the client may have given up already, which the test checks.
        fn send(&mut self, bytes: &[u8]) {
            let _ = self.s.write_all(bytes);
        }
    }

    /// `run` on a client over a socket pair whose other end `serve` runs; the other end stays
    /// open until the client is done.
    fn client<T>(
        deadline: Instant,
        serve: impl FnOnce(&mut Peer) + Send + 'static,
        run: impl FnOnce(Conn) -> Result<T, String>,
    ) -> Result<T, String> {
        let (ours, s) = UnixStream::pair().unwrap();
        let (done_tx, done) = mpsc::channel::<()>();
        let server = thread::spawn(move || {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut peer = Peer { s, buf: vec![] };
            serve(&mut peer);
            let _ = done.recv();
        });
        let out = Conn::over(ours, deadline).and_then(run);
        drop(done_tx);
        server.join().unwrap();
        out
    }

    fn start_and_wait(mut c: Conn) -> Result<(String, String), String> {
        let props = ScopeProps {
            pids: &[1234],
            slice: None,
            description: "hello",
        };
        let job = c.start_scope(UNIT, &props).map_err(|e| e.to_string())?;
        Ok((job, c.wait_job_removed(UNIT)?))
    }

    #[test]
    fn starts_a_scope_through_a_listening_socket_in_both_byte_orders() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("private");
        let listener = UnixListener::bind(&path).unwrap();
        for big in [false, true] {
            let slice = [Some("app.slice"), None][big as usize];
            let listener = listener.try_clone().unwrap();
            let server = thread::spawn(move || {
                let mut peer = Peer {
                    s: listener.accept().unwrap().0,
                    buf: vec![],
                };
                peer.auth();
                let m = peer.recv();
                let header = (m.kind, m.path.as_deref(), m.interface.as_deref());
                assert_eq!(
                    header,
                    (METHOD_CALL, Some(MANAGER_PATH), Some(MANAGER_IFACE))
                );
                assert_eq!(m.member.as_deref(), Some("StartTransientUnit"));
                assert_eq!(m.destination.as_deref(), Some("org.freedesktop.systemd1"));
                assert_eq!(m.signature, "ssa(sv)a(sa(sv))");
                let s = |x: &str| Value::Str(x.into());
                let prop = |k, sig: &str, v| {
                    Value::Struct(vec![s(k), Value::Variant(sig.into(), Box::new(v))])
                };
                let pids = Value::Array(vec![Value::Int(1234), Value::Int(5678)]);
                let mut props = vec![prop("PIDs", "au", pids)];
                props.extend(slice.map(|x| prop("Slice", "s", s(x))));
                props.push(prop("Description", "s", s("hello app")));
                props.push(prop("CollectMode", "s", s("inactive-or-failed")));
                let want = [
                    s(UNIT),
                    s("fail"),
                    Value::Array(props),
                    Value::Array(vec![]),
                ];
                assert_eq!(m.args().unwrap(), want);
                // Around the reply, as a manager sends them: other units' and jobs' news.
                let changed = enc(big, |e| {
                    e.str("org.freedesktop.systemd1.Unit");
                    e.array(8, |_| {});
                    e.array(4, |e| e.str("ActiveState"));
                });
                peer.send(&signal(big, "PropertiesChanged", "sa{sv}as", &changed));
                let job41 = "/org/freedesktop/systemd1/job/41";
                peer.send(&job_removed(big, job41, "other.scope", "failed"));
                peer.send(&reply(big, m.serial, "o", &strs(big, &[JOB])));
                let new = [enc(big, |e| e.u32(42)), strs(big, &[JOB, UNIT])].concat();
                peer.send(&signal(big, "JobNew", "uos", &new));
                peer.send(&job_removed(big, job41, UNIT, "failed")); // another job of ours
                peer.send(&job_removed(big, JOB, UNIT, "done"));
            });
            let mut c = Conn::connect(&path, after(10_000)).unwrap();
            let props = ScopeProps {
                pids: &[1234, 5678],
                slice,
                description: "hello app",
            };
            assert_eq!(c.start_scope(UNIT, &props).unwrap(), JOB);
            assert_eq!(c.wait_job_removed(UNIT).unwrap(), "done");
            server.join().unwrap();
        }
    }

    #[test]
    fn a_job_removed_before_the_reply_is_remembered() {
        // The connection closes after the reply: reading on would fail.
        let serve = |peer: &mut Peer| {
            peer.auth();
            let m = peer.recv();
            peer.send(&job_removed(false, JOB, UNIT, "done"));
            peer.send(&reply(true, m.serial, "o", &strs(true, &[JOB])));
            peer.s.shutdown(Shutdown::Both).unwrap();
        };
        let got = client(after(10_000), serve, start_and_wait);
        assert_eq!(got, Ok((JOB.to_string(), "done".to_string())));
    }

    #[test]
    fn an_error_reply_is_its_name_and_message() {
        let serve = |peer: &mut Peer| {
            peer.auth();
            let m = peer.recv();
            peer.send(&reply(false, m.serial + 1, "o", &strs(false, &[JOB])));
            let name = "org.freedesktop.systemd1.UnitExists";
            let fields = [
                (F_ERROR_NAME, Field::Str(name)),
                (F_REPLY_SERIAL, Field::U32(m.serial)),
            ];
            let text = strs(false, &["Unit exists.\nreally"]);
            peer.send(&message(false, ERROR, 100, &fields, "s", &text));
        };
        let got = client(after(10_000), serve, start_and_wait);
        let want = "org.freedesktop.systemd1.UnitExists: Unit exists.?really";
        assert_eq!(got, Err(want.into()));
    }

    #[test]
    fn a_silent_manager_costs_the_deadline_only() {
        for answers_auth in [false, true] {
            let start = Instant::now();
            let serve = move |peer: &mut Peer| {
                if answers_auth {
                    peer.auth();
                }
            };
            let got = client(after(200), serve, start_and_wait);
            assert_eq!(got, Err("no reply before the deadline".into()));
            let took = start.elapsed();
            let fast = took >= Duration::from_millis(200) && took < Duration::from_secs(2);
            assert!(fast, "{took:?}");
        }
    }

    #[test]
    fn odd_authentication_replies_are_refused() {
        for (reply, want) in [
            (&b"REJECTED EXTERNAL\r\n"[..], "authentication refused"),
            (b"ERROR\r\n", "unexpected authentication reply"),
            (&[b'O'; 600], "authentication reply too long"),
            (b"OK 01", "connection closed by the peer"),
        ] {
            let serve = move |peer: &mut Peer| {
                peer.send(reply);
                peer.s.shutdown(Shutdown::Write).unwrap();
            };
            assert_eq!(
                client(after(10_000), serve, |_| Ok(())),
                Err(want.to_string())
            );
        }
    }

    #[test]
    fn hostile_streams_are_refused() {
        let good = job_removed(false, JOB, UNIT, "done");
        let mut huge = good.clone();
        huge[4..8].copy_from_slice(&(2u32 << 20).to_le_bytes());
        let junk = enc(false, |e| {
            e.array(1, |e| e.buf.resize(e.buf.len() + (512 << 10), 0))
        });
        let cases = [
            (huge[..16].to_vec(), "message too large"),
            (
                b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(),
                "not a D-Bus message",
            ),
            (good[..50].to_vec(), "connection closed by the peer"),
            (
                signal(false, "Junk", "ay", &junk).repeat(40),
                "too much data from the peer",
            ),
            (
                signal(false, "UnitNew", "", &[]).repeat(MAX_MESSAGES + 1),
                "too many messages",
            ),
        ];
        for (bytes, want) in cases {
            let serve = move |peer: &mut Peer| {
                peer.auth();
                peer.recv();
                peer.send(&bytes);
                peer.s.shutdown(Shutdown::Write).unwrap();
            };
            assert_eq!(
                client(after(10_000), serve, start_and_wait),
                Err(want.into())
            );
        }
    }

    #[test]
    fn every_prefix_of_a_message_needs_more_bytes() {
        let messages = [
            job_removed(false, JOB, UNIT, "done"),
            reply(true, 1, "o", &strs(true, &[JOB])),
        ];
        for m in messages {
            for n in 0..m.len() {
                assert!(
                    matches!(parse_message(&m[..n]), Ok(None)),
                    "prefix of {n} bytes"
                );
            }
            let (msg, n) = parse_message(&m.repeat(2)).unwrap().unwrap();
            assert_eq!(n, m.len());
            assert!(msg.args().is_ok());
        }
    }

    #[test]
    fn malformed_messages_are_refused() {
        let good = job_removed(false, JOB, UNIT, "done");
        let with = |at: usize, b: u8| {
            let mut m = good.clone();
            m[at] = b;
            m
        };
        // The PATH field's signature `o` made `s`.
        let path_sig = good.windows(3).position(|w| w == b"\x01o\0").unwrap() + 1;
        let no_member = [(F_PATH, Field::Path("/")), (F_INTERFACE, Field::Str("a.b"))];
        let twice = [
            (F_REPLY_SERIAL, Field::U32(1)),
            (F_REPLY_SERIAL, Field::U32(2)),
        ];
        // A byte of padding between the fields and the body made non-zero.
        let mut padded = reply(false, 1, "o", &strs(false, &[JOB]));
        let fields_end = 16 + padded[12] as usize;
        assert_ne!(fields_end % 8, 0);
        padded[fields_end] = 1;
        for (m, want) in [
            (with(3, 2), "unsupported D-Bus protocol version 2"),
            (with(8, 0), "invalid message header"),
            (with(path_sig, b's'), "header field 1 of the wrong type"),
            (
                message(false, SIGNAL, 1, &no_member, "", &[]),
                "message without a required header field",
            ),
            (
                message(false, METHOD_RETURN, 1, &twice, "", &[]),
                "repeated header field",
            ),
            (
                reply(false, 1, "", &[0; 8]),
                "message body without a signature",
            ),
            (padded, "non-zero padding"),
        ] {
            assert_eq!(parse_message(&m).map(|_| ()), Err(want.into()));
        }

        let u32s = |v: &[u32]| enc(false, |e| v.iter().for_each(|&n| e.u32(n)));
        // Variants nested 100 deep, each holding the next.
        let nested = [
            enc(false, |e| (0..100).for_each(|_| e.sig("v"))),
            vec![1, b'y', 0, 7],
        ];
        for (sig, body, want) in [
            ("b", u32s(&[2]), "invalid boolean"),
            ("s", b"\x03\0\0\0abcd".to_vec(), "string not NUL-terminated"),
            ("s", b"\x01\0\0\0\xff\0".to_vec(), "string not UTF-8"),
            ("o", strs(false, &["/a//b"]), "invalid object path"),
            ("u", u32s(&[1, 2]), "message body longer than its signature"),
            ("uu", u32s(&[1]), "truncated message"),
            ("au", u32s(&[5, 1, 2]), "array length mismatch"),
            ("au", u32s(&[1 << 27]), "array too long"),
            ("at", u32s(&[0, 1]), "non-zero padding"),
            ("v", b"\x02uu\0".to_vec(), "variant signature not one type"),
            (
                &format!("{}y", "a".repeat(33)),
                vec![0; 8],
                "invalid signature",
            ),
            ("a{vs}", vec![0; 8], "invalid signature"),
            ("v", nested.concat(), "message too complex"),
        ] {
            let got = parse_message(&reply(false, 1, sig, &body)).and_then(|m| m.unwrap().0.args());
            assert_eq!(got, Err(want.into()), "{sig} {body:?}");
        }
        let ok = |sig, body: &[u8]| {
            parse_message(&reply(true, 1, sig, body))
                .unwrap()
                .unwrap()
                .0
                .args()
        };
        assert_eq!(
            ok("bn", b"\0\0\0\x01\xff\xfe"),
            Ok(vec![Value::Int(1), Value::Int(-2i64 as u64)])
        );
    }

    fn unhex(parts: &[&str]) -> Vec<u8> {
        let hex = parts.concat();
        let byte = |i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap();
        (0..hex.len()).step_by(2).map(byte).collect()
    }

    /// What sd-bus (systemd's own D-Bus library) marshals, through busctl and a dbus-daemon,
    /// as dbus-monitor --binary captured it. The unit's length puts the properties array's
    /// length at an 8-aligned offset: 4 bytes of padding follow it, outside the length.
    #[test]
    fn speaks_as_sd_bus_does() {
        let unit = "snap.chromium.chromium.refreshd-0123456789abcdef.scope";
        // The body of `busctl call ... StartTransientUnit 'ssa(sv)a(sa(sv))' UNIT fail 4 PIDs au
        // 2 1234 5678 Slice s app.slice Description s chromium CollectMode s inactive-or-failed
        // 0`.
        let body = unhex(&[
            "36000000736e61702e6368726f6d69756d2e6368726f6d69756d2e72656672657368642d30313233",
            "3435363738396162636465662e73636f70650000040000006661696c000000009300000000000000",
            "0400000050494473000261750000000008000000d20400002e1600000000000005000000536c6963",
            "6500017300000000090000006170702e736c6963650000000b0000004465736372697074696f6e00",
            "01730000080000006368726f6d69756d00000000000000000b000000436f6c6c6563744d6f646500",
            "0173000012000000696e6163746976652d6f722d6661696c6564000000000000",
        ]);
        // `busctl emit /org/freedesktop/systemd1 org.freedesktop.systemd1.Manager JobRemoved
        // uoss 42 JOB UNIT done`, with the SENDER field dbus-daemon adds.
        let signal = unhex(&[
            "6c04010171000000020000008d00000001016f00190000002f6f72672f667265656465736b746f70",
            "2f73797374656d64310000000000000002017300200000006f72672e667265656465736b746f702e",
            "73797374656d64312e4d616e616765720000000000000000030173000a0000004a6f6252656d6f76",
            "65640000000000000801670004756f73730000000000000007017300040000003a312e3900000000",
            "2a000000200000002f6f72672f667265656465736b746f702f73797374656d64312f6a6f622f3432",
            "0000000036000000736e61702e6368726f6d69756d2e6368726f6d69756d2e72656672657368642d",
            "303132333435363738396162636465662e73636f7065000004000000646f6e6500",
        ]);
        let serve = move |peer: &mut Peer| {
            peer.auth();
            let m = peer.recv();
            assert_eq!(m.body, body, "the call's body differs from sd-bus's");
            peer.send(&reply(false, m.serial, "o", &strs(false, &[JOB])));
            peer.send(&signal);
        };
        let props = ScopeProps {
            pids: &[1234, 5678],
            slice: Some("app.slice"),
            description: "chromium",
        };
        let got = client(after(10_000), serve, |mut c| {
            c.start_scope(unit, &props).map_err(|e| e.to_string())?;
            c.wait_job_removed(unit)
        });
        assert_eq!(got, Ok("done".to_string()));
    }
}
