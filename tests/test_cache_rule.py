"""The cache rule and the credential_process JSON (pure functions)."""

import json

import pytest

from broker import cache, crypto


@pytest.mark.parametrize(
    ("lifetime", "remaining", "reuse"),
    [
        (3600, 3600, True),
        (3600, 901, True),
        (3600, 899, False),  # inside botocore's 15-minute window: issue anew
        (900, 450, True),  # a 15-minute STS credential is reused for half its life
        (900, 449, False),
        (120, 61, True),
        (120, 59, False),  # never serve one with under a minute left
        (86400 * 32, 1000, True),
        (10, 3, True),  # a lease shorter than two minutes is reused while a quarter of it remains
        (10, 1, False),
        (100, 25, True),
        (100, 24, False),
    ],
)
def test_reuse_rule(lifetime, remaining, reuse):
    now = 1_000_000
    expires = now + remaining
    assert cache.reusable(expires - lifetime, expires, now) is reuse


def test_endpoint_choice():
    assert cache.endpoint_for("iam_user", 900, None) == "creds"
    assert cache.endpoint_for("assumed_role", None, None) == "sts"
    assert cache.endpoint_for(None, 900, None) == "sts"
    assert cache.endpoint_for(None, None, "arn:aws:iam::123456789012:role/x") == "sts"
    assert cache.endpoint_for(None, None, None) == "creds"


def test_flags_override_profile_and_split_the_cache():
    profile = {"mount": "aws", "role": "deploy", "ttl": 3600, "namespace": None}
    merged = cache.merge_request(profile, {"ttl": 900, "mount": None})
    assert merged["mount"] == "aws" and merged["ttl"] == 900
    key_a = cache.cache_key("http://v", "", cache.merge_request(profile, {}))
    key_b = cache.cache_key("http://v", "", merged)
    key_c = cache.cache_key("http://v", "team1", merged)
    assert len({key_a, key_b, key_c}) == 3


@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzEJr//////////wEaDA+/=="])
def test_process_json_matches_json_module(token):
    text = cache.render_process_json("ASIAEXAMPLE", "abc/DEF+ghi=", token, 1_800_000_000)
    parsed = json.loads(text)
    assert parsed["Version"] == 1
    assert parsed["Expiration"] == "2027-01-15T08:00:00Z"
    assert ("SessionToken" in parsed) is bool(token)


def test_process_json_escapes_unusual_characters():
    parsed = json.loads(cache.render_process_json("AKIA", 'se"cr\\et\n', None, 0))
    assert parsed["SecretAccessKey"] == 'se"cr\\et\n'


def test_sealed_secret_opens_only_with_its_key_and_row():
    key, other = b"k" * 32, b"o" * 32
    row = ("aws/creds/ci/abc", "vault|ns|aws|creds|ci", "AKIA1", 1_800_000_000)
    secret, token = crypto.seal_credential(key, *row, "secret", "token")
    assert crypto.open_credential(key, *row, secret, token) == ("secret", "token")
    assert crypto.open_credential(other, *row, secret, token) is None
    assert b"secret" not in secret and token is not None and b"token" not in token
    # a blob copied into another row, or into the other field, does not open
    for moved in (
        ("aws/creds/ci/xyz", *row[1:]),
        (row[0], "other|key", *row[2:]),
        (*row[:2], "AKIA2", row[3]),
        (*row[:3], row[3] + 3600),  # the same row with another expiry: a renewal must reseal
    ):
        assert crypto.open_credential(key, *moved, secret, token) is None
    assert crypto.open_credential(key, *row, token, secret) is None
    assert crypto.open_credential(key, *row, *crypto.seal_credential(key, *row, "s", None)) == ("s", None)
    assert crypto.open_credential(key, *row, secret, None) == ("secret", None)


def test_fast_cipher_is_the_public_aesgcm():
    from cryptography.hazmat.bindings._rust import openssl
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    assert openssl.aead.AESGCM is AESGCM
