use super::*;
use proptest::prelude::*;
use serde_json::json;

const NOW: u64 = 1_800_000_000;

fn provider() -> Policy {
    Policy {
        issuer: Some("https://idp.example/realms/app".into()),
        audience: vec!["switchboard".into()],
        user_claim: "uid".into(),
        grants_claim: Some("https://example.com/switchboard".into()),
        leeway: 5,
    }
}

fn claims(v: serde_json::Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn good() -> serde_json::Value {
    json!({
        "iss": "https://idp.example/realms/app",
        "aud": ["account", "switchboard"],
        "uid": "auth0|alice",
        "sub": "ignored",
        "exp": NOW + 60,
        "iat": NOW,
        "nbf": NOW,
        "channels": ["ch:top-level-ignored"],
        "https://example.com/switchboard": {"channels": ["ch:news"], "publish": ["ch:room.*"]},
    })
}

fn with(field: &str, value: serde_json::Value) -> Map<String, Value> {
    let mut c = claims(good());
    c.insert(field.into(), value);
    c
}

fn without(field: &str) -> Map<String, Value> {
    let mut c = claims(good());
    c.remove(field);
    c
}

#[test]
fn a_provider_token_names_its_user_and_grants_from_the_configured_claims() {
    let v = provider().check(&claims(good()), NOW).unwrap();
    assert_eq!(v.user.as_str(), "auth0|alice");
    assert_eq!(v.exp, NOW + 60);
    assert_eq!(v.channels, vec!["ch:news".to_owned()]);
    assert_eq!(v.publish, vec!["ch:room.*".to_owned()]);
    // No grants claim: nothing granted, still a valid user token.
    let v = provider().check(&without("https://example.com/switchboard"), NOW);
    assert!(v.unwrap().channels.is_empty());
}

#[test]
fn each_claim_rule_refuses_what_breaks_it() {
    let p = provider();
    let cases = [
        (without("exp"), ClaimError::Missing("exp".into())),
        (with("exp", json!(NOW - 6)), ClaimError::Expired),
        (
            with("exp", json!("tomorrow")),
            ClaimError::Malformed("exp".into()),
        ),
        (with("nbf", json!(NOW + 6)), ClaimError::NotYetValid),
        (with("iat", json!(NOW + 6)), ClaimError::IssuedInFuture),
        (
            with("iss", json!("https://other.example")),
            ClaimError::Issuer,
        ),
        (without("iss"), ClaimError::Issuer),
        (with("aud", json!("account")), ClaimError::Audience),
        (with("aud", json!([])), ClaimError::Audience),
        (without("aud"), ClaimError::Missing("aud".into())),
        (with("aud", json!(7)), ClaimError::Malformed("aud".into())),
        (without("uid"), ClaimError::Missing("uid".into())),
        (with("uid", json!(42)), ClaimError::Malformed("uid".into())),
        (
            with("uid", json!("system:billing")),
            ClaimError::SystemSubject,
        ),
        (
            with("https://example.com/switchboard", json!(["ch:x"])),
            ClaimError::Malformed("https://example.com/switchboard".into()),
        ),
        (
            with(
                "https://example.com/switchboard",
                json!({"channels": "ch:x"}),
            ),
            ClaimError::Malformed("channels".into()),
        ),
    ];
    for (c, want) in cases {
        assert_eq!(p.check(&c, NOW).unwrap_err(), want, "{c:?}");
    }
    assert!(matches!(
        p.check(&with("uid", json!("bad user")), NOW),
        Err(ClaimError::User(_))
    ));
}

#[test]
fn leeway_forgives_skew_up_to_its_length_and_fractions_are_dates() {
    let p = provider();
    assert!(p.check(&with("exp", json!(NOW - 5)), NOW).is_ok());
    assert!(p.check(&with("nbf", json!(NOW + 5)), NOW).is_ok());
    assert!(p.check(&with("iat", json!(NOW + 5)), NOW).is_ok());
    assert!(p
        .check(&with("exp", json!(NOW as f64 + 30.75)), NOW)
        .is_ok());
    assert!(p.check(&with("exp", json!(-1.0)), NOW).is_err());
}

#[test]
fn local_tokens_carry_no_issuer_and_no_audience_is_asked() {
    let local = Policy::local(5);
    let token =
        claims(json!({"sub": "bob", "exp": NOW + 1, "aud": "anything", "publish": ["ch:a"]}));
    let v = local.check(&token, NOW).unwrap();
    assert_eq!((v.user.as_str(), v.publish.len()), ("bob", 1));
    let with_iss = claims(json!({"sub": "bob", "exp": NOW + 1, "iss": "https://idp.example"}));
    assert_eq!(local.check(&with_iss, NOW).unwrap_err(), ClaimError::Issuer);
}

proptest! {
    /// Whatever the times, a token passes exactly when exp + leeway ≥ now
    /// and neither nbf nor iat lies beyond now + leeway.
    #[test]
    fn times_pass_exactly_inside_the_leeway(
        exp in 0u64..4_000, nbf in proptest::option::of(0u64..4_000),
        iat in proptest::option::of(0u64..4_000), now in 0u64..4_000, leeway in 0u64..120,
    ) {
        let mut c = claims(good());
        c.insert("exp".into(), json!(exp));
        c.remove("nbf");
        c.remove("iat");
        if let Some(n) = nbf { c.insert("nbf".into(), json!(n)); }
        if let Some(i) = iat { c.insert("iat".into(), json!(i)); }
        let p = Policy { leeway, ..provider() };
        let inside = exp + leeway >= now
            && nbf.is_none_or(|n| n <= now + leeway)
            && iat.is_none_or(|i| i <= now + leeway);
        prop_assert_eq!(p.check(&c, now).is_ok(), inside);
    }

    /// A token is accepted only when its audience list shares a value with
    /// the configured one.
    #[test]
    fn audience_passes_exactly_when_the_lists_meet(
        ours in proptest::collection::vec("[a-c]", 1..3),
        theirs in proptest::collection::vec("[a-d]", 0..4),
    ) {
        let p = Policy { audience: ours.clone(), ..provider() };
        let c = with("aud", json!(theirs));
        let meets = theirs.iter().any(|t| ours.contains(t));
        prop_assert_eq!(p.check(&c, NOW).is_ok(), meets);
    }
}
