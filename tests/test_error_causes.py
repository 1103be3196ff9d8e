"""Every error tells the cause, in one line on stderr (real processes against the Vault double,
a real TLS listener with a CA nobody trusts, a fleet ledger that does not answer)."""

from __future__ import annotations

import datetime
import http.server
import ssl
import threading

import pytest

from tests.support.brokerproc import assert_one_line_error, credential, run_broker
from tests.support.helpers import free_port


@pytest.fixture
def dev(vault):
    assert run_broker("profile", "add", "dev", "--mount", "aws", "--role", "deploy").returncode == 0
    return vault


def test_a_failed_revocation_names_its_cause_and_the_table_shows_it(dev):
    credential("--profile", "dev")
    dev.inject_fault(403, count=50, path_contains="sys/leases/revoke")
    result = run_broker("revoke", "--profile", "dev", "--yes")
    assert result.returncode == 8
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("broker: 1 of 1 revocations failed: permission denied (403) on sys/leases/revoke;"), last
    table = run_broker("leases")
    assert table.returncode == 0
    header = table.stdout.splitlines()[0]
    assert "REVOKE ERROR" in header
    assert "permission denied (403)" in table.stdout


def test_no_vault_addr_says_the_default_was_used(dev, monkeypatch):
    monkeypatch.delenv("VAULT_ADDR")
    result = run_broker("credential-process", "--profile", "dev", env={"VAULT_ADDR": ""})
    assert_one_line_error(result, contains="the default address: VAULT_ADDR is unset", code=4)
    assert "https://127.0.0.1:8200" in result.stderr


def test_no_token_at_all_says_no_token_was_sent(dev, monkeypatch):
    monkeypatch.delenv("VAULT_TOKEN")
    result = run_broker("credential-process", "--profile", "dev")
    assert_one_line_error(result, contains="no token was sent (VAULT_TOKEN unset, no ~/.vault-token)", code=4)


def test_https_against_an_http_listener_says_so_in_full(dev):
    url = dev.url.replace("http://", "https://")
    result = run_broker("credential-process", "--profile", "dev", env={"VAULT_ADDR": url})
    assert_one_line_error(result, contains="is it a plain http:// listener?", code=4)
    assert "..." not in result.stderr  # not cut off


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_an_unknown_ca_is_named(dev, tmp_path):
    cert_path, key_path = _self_signed(tmp_path)
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}"
        result = run_broker("credential-process", "--profile", "dev", env={"VAULT_ADDR": url})
    finally:
        server.shutdown()
        server.server_close()
    assert_one_line_error(result, contains="signed by a CA broker does not trust", code=4)
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr and "VAULT_CACERT" in result.stderr


def test_a_fleet_listing_whose_source_fails_prints_nothing_on_stdout():
    url = f"postgresql://nobody:wrong@127.0.0.1:{free_port()}/fleet"
    result = run_broker("leases", "--fleet", "--format", "json", env={"BROKER_LEDGER_URL": url})
    assert_one_line_error(result)  # stdout is empty: no lone "["


def test_a_missing_driver_names_the_extra(tmp_path):
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "psycopg.py").write_text("raise ModuleNotFoundError(\"No module named 'psycopg'\", name='psycopg')\n")
    from tests.support.brokerproc import ROOT

    env = {"BROKER_LEDGER_URL": "postgresql://u:p@127.0.0.1:1/db", "PYTHONPATH": f"{shadow}:{ROOT}"}
    result = run_broker("leases", "--fleet", env=env)
    assert_one_line_error(result, contains="pip install 'vault-lease-broker[fleet]'", code=2)
    assert "ModuleNotFoundError" not in result.stderr
