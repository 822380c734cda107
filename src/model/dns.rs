//! Pure DNS wire format for ACME DNS-01: RFC 2136 UPDATE messages that add or delete one TXT
//! record, TXT queries, TSIG signing and response verification (RFC 8945, HMAC-SHA256/512),
//! and response parsing (rcode, TSIG error, TXT/CNAME answers). No I/O: the caller supplies
//! the message id and the signing time and sends the bytes.
//!
//! Names are written uncompressed and lower-cased (the canonical form TSIG signs); responses
//! may use compression pointers, which the reader follows with a loop bound.

use sha2::{Digest, Sha256, Sha512};
use thiserror::Error;

const TYPE_SOA: u16 = 6;
const TYPE_CNAME: u16 = 5;
const TYPE_TXT: u16 = 16;
const TYPE_TSIG: u16 = 250;
const CLASS_IN: u16 = 1;
const CLASS_NONE: u16 = 254;
const CLASS_ANY: u16 = 255;
const OPCODE_UPDATE: u16 = 5;

/// TSIG MAC algorithms Berth signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsigAlgorithm {
    HmacSha256,
    HmacSha512,
}

impl TsigAlgorithm {
    /// The algorithm's name as configured (`hmac-sha256`) and as a DNS name in TSIG.
    pub fn name(self) -> &'static str {
        match self {
            Self::HmacSha256 => "hmac-sha256",
            Self::HmacSha512 => "hmac-sha512",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().trim_end_matches('.').to_ascii_lowercase().as_str() {
            "hmac-sha256" => Some(Self::HmacSha256),
            "hmac-sha512" => Some(Self::HmacSha512),
            _ => None,
        }
    }
}

/// A TSIG key: its name (as the DNS server knows it), algorithm and raw secret.
#[derive(Clone, PartialEq, Eq)]
pub struct TsigKey {
    pub name: String,
    pub algorithm: TsigAlgorithm,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// HMAC (RFC 2104) over the concatenation of `parts`.
pub fn hmac(alg: TsigAlgorithm, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    match alg {
        TsigAlgorithm::HmacSha256 => hmac_with::<Sha256>(64, key, parts),
        TsigAlgorithm::HmacSha512 => hmac_with::<Sha512>(128, key, parts),
    }
}

fn hmac_with<D: Digest>(block: usize, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut k = if key.len() > block {
        D::digest(key).to_vec()
    } else {
        key.to_vec()
    };
    k.resize(block, 0);
    let mut inner = D::new();
    inner.update(k.iter().map(|b| b ^ 0x36).collect::<Vec<u8>>());
    for p in parts {
        inner.update(p);
    }
    let inner = inner.finalize();
    let mut outer = D::new();
    outer.update(k.iter().map(|b| b ^ 0x5c).collect::<Vec<u8>>());
    outer.update(inner);
    outer.finalize().to_vec()
}

/// Constant-time comparison of two MACs.
fn mac_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a name or message could not be built or read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DnsError {
    #[error("{0:?} is not a valid DNS name")]
    BadName(String),
    #[error("TXT value longer than 255 bytes")]
    TxtTooLong,
    #[error("malformed DNS response: {0}")]
    Malformed(&'static str),
}

/// Appends `name` in uncompressed, lower-case wire form (`a.b` → 1a1b0).
pub fn write_name(out: &mut Vec<u8>, name: &str) -> Result<(), DnsError> {
    let n = name.trim_end_matches('.');
    if n.len() > 253 {
        return Err(DnsError::BadName(name.into()));
    }
    if !n.is_empty() {
        for label in n.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(DnsError::BadName(name.into()));
            }
            out.push(label.len() as u8);
            out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        }
    }
    out.push(0);
    Ok(())
}

fn header(id: u16, flags: u16, counts: [u16; 4]) -> Vec<u8> {
    let mut h = Vec::with_capacity(512);
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&flags.to_be_bytes());
    for c in counts {
        h.extend_from_slice(&c.to_be_bytes());
    }
    h
}

fn txt_rdata(value: &str) -> Result<Vec<u8>, DnsError> {
    if value.len() > 255 {
        return Err(DnsError::TxtTooLong);
    }
    let mut r = vec![value.len() as u8];
    r.extend_from_slice(value.as_bytes());
    Ok(r)
}

/// What an UPDATE does to the TXT records at a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxtChange {
    /// Add one TXT record (other values at the name stay).
    Add { ttl: u32, value: String },
    /// Delete the TXT record with exactly this value.
    Delete { value: String },
}

/// An RFC 2136 UPDATE for `zone` changing the TXT records at `name`, unsigned.
pub fn update_txt(
    id: u16,
    zone: &str,
    name: &str,
    change: &TxtChange,
) -> Result<Vec<u8>, DnsError> {
    let mut m = header(id, OPCODE_UPDATE << 11, [1, 0, 1, 0]);
    write_name(&mut m, zone)?;
    m.extend_from_slice(&TYPE_SOA.to_be_bytes());
    m.extend_from_slice(&CLASS_IN.to_be_bytes());
    write_name(&mut m, name)?;
    m.extend_from_slice(&TYPE_TXT.to_be_bytes());
    let (class, ttl, value) = match change {
        TxtChange::Add { ttl, value } => (CLASS_IN, *ttl, value),
        TxtChange::Delete { value } => (CLASS_NONE, 0, value),
    };
    m.extend_from_slice(&class.to_be_bytes());
    m.extend_from_slice(&ttl.to_be_bytes());
    let rdata = txt_rdata(value)?;
    m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    m.extend_from_slice(&rdata);
    Ok(m)
}

/// A TXT query for `name` without recursion (asked of the authoritative server).
pub fn query_txt(id: u16, name: &str) -> Result<Vec<u8>, DnsError> {
    let mut m = header(id, 0, [1, 0, 0, 0]);
    write_name(&mut m, name)?;
    m.extend_from_slice(&TYPE_TXT.to_be_bytes());
    m.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(m)
}

/// The TSIG variables that are MACed after the message (RFC 8945 4.3.3).
fn tsig_variables(
    key: &TsigKey,
    time_signed: u64,
    fudge: u16,
    error: u16,
    other: &[u8],
) -> Vec<u8> {
    let mut v = Vec::new();
    // Names were checked when the key was made; a bad one yields a MAC the server rejects.
    let _ = write_name(&mut v, &key.name);
    v.extend_from_slice(&CLASS_ANY.to_be_bytes());
    v.extend_from_slice(&0u32.to_be_bytes());
    let _ = write_name(&mut v, key.algorithm.name());
    v.extend_from_slice(&time_signed.to_be_bytes()[2..]);
    v.extend_from_slice(&fudge.to_be_bytes());
    v.extend_from_slice(&error.to_be_bytes());
    v.extend_from_slice(&(other.len() as u16).to_be_bytes());
    v.extend_from_slice(other);
    v
}

/// Signs `msg` with TSIG: appends the TSIG record and bumps ARCOUNT. Returns the signed
/// message and its MAC (needed to verify the response).
pub fn sign(
    msg: &[u8],
    key: &TsigKey,
    time_signed: u64,
    fudge: u16,
) -> Result<(Vec<u8>, Vec<u8>), DnsError> {
    if msg.len() < 12 {
        return Err(DnsError::Malformed("message shorter than a header"));
    }
    let vars = tsig_variables(key, time_signed, fudge, 0, &[]);
    let mac = hmac(key.algorithm, &key.secret, &[msg, &vars]);
    let mut out = msg.to_vec();
    let ar = u16::from_be_bytes([out[10], out[11]]).wrapping_add(1);
    out[10..12].copy_from_slice(&ar.to_be_bytes());
    write_name(&mut out, &key.name)?;
    out.extend_from_slice(&TYPE_TSIG.to_be_bytes());
    out.extend_from_slice(&CLASS_ANY.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    let mut rdata = Vec::new();
    write_name(&mut rdata, key.algorithm.name())?;
    rdata.extend_from_slice(&time_signed.to_be_bytes()[2..]);
    rdata.extend_from_slice(&fudge.to_be_bytes());
    rdata.extend_from_slice(&(mac.len() as u16).to_be_bytes());
    rdata.extend_from_slice(&mac);
    rdata.extend_from_slice(&msg[0..2]); // original id
    rdata.extend_from_slice(&0u16.to_be_bytes()); // error
    rdata.extend_from_slice(&0u16.to_be_bytes()); // other len
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(&rdata);
    Ok((out, mac))
}

/// The TSIG record of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TsigRecord {
    pub key_name: String,
    pub algorithm: String,
    pub time_signed: u64,
    pub fudge: u16,
    pub mac: Vec<u8>,
    pub original_id: u16,
    pub error: u16,
    pub other: Vec<u8>,
    /// Where the record starts in the message (the signed part ends there).
    pub offset: usize,
}

/// One answer record of interest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Txt { name: String, value: String },
    Cname { name: String, target: String },
}

/// A parsed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub id: u16,
    /// Truncated (TC): retry over TCP.
    pub truncated: bool,
    pub rcode: u16,
    pub answers: Vec<Answer>,
    pub tsig: Option<TsigRecord>,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, DnsError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(DnsError::Malformed("truncated"))?;
        self.pos += 1;
        Ok(b)
    }
    fn u16(&mut self) -> Result<u16, DnsError> {
        Ok(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }
    fn u32(&mut self) -> Result<u32, DnsError> {
        Ok(((self.u16()? as u32) << 16) | self.u16()? as u32)
    }
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], DnsError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(DnsError::Malformed("length"))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(DnsError::Malformed("truncated"))?;
        self.pos = end;
        Ok(s)
    }
    /// Reads a possibly compressed name (lower-cased, no trailing dot).
    fn name(&mut self) -> Result<String, DnsError> {
        let mut labels: Vec<String> = Vec::new();
        let mut pos = self.pos;
        let mut jumped = false;
        for _ in 0..128 {
            let len = *self
                .buf
                .get(pos)
                .ok_or(DnsError::Malformed("truncated name"))?;
            match len {
                0 => {
                    if !jumped {
                        self.pos = pos + 1;
                    }
                    return Ok(labels.join(".").to_ascii_lowercase());
                }
                l if l & 0xc0 == 0xc0 => {
                    let lo = *self
                        .buf
                        .get(pos + 1)
                        .ok_or(DnsError::Malformed("truncated pointer"))?;
                    if !jumped {
                        self.pos = pos + 2;
                    }
                    jumped = true;
                    pos = (((l & 0x3f) as usize) << 8) | lo as usize;
                }
                l if l & 0xc0 == 0 => {
                    let s = self
                        .buf
                        .get(pos + 1..pos + 1 + l as usize)
                        .ok_or(DnsError::Malformed("truncated label"))?;
                    labels.push(String::from_utf8_lossy(s).into_owned());
                    pos += 1 + l as usize;
                }
                _ => return Err(DnsError::Malformed("unknown label type")),
            }
        }
        Err(DnsError::Malformed("name compression loop"))
    }
}

/// Parses a response: header, answers (TXT, CNAME), and the TSIG record if there is one.
pub fn parse_response(buf: &[u8]) -> Result<Response, DnsError> {
    let mut r = Reader { buf, pos: 0 };
    let id = r.u16()?;
    let flags = r.u16()?;
    let (qd, an, ns, ar) = (r.u16()?, r.u16()?, r.u16()?, r.u16()?);
    for _ in 0..qd {
        r.name()?;
        r.u16()?;
        r.u16()?;
    }
    let mut answers = Vec::new();
    let mut tsig = None;
    for i in 0..(an as u32 + ns as u32 + ar as u32) {
        let offset = r.pos;
        let name = r.name()?;
        let rtype = r.u16()?;
        let _class = r.u16()?;
        let _ttl = r.u32()?;
        let rdlen = r.u16()? as usize;
        let rd_start = r.pos;
        let rdata = r.bytes(rdlen)?;
        let in_answer = i < an as u32;
        match rtype {
            TYPE_TXT if in_answer => {
                let mut value = String::new();
                let mut p = 0;
                while p < rdata.len() {
                    let l = rdata[p] as usize;
                    let s = rdata
                        .get(p + 1..p + 1 + l)
                        .ok_or(DnsError::Malformed("TXT string"))?;
                    value.push_str(&String::from_utf8_lossy(s));
                    p += 1 + l;
                }
                answers.push(Answer::Txt { name, value });
            }
            TYPE_CNAME if in_answer => {
                let mut sub = Reader { buf, pos: rd_start };
                let target = sub.name()?;
                answers.push(Answer::Cname { name, target });
            }
            TYPE_TSIG if i + 1 == an as u32 + ns as u32 + ar as u32 => {
                let mut sub = Reader { buf, pos: rd_start };
                let algorithm = sub.name()?;
                let hi = sub.u16()? as u64;
                let lo = sub.u32()? as u64;
                let fudge = sub.u16()?;
                let mac_len = sub.u16()? as usize;
                let mac = sub.bytes(mac_len)?.to_vec();
                let original_id = sub.u16()?;
                let error = sub.u16()?;
                let other_len = sub.u16()? as usize;
                let other = sub.bytes(other_len)?.to_vec();
                tsig = Some(TsigRecord {
                    key_name: name,
                    algorithm,
                    time_signed: (hi << 32) | lo,
                    fudge,
                    mac,
                    original_id,
                    error,
                    other,
                    offset,
                });
            }
            _ => {}
        }
    }
    Ok(Response {
        id,
        truncated: flags & 0x0200 != 0,
        rcode: flags & 0x000f,
        answers,
        tsig,
    })
}

/// Checks the TSIG MAC of a response to a request signed with `request_mac` (RFC 8945 5.3).
pub fn verify_response(
    buf: &[u8],
    resp: &Response,
    key: &TsigKey,
    request_mac: &[u8],
) -> Result<(), &'static str> {
    let t = resp.tsig.as_ref().ok_or("the response is not signed")?;
    if t.key_name != key.name.trim_end_matches('.').to_ascii_lowercase() {
        return Err("the response is signed with another key");
    }
    if TsigAlgorithm::parse(&t.algorithm) != Some(key.algorithm) {
        return Err("the response is signed with another algorithm");
    }
    if buf.len() < 12 || t.offset > buf.len() {
        return Err("malformed response");
    }
    let mut unsigned = buf[..t.offset].to_vec();
    unsigned[0..2].copy_from_slice(&t.original_id.to_be_bytes());
    let ar = u16::from_be_bytes([unsigned[10], unsigned[11]]).wrapping_sub(1);
    unsigned[10..12].copy_from_slice(&ar.to_be_bytes());
    let vars = tsig_variables(key, t.time_signed, t.fudge, t.error, &t.other);
    let len = (request_mac.len() as u16).to_be_bytes();
    let mac = hmac(
        key.algorithm,
        &key.secret,
        &[&len, request_mac, &unsigned, &vars],
    );
    if mac_eq(&mac, &t.mac) {
        Ok(())
    } else {
        Err("the response's TSIG signature does not verify")
    }
}

/// The mnemonic of an rcode (header or extended TSIG error).
pub fn rcode_name(code: u16) -> String {
    match code {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        6 => "YXDOMAIN".into(),
        7 => "YXRRSET".into(),
        8 => "NXRRSET".into(),
        9 => "NOTAUTH".into(),
        10 => "NOTZONE".into(),
        16 => "BADSIG".into(),
        17 => "BADKEY".into(),
        18 => "BADTIME".into(),
        22 => "BADTRUNC".into(),
        c => format!("RCODE{c}"),
    }
}

/// A short explanation of an update failure, for the operator.
pub fn rcode_hint(code: u16) -> &'static str {
    match code {
        16 => "the TSIG secret is wrong (check tls.acme.dns.tsig.secret or secret_file)",
        17 => {
            "the server does not know this TSIG key or its ACL does not allow this update \
               (check tls.acme.dns.tsig.name and the server's update ACL)"
        }
        18 => "the clocks of Berth and the DNS server differ by more than the fudge (300 s)",
        9 => {
            "the server is not authoritative for the zone, or the update was not signed \
              (check tls.acme.dns.zone and the key)"
        }
        5 => "the server refused the update (check its update ACL)",
        10 => "the name is not inside the zone (check tls.acme.dns.zone and delegate)",
        _ => "",
    }
}

/// The DNS-01 record name of a certificate domain: `_acme-challenge.` + the name without a
/// wildcard label (`*.example.com` and `example.com` share one name).
pub fn challenge_name(domain: &str) -> String {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    let base = d.strip_prefix("*.").unwrap_or(&d);
    format!("_acme-challenge.{base}")
}

/// Splits a configured server (`1.2.3.4`, `1.2.3.4:5353`, `[::1]:53`, `ns1.example.com:53`)
/// into host and port (53 when absent).
pub fn parse_server(s: &str) -> Result<(String, u16), String> {
    let s = s.trim();
    if let Ok(a) = s.parse::<std::net::SocketAddr>() {
        if a.port() == 0 {
            return Err(format!("{s:?}: the port must be 1-65535"));
        }
        return Ok((a.ip().to_string(), a.port()));
    }
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok((ip.to_string(), 53));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => {
            let port = p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{s:?}: the port must be 1-65535"))?;
            (h, port)
        }
        None => (s, 53),
    };
    if host.is_empty()
        || host.starts_with('[')
        || !host
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
    {
        return Err(format!("{s:?} is not HOST, HOST:PORT or IP:PORT"));
    }
    Ok((host.to_ascii_lowercase(), port))
}

/// Where the TXT record for certificate domain `domain` is written: its challenge name, or
/// the target `delegate` gives for that challenge name, or `DOMAIN.<delegate_all>`. The result
/// must be inside `zone`.
pub fn record_name(
    domain: &str,
    zone: &str,
    delegate: &std::collections::BTreeMap<String, String>,
    delegate_all: Option<&str>,
) -> Result<String, String> {
    let challenge = challenge_name(domain);
    let base = challenge.trim_start_matches("_acme-challenge.");
    let name = match delegate
        .iter()
        .find(|(k, _)| k.trim_end_matches('.').eq_ignore_ascii_case(&challenge))
    {
        Some((_, v)) => v.trim_end_matches('.').to_ascii_lowercase(),
        None => match delegate_all {
            Some(all) => format!("{base}.{}", all.trim_end_matches('.').to_ascii_lowercase()),
            None => challenge.clone(),
        },
    };
    if name.len() > 253 {
        return Err(format!("{name} is longer than a DNS name may be"));
    }
    if !in_zone(&name, zone) {
        return Err(format!(
            "{name} is outside tls.acme.dns.zone {zone:?}: add a CNAME from {challenge} to a name \
             inside the zone and list it in tls.acme.dns.delegate"
        ));
    }
    Ok(name)
}

/// Whether `name` is `zone` or below it (case-insensitive, no trailing dots needed).
pub fn in_zone(name: &str, zone: &str) -> bool {
    let n = name.trim_end_matches('.').to_ascii_lowercase();
    let z = zone.trim_end_matches('.').to_ascii_lowercase();
    z.is_empty() || n == z || n.ends_with(&format!(".{z}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TsigKey {
        TsigKey {
            name: "acme-key".into(),
            algorithm: TsigAlgorithm::HmacSha256,
            secret: b"0123456789abcdef0123456789abcdef".to_vec(),
        }
    }

    #[test]
    fn hmac_matches_rfc4231() {
        // RFC 4231 test case 2.
        let mac = hmac(
            TsigAlgorithm::HmacSha256,
            b"Jefe",
            &[b"what do ya ", b"want for nothing?"],
        );
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let mac = hmac(
            TsigAlgorithm::HmacSha512,
            b"Jefe",
            &[b"what do ya want for nothing?"],
        );
        assert_eq!(
            hex::encode(mac),
            "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
        );
        // Keys longer than a block are hashed first (RFC 4231 test case 6).
        let mac = hmac(
            TsigAlgorithm::HmacSha256,
            &[0xaa; 131],
            &[b"Test Using Larger Than Block-Size Key - Hash Key First"],
        );
        assert_eq!(
            hex::encode(mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn names_encode_lowercase_and_reject_bad_labels() {
        let mut v = Vec::new();
        write_name(&mut v, "_ACME-challenge.Example.test.").expect("name");
        assert_eq!(v, b"\x0f_acme-challenge\x07example\x04test\x00");
        let mut v = Vec::new();
        write_name(&mut v, ".").expect("root");
        assert_eq!(v, b"\x00");
        for bad in ["a..b", &format!("{}.test", "a".repeat(64))] {
            assert!(write_name(&mut Vec::new(), bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn update_message_layout() {
        let m = update_txt(
            0x1234,
            "example.test",
            "_acme-challenge.example.test",
            &TxtChange::Add {
                ttl: 60,
                value: "abc".into(),
            },
        )
        .expect("update");
        // id, opcode UPDATE, ZOCOUNT 1, PRCOUNT 0, UPCOUNT 1, ADCOUNT 0
        assert_eq!(
            &m[..12],
            b"\x12\x34\x28\x00\x00\x01\x00\x00\x00\x01\x00\x00"
        );
        let zone = b"\x07example\x04test\x00\x00\x06\x00\x01";
        assert_eq!(&m[12..12 + zone.len()], zone);
        let rr = &m[12 + zone.len()..];
        let name = b"\x0f_acme-challenge\x07example\x04test\x00";
        assert_eq!(&rr[..name.len()], name);
        assert_eq!(
            &rr[name.len()..],
            b"\x00\x10\x00\x01\x00\x00\x00\x3c\x00\x04\x03abc"
        );
        let d = update_txt(
            1,
            "example.test",
            "x.example.test",
            &TxtChange::Delete {
                value: "abc".into(),
            },
        )
        .expect("delete");
        // class NONE, TTL 0: delete this one record.
        assert!(d.ends_with(b"\x00\x10\x00\xfe\x00\x00\x00\x00\x00\x04\x03abc"));
        assert_eq!(
            update_txt(
                1,
                "t",
                "x.t",
                &TxtChange::Add {
                    ttl: 1,
                    value: "a".repeat(256)
                }
            ),
            Err(DnsError::TxtTooLong)
        );
    }

    /// Builds a response the way a server would: header, echoed question, answers, then a TSIG
    /// record signed over the request MAC.
    fn signed_response(req_mac: &[u8], key: &TsigKey, error: u16, rcode: u16) -> Vec<u8> {
        let mut m = header(0x4242, 0xa800 | rcode, [1, 2, 0, 0]);
        write_name(&mut m, "_acme-challenge.example.test").expect("name");
        m.extend_from_slice(b"\x00\x10\x00\x01");
        // CNAME with a compression pointer to the question name (offset 12).
        m.extend_from_slice(b"\xc0\x0c\x00\x05\x00\x01\x00\x00\x00\x3c\x00\x04\x01t\xc0\x1c");
        m.extend_from_slice(b"\x01t\xc0\x1c\x00\x10\x00\x01\x00\x00\x00\x3c\x00\x06\x02hi\x02yo");
        let vars = tsig_variables(key, 1_700_000_000, 300, error, &[]);
        let len = (req_mac.len() as u16).to_be_bytes();
        let mac = hmac(key.algorithm, &key.secret, &[&len, req_mac, &m, &vars]);
        let mut out = m.clone();
        out[10..12].copy_from_slice(&1u16.to_be_bytes());
        write_name(&mut out, &key.name).expect("name");
        out.extend_from_slice(b"\x00\xfa\x00\xff\x00\x00\x00\x00");
        let mut rd = Vec::new();
        write_name(&mut rd, "hmac-sha256").expect("alg");
        rd.extend_from_slice(&1_700_000_000u64.to_be_bytes()[2..]);
        rd.extend_from_slice(&300u16.to_be_bytes());
        rd.extend_from_slice(&(mac.len() as u16).to_be_bytes());
        rd.extend_from_slice(&mac);
        rd.extend_from_slice(&0x4242u16.to_be_bytes());
        rd.extend_from_slice(&error.to_be_bytes());
        rd.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&(rd.len() as u16).to_be_bytes());
        out.extend_from_slice(&rd);
        out
    }

    #[test]
    fn sign_then_verify_round_trip() {
        let k = key();
        let q = update_txt(
            7,
            "example.test",
            "_acme-challenge.example.test",
            &TxtChange::Delete { value: "v".into() },
        )
        .expect("update");
        let (signed, mac) = sign(&q, &k, 1_700_000_000, 300).expect("sign");
        assert_eq!(mac.len(), 32);
        assert_eq!(
            &signed[10..12],
            b"\x00\x01",
            "ARCOUNT counts the TSIG record"
        );
        // The request parses back with its TSIG record, which verifies as the server would.
        let parsed = parse_response(&signed).expect("parse");
        let t = parsed.tsig.expect("tsig");
        assert_eq!(
            (t.key_name.as_str(), t.algorithm.as_str()),
            ("acme-key", "hmac-sha256")
        );
        assert_eq!(
            (t.time_signed, t.fudge, t.original_id),
            (1_700_000_000, 300, 7)
        );
        assert_eq!(t.mac, mac);
        let vars = tsig_variables(&k, t.time_signed, t.fudge, 0, &[]);
        // The server strips the record and restores ARCOUNT before MACing.
        let mut u = signed[..t.offset].to_vec();
        u[10..12].copy_from_slice(b"\x00\x00");
        assert_eq!(hmac(k.algorithm, &k.secret, &[&u, &vars]), mac);

        // A response signed over our MAC verifies; tampering or another secret does not.
        let resp = signed_response(&mac, &k, 0, 0);
        let r = parse_response(&resp).expect("parse");
        assert_eq!(r.rcode, 0);
        assert_eq!(
            r.answers,
            vec![
                Answer::Cname {
                    name: "_acme-challenge.example.test".into(),
                    target: "t.example.test".into()
                },
                Answer::Txt {
                    name: "t.example.test".into(),
                    value: "hiyo".into()
                }
            ]
        );
        assert_eq!(verify_response(&resp, &r, &k, &mac), Ok(()));
        let mut other = k.clone();
        other.secret[0] ^= 1;
        assert!(verify_response(&resp, &r, &other, &mac).is_err());
        let mut tampered = resp.clone();
        tampered[3] ^= 0x01; // rcode bit
        let rt = parse_response(&tampered).expect("parse");
        assert!(verify_response(&tampered, &rt, &k, &mac).is_err());
    }

    #[test]
    fn errors_are_read_from_rcode_and_tsig() {
        let k = key();
        let resp = signed_response(b"", &k, 16, 9);
        let r = parse_response(&resp).expect("parse");
        assert_eq!(rcode_name(r.rcode), "NOTAUTH");
        assert_eq!(rcode_name(r.tsig.expect("tsig").error), "BADSIG");
        assert_eq!(rcode_name(17), "BADKEY");
        assert_eq!(rcode_name(5), "REFUSED");
        assert_eq!(rcode_name(99), "RCODE99");
        assert!(rcode_hint(16).contains("secret"));
        // Truncated and garbage input are errors, never panics.
        assert!(parse_response(&resp[..resp.len() - 3]).is_err());
        assert!(parse_response(&[0; 5]).is_err());
        let mut looped = header(1, 0, [1, 0, 0, 0]);
        looped.extend_from_slice(b"\xc0\x0c\x00\x10\x00\x01");
        assert!(parse_response(&looped).is_err());
    }

    #[test]
    fn record_names_with_and_without_delegation() {
        let d: std::collections::BTreeMap<String, String> = [(
            "_acme-challenge.Shop.example.org.".to_string(),
            "shop.acme.example.com.".to_string(),
        )]
        .into_iter()
        .collect();
        let none = std::collections::BTreeMap::new();
        let z = "example.com";
        assert_eq!(
            record_name("*.a.example.com", z, &none, None).as_deref(),
            Ok("_acme-challenge.a.example.com")
        );
        assert_eq!(
            record_name("shop.example.org", z, &d, None).as_deref(),
            Ok("shop.acme.example.com")
        );
        assert_eq!(
            record_name("*.shop.example.org", z, &d, Some("all.example.com")).as_deref(),
            Ok("shop.acme.example.com"),
            "an explicit delegation wins"
        );
        assert_eq!(
            record_name("*.x.example.net", z, &d, Some("all.example.com.")).as_deref(),
            Ok("x.example.net.all.example.com")
        );
        let e = record_name("x.example.net", z, &none, None).unwrap_err();
        assert!(
            e.contains("outside") && e.contains("_acme-challenge.x.example.net"),
            "{e}"
        );
    }

    #[test]
    fn challenge_names_and_zones() {
        assert_eq!(
            challenge_name("*.Example.test."),
            "_acme-challenge.example.test"
        );
        assert_eq!(
            challenge_name("a.example.test"),
            "_acme-challenge.a.example.test"
        );
        assert!(in_zone("_acme-challenge.a.example.test", "example.test."));
        assert!(in_zone("example.test", "Example.Test"));
        assert!(!in_zone("badexample.test", "example.test"));
        assert!(!in_zone("example.org", "example.test"));
        assert_eq!(
            TsigAlgorithm::parse("HMAC-SHA256."),
            Some(TsigAlgorithm::HmacSha256)
        );
        assert_eq!(TsigAlgorithm::parse("hmac-md5"), None);
        assert_eq!(
            parse_server("127.0.0.1:15353"),
            Ok(("127.0.0.1".into(), 15353))
        );
        assert_eq!(parse_server("::1"), Ok(("::1".into(), 53)));
        assert_eq!(parse_server("[::1]:54"), Ok(("::1".into(), 54)));
        assert_eq!(
            parse_server("NS1.example.com"),
            Ok(("ns1.example.com".into(), 53))
        );
        assert_eq!(
            parse_server("ns1.example.com:5300"),
            Ok(("ns1.example.com".into(), 5300))
        );
        for bad in ["", "ns1:0", "127.0.0.1:0", "ns1:x", "a b:53", "[::1"] {
            assert!(parse_server(bad).is_err(), "{bad}");
        }
        let dbg = format!("{:?}", key());
        assert!(!dbg.contains("0123456789"), "{dbg}");
    }
}
