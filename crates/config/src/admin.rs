//! `[admin]`: the admin listener.

use std::net::SocketAddr;

use crate::defaults;
use crate::model::{Admin, Secret};
use crate::read::{Item, Keys, Reader};

const ADMIN: Keys = Keys {
    known: &["listen", "token"],
    later: &[],
};

/// Shortest bearer token accepted: anything shorter is guessable.
const MIN_TOKEN: usize = 16;

/// `[admin] listen = "127.0.0.1:9090", token = "…"`.
pub(crate) fn admin(r: &mut Reader<'_>, item: Item<'_, '_>) -> Option<Admin> {
    let t = item.table(r, &ADMIN)?;
    let default: SocketAddr = defaults::ADMIN_LISTEN.parse().ok()?;
    let listen = t.optional("listen", default, |item| item.socket_addr(r));
    let token = t.optional("token", None, |item| {
        let text = item.str(r)?;
        if text.chars().count() < MIN_TOKEN || !text.chars().all(|c| c.is_ascii_graphic()) {
            r.report(
                &item,
                format_args!(
                    "must be at least {MIN_TOKEN} printable ASCII characters without spaces"
                ),
            );
            return None;
        }
        Some(Some(Secret::new(text)))
    });
    Some(Admin {
        listen: listen?,
        token: token?,
    })
}

#[cfg(test)]
mod tests {
    use crate::parse;

    const BASE: &str = "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8080\"\n\n[[routes]]\nlistener = \"public\"\npool = \"main\"\n\n[pools.main]\nbackends = [\"127.0.0.1:9001\"]\n";

    #[test]
    fn absent_means_no_admin_listener_and_an_empty_table_means_loopback() {
        assert_eq!(parse(BASE, "t.toml").unwrap().admin, None);
        let admin = parse(&format!("{BASE}\n[admin]\n"), "t.toml")
            .unwrap()
            .admin
            .unwrap();
        assert_eq!(admin.listen.to_string(), "127.0.0.1:9090");
        assert_eq!(admin.token, None);
    }

    #[test]
    fn address_and_token_parse_and_short_tokens_are_refused() {
        let text =
            format!("{BASE}\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"0123456789abcdef\"\n");
        let admin = parse(&text, "t.toml").unwrap().admin.unwrap();
        assert_eq!(admin.listen.port(), 0);
        assert_eq!(admin.token.unwrap().expose(), "0123456789abcdef");
        let errors = parse(
            &format!("{BASE}\n[admin]\ntoken = \"short\"\nport = 1\n"),
            "t.toml",
        )
        .unwrap_err();
        let text = errors.to_string();
        assert!(
            text.contains("t.toml:13:9: admin.token: must be at least 16"),
            "{text}"
        );
        assert!(text.contains("admin.port: unknown key"), "{text}");
    }
}
