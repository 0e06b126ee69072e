//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`, never in a product build):
//! each parser that takes bytes from a stranger, driven synchronously over memory, with the
//! properties it must keep besides not panicking.

use clusterlink_api::clients::ClientTable;

use crate::go_tunnel::{Answer, GoRequest, authorization_of};
use crate::relay::complete;
use crate::tunnel::{PeerRequest, TunnelRequest, TunnelResponse, read_head};

/// A tunnel head as the peer port reads it. A request that decodes encodes to one that decodes
/// the same: what the gateway forwards is what it understood.
pub fn tunnel_head(data: &[u8]) {
    let mut input = data;
    if let Ok((head, rest)) = complete(read_head(&mut input)) {
        // The head ends at its first blank line, and what follows it is kept, in order.
        assert!(head.ends_with(b"\r\n\r\n"));
        assert_eq!(
            head.windows(4).position(|w| w == b"\r\n\r\n"),
            Some(head.len() - 4)
        );
        assert!(data.starts_with(&[head, rest].concat()));
    }
    if let Ok(PeerRequest::Tunnel(request)) = PeerRequest::decode(data) {
        assert_eq!(TunnelRequest::decode(&request.encode()), Ok(request));
    }
    let _ = TunnelResponse::decode(data, data);
}

/// Frames from a peer. The bytes written out are never more than came in.
pub fn frames(data: &[u8]) {
    if let Ok((plain, _)) = crate::relay::decode_frames(data) {
        assert!(plain.len() <= data.len());
    }
}

/// The client-attribute table (`--client-attributes`), then look-ups in it.
pub fn client_table(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(table) = ClientTable::parse(text) {
        for ip in [
            "10.0.0.1",
            "127.0.0.1",
            "::1",
            "fd00::5",
            "0.0.0.0",
            "255.255.255.255",
        ] {
            if let Ok(ip) = ip.parse() {
                let _ = table.attributes_of(ip);
            }
        }
    }
}

/// What a Go ClusterLink gateway sends the peer port (a request head, an authorization body) or
/// answers this gateway (a response head and its text). An authorization never keeps more than
/// the client's attributes.
pub fn go_request(data: &[u8]) {
    let _ = GoRequest::decode(data);
    if let Ok((_, client)) = authorization_of(data) {
        assert!(
            client
                .keys()
                .all(|k| clusterlink_api::attributes::is_client_attribute(k))
        );
    }
    if let Ok(answer) = Answer::decode(data) {
        let _ = answer.labels();
        if let Ok(token) = answer.token(data) {
            assert!(!token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()));
        }
        let (_, text) = answer.refusal(data);
        assert!(!text.contains(['\n', '\r', '\x1b']));
    }
}
