#!/usr/bin/env python3
"""Verify a tokendealer access token with PyJWT, independently of the daemon's own code.

Usage: verify_jwt.py JWKS_URL TOKEN ISSUER AUDIENCE

Fetches the JWKS with jwt.PyJWKClient, requires the RFC 9068 header (`typ` "at+jwt", a
`kid`), verifies the signature with the algorithm the published key declares (never the one
the token's header asks for), requires and checks iss, aud, exp, iat, nbf, sub and jti, and
prints the verified claims as JSON on stdout. Any failure: a message on stderr, exit 1.
Bad usage: exit 2.

Needs PyJWT with its crypto extra: pip install "pyjwt[crypto]".
"""

import json
import sys

try:
    import jwt
except ImportError:
    sys.stderr.write('verify_jwt.py: PyJWT is missing; install it with pip install "pyjwt[crypto]"\n')
    sys.exit(1)

REQUIRED_CLAIMS = ["iss", "aud", "exp", "iat", "nbf", "sub", "jti"]
# Clock skew tolerated on exp, nbf and iat: the verifier and the daemon share a clock here.
LEEWAY_SECONDS = 5


class VerifyError(Exception):
    pass


def published_key(jwks_url, kid):
    """The JWK with this kid, fetched with PyJWKClient, as (raw dict, PyJWK)."""
    client = jwt.PyJWKClient(jwks_url, cache_jwk_set=False, cache_keys=False, timeout=30)
    document = client.fetch_data()
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise VerifyError(f"the JWKS at {jwks_url} has no `keys` array")
    matching = [k for k in keys if isinstance(k, dict) and k.get("kid") == kid]
    if len(matching) != 1:
        raise VerifyError(f"the JWKS at {jwks_url} has {len(matching)} keys with kid {kid!r}, not one")
    raw = matching[0]
    if not raw.get("alg"):
        raise VerifyError(f"the published key {kid!r} does not declare its `alg`")
    if raw.get("use", "sig") != "sig":
        raise VerifyError(f"the published key {kid!r} has use {raw.get('use')!r}, not 'sig'")
    return raw, jwt.PyJWK(raw, algorithm=raw["alg"])


def verify(jwks_url, token, issuer, audience):
    header = jwt.get_unverified_header(token)
    if header.get("typ") != "at+jwt":
        raise VerifyError(f"the header's typ is {header.get('typ')!r}, not 'at+jwt' (RFC 9068)")
    kid = header.get("kid")
    if not kid:
        raise VerifyError("the header has no kid")
    raw, key = published_key(jwks_url, kid)
    algorithm = raw["alg"]
    if header.get("alg") != algorithm:
        raise VerifyError(f"the header's alg {header.get('alg')!r} differs from the key's {algorithm!r}")
    # Only the key's own algorithm is allowed, so a header cannot pick `none` or HS256.
    return jwt.decode(
        token,
        key,
        algorithms=[algorithm],
        audience=audience,
        issuer=issuer,
        leeway=LEEWAY_SECONDS,
        options={"require": REQUIRED_CLAIMS, "verify_signature": True},
    )


def main(argv):
    if len(argv) != 5:
        sys.stderr.write("usage: verify_jwt.py JWKS_URL TOKEN ISSUER AUDIENCE\n")
        return 2
    _, jwks_url, token, issuer, audience = argv
    try:
        claims = verify(jwks_url, token, issuer, audience)
    except (jwt.PyJWTError, VerifyError, ValueError, OSError) as e:
        sys.stderr.write(f"verify_jwt.py: the token does not verify: {type(e).__name__}: {e}\n")
        return 1
    json.dump(claims, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
