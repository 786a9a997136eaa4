//! Planted faults for the tests (builds with the `planted-faults` feature only; a node built
//! for use has none): `HOTSHARD_PLANTED_BUG` names one fault, or several joined by `+`
//! (`hold-at-head:{t}/:300+list-ignores-dirty`), each a name and, after a colon, its
//! arguments.

/// The arguments of the planted fault `name` ("" if it takes none); None if it is not
/// planted, or in a build without the feature.
pub fn fault(name: &str) -> Option<String> {
    if !cfg!(feature = "planted-faults") {
        return None;
    }
    let planted = std::env::var("HOTSHARD_PLANTED_BUG").ok()?;
    args_of(&planted, name).map(str::to_string)
}

/// `name`'s arguments in a `+`-joined list of faults.
fn args_of<'a>(planted: &'a str, name: &str) -> Option<&'a str> {
    planted.split('+').find_map(|f| match f.strip_prefix(name)? {
        "" => Some(""),
        rest => rest.strip_prefix(':'),
    })
}

#[cfg(test)]
mod tests {
    use super::args_of;

    #[test]
    fn faults_are_found_by_name_among_several() {
        let planted = "hold-at-head:{t}/:300+list-ignores-dirty";
        assert_eq!(args_of(planted, "hold-at-head"), Some("{t}/:300"));
        assert_eq!(args_of(planted, "list-ignores-dirty"), Some(""));
        assert_eq!(args_of(planted, "ack-at-head"), None);
        assert_eq!(
            args_of("ack-at-head-later", "ack-at-head"),
            None,
            "a longer name is another fault"
        );
        assert_eq!(args_of("slow-to-leave:50", "slow-to-leave"), Some("50"));
    }
}
