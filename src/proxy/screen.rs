//! The first look at a request, before routing: what makes it mean different things to
//! different servers is refused here — two `Host` headers, an HTTP/1.1 request without one, an
//! absolute-form target (or HTTP/2 `:authority`) naming another host than `Host`, a transfer
//! coding keygate would have to re-frame (`gzip, chunked`: 501), and, when so configured,
//! header names with `_`.

use http::header::{HOST, TRANSFER_ENCODING};
use http::{Request, Version};

use crate::config::UnderscoreHeaders;
use crate::error::Rejection;
use crate::fields;

pub fn screen<B>(req: &Request<B>, underscores: UnderscoreHeaders) -> Result<(), Rejection> {
    let headers = req.headers();
    let mut hosts = fields::values(headers, &HOST);
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Rejection::BadRequest(
            "the request has more than one Host header",
        ));
    }
    match (host, req.uri().authority()) {
        (None, None) if req.version() == Version::HTTP_11 => {
            return Err(Rejection::BadRequest(
                "an HTTP/1.1 request needs a Host header",
            ));
        }
        (Some(h), Some(a)) if !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) => {
            return Err(Rejection::BadRequest(
                "the request target's authority and the Host header differ",
            ));
        }
        _ => {}
    }
    for te in fields::values(headers, &TRANSFER_ENCODING) {
        // hyper has framed the body by the last coding, which it requires to be `chunked`;
        // any other coding before it would be lost in the re-framing.
        let only_chunked = te.to_str().is_ok_and(|v| {
            v.split(',')
                .all(|c| c.trim().eq_ignore_ascii_case("chunked"))
        });
        if !only_chunked {
            return Err(Rejection::UnsupportedTransferCoding);
        }
    }
    if underscores == UnderscoreHeaders::Refuse && headers.keys().any(|n| n.as_str().contains('_'))
    {
        return Err(Rejection::BadRequest(
            "header names with '_' are not accepted; use '-'",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().version(version).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn hosts_and_codings() {
        let drop = UnderscoreHeaders::Drop;
        let ok = |r: Request<()>| screen(&r, drop).is_ok();
        assert!(ok(req(Version::HTTP_11, "/", &[("host", "a")])));
        assert!(ok(req(Version::HTTP_10, "/", &[])));
        assert!(ok(req(Version::HTTP_2, "http://a/", &[])));
        assert!(ok(req(Version::HTTP_11, "http://A/x", &[("host", "a")])));
        assert!(!ok(req(Version::HTTP_11, "/", &[])));
        assert!(!ok(req(
            Version::HTTP_11,
            "/",
            &[("host", "a"), ("host", "b")]
        )));
        assert!(!ok(req(
            Version::HTTP_11,
            "http://evil/x",
            &[("host", "a")]
        )));
        assert!(!ok(req(Version::HTTP_2, "http://evil/x", &[("host", "a")])));
        let te = |v: &str| {
            req(
                Version::HTTP_11,
                "/",
                &[("host", "a"), ("transfer-encoding", v)],
            )
        };
        assert!(ok(te("chunked")));
        assert!(ok(te("Chunked")));
        assert!(matches!(
            screen(&te("gzip, chunked"), drop),
            Err(Rejection::UnsupportedTransferCoding)
        ));
        let underscore = req(Version::HTTP_11, "/", &[("host", "a"), ("x_api_key", "k")]);
        assert!(screen(&underscore, drop).is_ok());
        assert!(screen(&underscore, UnderscoreHeaders::Refuse).is_err());
    }
}
