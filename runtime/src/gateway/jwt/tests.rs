use super::*;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

const ISSUER_PEM: &str = include_str!("../../../tests/auth_support/keys/rsa_issuer.pem");
const ISSUER_PUB_PEM: &str = include_str!("../../../tests/auth_support/keys/rsa_issuer_pub.pem");
const OTHER_PEM: &str = include_str!("../../../tests/auth_support/keys/rsa_other.pem");
const EC_PEM: &str = include_str!("../../../tests/auth_support/keys/ec_issuer.pem");

const NOW: u64 = 1_800_000_000;

fn rsa(pem: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()
}

fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str, with_alg: bool) -> Value {
    let mut jwk = Jwk::from_encoding_key(key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    if !with_alg {
        jwk.common.key_algorithm = None;
    }
    serde_json::to_value(jwk).unwrap()
}

fn issuer_set() -> KeySet {
    let doc = json!({"keys": [
        jwk(&rsa(ISSUER_PEM), Algorithm::RS256, "k1", true),
        jwk(&EncodingKey::from_ec_pem(EC_PEM.as_bytes()).unwrap(), Algorithm::ES256, "ec1", true),
        // A symmetric key in the set must never be used.
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        // An encryption key neither.
        {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
    ]});
    KeySet::parse(doc.to_string().as_bytes()).unwrap()
}

fn config(algorithms: Vec<JwtAlgorithm>) -> JwtConfig {
    JwtConfig {
        issuer: "https://auth.acme.example".into(),
        audiences: vec!["agentry".into(), "other-app".into()],
        jwks_url: None,
        jwks: Some("{}".into()),
        algorithms,
        user_claim: "sub".into(),
    }
}

fn claims() -> Value {
    json!({
        "iss": "https://auth.acme.example",
        "aud": "agentry",
        "sub": "user-42",
        "exp": NOW + 600,
        "iat": NOW,
    })
}

fn sign(claims: &Value, alg: Algorithm, kid: Option<&str>, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// Runs every check the authenticator runs, in its order.
fn check(token: &str, pinned: Vec<JwtAlgorithm>) -> Result<Verified, JwtError> {
    let config = config(pinned);
    let header = check_header(read_header(token)?, &config.algorithms)?;
    let keys = issuer_set();
    let key = keys.select(header.kid.as_deref())?;
    verify(token, &header, key, &config, NOW)
}

fn rs256() -> Vec<JwtAlgorithm> {
    vec![JwtAlgorithm::RS256]
}

#[test]
fn key_set_keeps_only_signing_keys() {
    let set = issuer_set();
    assert_eq!(set.len(), 2);
    assert!(set.has(Some("k1")) && set.has(Some("ec1")));
    assert!(!set.has(Some("hmac")) && !set.has(Some("enc")));
    assert_eq!(
        KeySet::parse(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).unwrap_err(),
        JwtError::NoUsableKeys
    );
    assert_eq!(
        KeySet::parse(b"not json").unwrap_err(),
        JwtError::NoUsableKeys
    );
}

#[test]
fn a_valid_token_names_its_user_and_gets_chat() {
    let token = sign(&claims(), Algorithm::RS256, Some("k1"), &rsa(ISSUER_PEM));
    let verified = check(&token, rs256()).unwrap();
    assert_eq!(verified.subject, "user-42");
    assert_eq!(verified.scopes, vec![Scope::Chat]);
}

#[test]
fn audience_lists_and_alternative_audiences_are_accepted() {
    let mut c = claims();
    c["aud"] = json!(["someone-else", "other-app"]);
    let token = sign(&c, Algorithm::RS256, Some("k1"), &rsa(ISSUER_PEM));
    assert!(check(&token, rs256()).is_ok());
}

#[test]
fn alg_none_is_refused() {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims().to_string());
    for token in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}.c2ln"),
    ] {
        assert!(matches!(
            check(&token, rs256()),
            Err(JwtError::AlgorithmRefused { alg, .. }) if alg == "none"
        ));
    }
}

#[test]
fn rs256_to_hs256_swap_is_refused() {
    // The classic attack: HMAC-sign with the issuer's public key as the secret.
    let token = sign(
        &claims(),
        Algorithm::HS256,
        Some("k1"),
        &EncodingKey::from_secret(ISSUER_PUB_PEM.as_bytes()),
    );
    assert!(matches!(
        check(&token, rs256()),
        Err(JwtError::AlgorithmRefused { alg, .. }) if alg == "HS256"
    ));
    // Even past the pins, an RSA key never verifies an HMAC token.
    let keys = issuer_set();
    let header = CheckedHeader {
        alg: Algorithm::HS256,
        kid: Some("k1".into()),
    };
    assert!(matches!(
        verify(
            &token,
            &header,
            keys.select(Some("k1")).unwrap(),
            &config(rs256()),
            NOW
        ),
        Err(JwtError::KeyMismatch { .. })
    ));
}

#[test]
fn algorithms_outside_the_pins_are_refused() {
    let ec = EncodingKey::from_ec_pem(EC_PEM.as_bytes()).unwrap();
    let token = sign(&claims(), Algorithm::ES256, Some("ec1"), &ec);
    assert!(matches!(
        check(&token, rs256()),
        Err(JwtError::AlgorithmRefused { .. })
    ));
    assert!(check(&token, vec![JwtAlgorithm::RS256, JwtAlgorithm::ES256]).is_ok());
}

#[test]
fn a_key_is_bound_to_its_family_and_declared_alg() {
    // The RSA key declares RS256: a PS256 token under it is refused even when pinned.
    let token = sign(&claims(), Algorithm::PS256, Some("k1"), &rsa(ISSUER_PEM));
    assert!(matches!(
        check(&token, vec![JwtAlgorithm::RS256, JwtAlgorithm::PS256]),
        Err(JwtError::KeyMismatch { .. })
    ));
    // An RS256 token naming the EC key.
    let token = sign(&claims(), Algorithm::RS256, Some("ec1"), &rsa(ISSUER_PEM));
    assert!(matches!(
        check(&token, vec![JwtAlgorithm::RS256, JwtAlgorithm::ES256]),
        Err(JwtError::KeyMismatch { .. })
    ));
}

#[test]
fn time_claims_are_checked_with_leeway() {
    let key = rsa(ISSUER_PEM);
    let at = |exp: u64, nbf: Option<u64>| {
        let mut c = claims();
        c["exp"] = json!(exp);
        if let Some(nbf) = nbf {
            c["nbf"] = json!(nbf);
        }
        check(&sign(&c, Algorithm::RS256, Some("k1"), &key), rs256())
    };
    assert_eq!(at(NOW - 31, None), Err(JwtError::Expired));
    assert!(at(NOW - 29, None).is_ok());
    assert_eq!(at(NOW + 600, Some(NOW + 31)), Err(JwtError::NotYetValid));
    assert!(at(NOW + 600, Some(NOW + 29)).is_ok());
    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        check(&sign(&c, Algorithm::RS256, Some("k1"), &key), rs256()),
        Err(JwtError::MissingClaim("exp".into()))
    );
}

#[test]
fn audience_and_issuer_must_match() {
    let key = rsa(ISSUER_PEM);
    let mut c = claims();
    c["aud"] = json!("someone-else");
    assert_eq!(
        check(&sign(&c, Algorithm::RS256, Some("k1"), &key), rs256()),
        Err(JwtError::WrongAudience)
    );
    let mut c = claims();
    c["iss"] = json!("https://evil.example");
    assert_eq!(
        check(&sign(&c, Algorithm::RS256, Some("k1"), &key), rs256()),
        Err(JwtError::WrongIssuer)
    );
    let mut c = claims();
    c.as_object_mut().unwrap().remove("aud");
    assert_eq!(
        check(&sign(&c, Algorithm::RS256, Some("k1"), &key), rs256()),
        Err(JwtError::MissingClaim("aud".into()))
    );
}

#[test]
fn keys_are_chosen_by_kid() {
    let other = rsa(OTHER_PEM);
    assert_eq!(
        check(
            &sign(&claims(), Algorithm::RS256, Some("k9"), &other),
            rs256()
        ),
        Err(JwtError::UnknownKey("k9".into()))
    );
    // Signed by another key but naming the issuer's kid.
    assert_eq!(
        check(
            &sign(&claims(), Algorithm::RS256, Some("k1"), &other),
            rs256()
        ),
        Err(JwtError::BadSignature)
    );
    // No kid: ambiguous with two keys, fine with one.
    let token = sign(&claims(), Algorithm::RS256, None, &rsa(ISSUER_PEM));
    assert_eq!(check(&token, rs256()), Err(JwtError::NoKeyId));
    let single = KeySet::parse(
        json!({"keys": [jwk(&rsa(ISSUER_PEM), Algorithm::RS256, "k1", false)]})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    let config = config(rs256());
    let header = check_header(read_header(&token).unwrap(), &config.algorithms).unwrap();
    assert!(verify(&token, &header, single.select(None).unwrap(), &config, NOW).is_ok());
}

#[test]
fn the_user_claim_is_required() {
    let key = rsa(ISSUER_PEM);
    let mut c = claims();
    c.as_object_mut().unwrap().remove("sub");
    assert_eq!(
        check(&sign(&c, Algorithm::RS256, Some("k1"), &key), rs256()),
        Err(JwtError::MissingClaim("sub".into()))
    );
    c["sub"] = json!(42);
    assert_eq!(
        check(&sign(&c, Algorithm::RS256, Some("k1"), &key), rs256()),
        Err(JwtError::MissingClaim("sub".into()))
    );
}

#[test]
fn end_users_never_get_admin() {
    let mut c = claims();
    c["scope"] = json!("openid admin analytics billing");
    c["scp"] = json!(["ingest", "root"]);
    let token = sign(&c, Algorithm::RS256, Some("k1"), &rsa(ISSUER_PEM));
    assert_eq!(
        check(&token, rs256()).unwrap().scopes,
        vec![Scope::Chat, Scope::Ingest, Scope::Analytics, Scope::Billing]
    );
}

#[test]
fn malformed_and_critical_headers_are_refused() {
    for token in ["", "abc", "a.b", "a.b.c.d", "!!.e30.x", ".e30.x"] {
        assert_eq!(read_header(token), Err(JwtError::Malformed), "{token:?}");
    }
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","crit":["exp"]}"#);
    let raw = read_header(&format!("{header}.e30.x")).unwrap();
    assert_eq!(check_header(raw, &rs256()), Err(JwtError::Critical));
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":7}"#);
    assert_eq!(
        read_header(&format!("{header}.e30.x")),
        Err(JwtError::Malformed)
    );
}
