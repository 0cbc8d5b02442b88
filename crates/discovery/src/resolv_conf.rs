//! The name servers of `/etc/resolv.conf` (resolv.conf(5)): its `nameserver` lines, port 53.
//! Nothing else of the file is used: names are asked as written, without a search list.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

/// Where the system's name servers are listed.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The name servers listed in the resolv.conf file at `path`, in order; an error when the
/// file cannot be read or lists none.
pub fn nameservers(path: &Path) -> Result<Vec<SocketAddr>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let servers = parse(&text);
    if servers.is_empty() {
        return Err(format!(
            "{} lists no nameserver; set the pool's discovery.resolvers",
            path.display()
        ));
    }
    Ok(servers)
}

fn parse(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            if words.next() != Some("nameserver") {
                return None;
            }
            // An IPv6 link-local server may carry a zone (`fe80::1%eth0`), which sluice drops.
            let word = words.next()?;
            let ip: IpAddr = word.split('%').next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameserver_lines_in_order() {
        let text = "# generated\nsearch default.svc.cluster.local svc.cluster.local\n\
                    nameserver 10.96.0.10\noptions ndots:5\nnameserver ::1 # local\n\
                    nameserver fe80::1%eth0\nnameserver not-an-ip\n;nameserver 1.1.1.1\n";
        let servers: Vec<String> = parse(text).iter().map(ToString::to_string).collect();
        assert_eq!(servers, ["10.96.0.10:53", "[::1]:53", "[fe80::1]:53"]);
        assert!(parse("search x\n").is_empty());
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let e = nameservers(Path::new("/nonexistent/resolv.conf")).unwrap_err();
        assert!(e.starts_with("cannot read /nonexistent/resolv.conf"), "{e}");
    }
}
