//! HTTP/1 framing as the ingress relays it: how an instance's answer ends, what of its head
//! goes on to the client, and which headers describe one connection only. No I/O.

/// How much is read at a time.
pub(crate) const READ_SIZE: usize = 16 * 1024;

/// Headers that describe one connection, not the message: never forwarded, on either path.
/// Each path adds what its own framing needs: hyper's drops `Transfer-Encoding` too (hyper
/// frames each side anew), the lean path keeps it on answers (it relays their bytes as sent).
pub(crate) const HOP_BY_HOP: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
];

/// The most header lines accepted in an instance's answer.
pub(crate) const MAX_RESPONSE_HEADERS: usize = 100;
/// An instance's answer with a head longer than this is refused.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How the end of an answer's body is found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

pub(crate) fn is(name: &str, lower: &str) -> bool {
    name.eq_ignore_ascii_case(lower)
}

/// Writes one header line.
pub(crate) fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// What the instance's answer's head said.
pub(crate) struct AnswerHead {
    pub(crate) framing: Framing,
    pub(crate) reusable: bool,
}

/// How the answer whose head is `resp` is framed, and whether its connection may carry
/// another; `head_request`: it answers a HEAD request.
pub(crate) fn answer_head(
    resp: &httparse::Response<'_, '_>,
    head_request: bool,
) -> Result<AnswerHead, String> {
    let code = resp.code.unwrap_or(0);
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let mut reusable = resp.version == Some(1);
    for h in resp.headers.iter() {
        if is(h.name, "content-length") {
            let l = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or("its Content-Length is not a number")?;
            if length.is_some_and(|seen| seen != l) {
                return Err("it sent two different Content-Lengths".into());
            }
            length = Some(l);
        } else if is(h.name, "transfer-encoding") {
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if is(h.name, "connection") {
            for token in h.value.split(|&b| b == b',') {
                if token.trim_ascii().eq_ignore_ascii_case(b"close") {
                    reusable = false;
                }
            }
        }
    }
    let framing = if head_request || code == 204 || code == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::UntilClose,
            (None, Some(0)) => Framing::Empty,
            (None, Some(l)) => Framing::Length(l),
            (None, None) => Framing::UntilClose,
        }
    };
    Ok(AnswerHead {
        framing,
        reusable: reusable && framing != Framing::UntilClose,
    })
}

/// Writes the answer's head for the client into `out`: the instance's, without the headers
/// that describe its connection to the ingress.
pub(crate) fn client_head(resp: &httparse::Response<'_, '_>, close: bool, out: &mut Vec<u8>) {
    use std::io::Write;
    out.clear();
    // Into the buffer: no string is made for the status.
    let _ = write!(out, "HTTP/1.1 {} ", resp.code.unwrap_or(502));
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // Headers that the instance's `Connection` names describe its connection too.
    let named: Vec<&[u8]> = resp
        .headers
        .iter()
        .filter(|h| is(h.name, "connection"))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .collect();
    for h in resp.headers.iter() {
        let hop = HOP_BY_HOP.iter().chain(&["upgrade"]).any(|n| is(h.name, n))
            || named
                .iter()
                .any(|n| n.eq_ignore_ascii_case(h.name.as_bytes()));
        if !hop {
            header(out, h.name.as_bytes(), h.value);
        }
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Finds where a chunked body ends, fed the bytes as they come.
#[derive(Debug, Default)]
pub(crate) struct ChunkedEnd {
    state: Chunk,
    size: u64,
    digits: u8,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a line after the last chunk: a trailer or the final empty line.
    TrailerStart,
    Trailer,
    EndLf,
    Done,
}

impl ChunkedEnd {
    /// How many bytes of `data` belong to the body, once its end is in them.
    pub(crate) fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, ()> {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                Chunk::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).ok_or(())?;
                        self.digits += 1;
                        if self.digits > 15 {
                            return Err(());
                        }
                        self.size = self.size * 16 + u64::from(d);
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => self.state = Chunk::Extension,
                    b'\r' if self.digits > 0 => self.state = Chunk::SizeLf,
                    b'\n' if self.digits > 0 => self.size_line_ended(),
                    _ => return Err(()),
                },
                Chunk::Extension => match b {
                    b'\r' => self.state = Chunk::SizeLf,
                    b'\n' => self.size_line_ended(),
                    _ => {}
                },
                Chunk::SizeLf if b == b'\n' => self.size_line_ended(),
                Chunk::Data => {
                    let n = (data.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    self.size -= n as u64;
                    i += n;
                    if self.size == 0 {
                        self.state = Chunk::DataCr;
                    }
                    continue;
                }
                Chunk::DataCr if b == b'\r' => self.state = Chunk::DataLf,
                Chunk::DataCr | Chunk::DataLf if b == b'\n' => self.state = Chunk::Size,
                Chunk::TrailerStart => match b {
                    b'\r' => self.state = Chunk::EndLf,
                    b'\n' => self.state = Chunk::Done,
                    _ => self.state = Chunk::Trailer,
                },
                Chunk::Trailer if b == b'\n' => self.state = Chunk::TrailerStart,
                Chunk::Trailer => {}
                Chunk::EndLf if b == b'\n' => self.state = Chunk::Done,
                _ => return Err(()),
            }
            i += 1;
            if self.state == Chunk::Done {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    fn size_line_ended(&mut self) {
        self.state = if self.size == 0 {
            Chunk::TrailerStart
        } else {
            Chunk::Data
        };
        self.digits = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end_of(parts: &[&[u8]]) -> Result<Option<usize>, ()> {
        let mut c = ChunkedEnd::default();
        let mut offset = 0;
        for p in parts {
            if let Some(end) = c.feed(p)? {
                return Ok(Some(offset + end));
            }
            offset += p.len();
        }
        Ok(None)
    }

    #[test]
    fn the_end_of_a_chunked_body_is_found_however_it_is_split() {
        let body = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\nNEXT";
        let end = body.len() - 4;
        assert_eq!(end_of(&[body]), Ok(Some(end)));
        for split in 1..body.len() {
            let (a, b) = body.split_at(split);
            assert_eq!(end_of(&[a, b]), Ok(Some(end)), "split at {split}");
        }
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(end_of(&bytes), Ok(Some(end)));
    }

    #[test]
    fn trailers_and_bare_line_feeds_are_read_through() {
        let body = b"3\r\nabc\r\n0\r\nChecksum: 1\r\nOther: 2\r\n\r\n";
        assert_eq!(end_of(&[body]), Ok(Some(body.len())));
        let body = b"3\nabc\n0\n\n";
        assert_eq!(end_of(&[body]), Ok(Some(body.len())));
        assert_eq!(end_of(&[b"3\r\nab"]), Ok(None));
    }

    #[test]
    fn malformed_chunks_are_refused() {
        assert_eq!(end_of(&[b"x\r\n"]), Err(()));
        assert_eq!(end_of(&[b"\r\n"]), Err(()));
        assert_eq!(end_of(&[b"3\r\nabcX"]), Err(()));
        assert_eq!(end_of(&[b"ffffffffffffffff\r\n"]), Err(()));
    }

    #[test]
    fn the_framing_of_an_answer_follows_its_head() {
        let framing = |head: &str, head_request: bool| {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(head.as_bytes()) {
                Ok(httparse::Status::Complete(n)) => assert_eq!(n, head.len()),
                other => panic!("{other:?}"),
            }
            answer_head(&resp, head_request).map(|h| (h.framing, h.reusable))
        };
        let ok = "HTTP/1.1 200 OK\r\n";
        assert_eq!(
            framing(&format!("{ok}content-length: 5\r\n\r\n"), false),
            Ok((Framing::Length(5), true))
        );
        assert_eq!(
            framing(&format!("{ok}content-length: 5\r\n\r\n"), true),
            Ok((Framing::Empty, true))
        );
        assert_eq!(
            framing(
                &format!("{ok}transfer-encoding: gzip, chunked\r\n\r\n"),
                false
            ),
            Ok((Framing::Chunked, true))
        );
        assert_eq!(
            framing(&format!("{ok}\r\n"), false),
            Ok((Framing::UntilClose, false))
        );
        assert_eq!(
            framing(
                "HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
                false
            ),
            Ok((Framing::Empty, true))
        );
        assert_eq!(
            framing(
                &format!("{ok}content-length: 3\r\nconnection: close\r\n\r\n"),
                false
            ),
            Ok((Framing::Length(3), false))
        );
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\n", false),
            Ok((Framing::Length(3), false))
        );
        assert!(
            framing(
                &format!("{ok}content-length: 3\r\ncontent-length: 4\r\n\r\n"),
                false
            )
            .is_err()
        );
    }
}
