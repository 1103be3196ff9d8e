"""The demo behind scripts/demo: everything in a throw-away HOME, nothing touches your own files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BROKER = str(Path(sys.executable).with_name("broker"))


NEXT_STEPS = """
Next steps, against your own Vault:
  1. .venv/bin/broker --help                       # or install it: pipx install .  (see README: Install)
  2. export VAULT_ADDR=https://vault.example.com:8200 && vault login
  3. broker profile add dev --mount aws --role YOUR_ROLE --ttl 1h --region eu-west-1 --write-aws-config
  4. broker doctor                                  # Vault, token, database, key and the profile's role
  5. aws sts get-caller-identity --profile dev      # or: broker exec dev aws sts get-caller-identity
  6. broker list; broker leases                     # what is cached, and every lease Vault issued
Shell completion: eval "$(_BROKER_COMPLETE=bash_source broker)"   (README: Shell completion)"""


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def sh(*argv: str, env: dict) -> str:
    print("$ " + " ".join(a if " " not in a else repr(a) for a in argv), flush=True)
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    if result.stdout:
        print(result.stdout.rstrip())
    if result.stderr:
        print(result.stderr.rstrip(), file=sys.stderr)
    if result.returncode != 0:
        raise SystemExit(f"demo: {argv[1] if len(argv) > 1 else argv[0]} failed with exit code {result.returncode}")
    return result.stdout


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="broker-demo-"))
    ready = work / "double.json"
    step("starting the Vault double and moto on 127.0.0.1")
    double = subprocess.Popen(
        [sys.executable, "-m", "tests.support.vault_double", "--ready-file", str(ready)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            if time.monotonic() > deadline or double.poll() is not None:
                raise SystemExit("demo: the Vault double did not start")
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        print(f"Vault double at {info['vault_addr']}, moto at {info['aws_endpoint']}")
        home = work / "home"
        home.mkdir(mode=0o700)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "VAULT_", "BROKER_"))}
        env.update(
            HOME=str(home),
            XDG_DATA_HOME=str(home / ".local/share"),
            XDG_CONFIG_HOME=str(home / ".config"),
            AWS_CONFIG_FILE=str(home / ".aws/config"),
            AWS_SHARED_CREDENTIALS_FILE=str(home / ".aws/credentials"),
            VAULT_ADDR=info["vault_addr"],
            VAULT_TOKEN=info["token"],
            AWS_ENDPOINT_URL=info["aws_endpoint"],
            AWS_EC2_METADATA_DISABLED="true",
        )
        step("adding a profile for the Vault role aws/deploy (assumed_role), written into ~/.aws/config")
        sh(
            BROKER,
            "profile",
            "add",
            "deploy",
            "--mount",
            "aws",
            "--role",
            "deploy",
            "--ttl",
            "1h",
            "--region",
            "us-east-1",
            "--write-aws-config",
            env=env,
        )
        config = home / ".aws" / "config"
        print(f"{config}:\n{config.read_text()}")
        step("boto3 reads the profile: three clients, one Vault issuance (the rest are cache hits)")
        probe = (
            "import boto3\n"
            "for i in range(3):\n"
            "    s = boto3.Session(profile_name='deploy')\n"
            "    print('caller:', s.client('sts').get_caller_identity()['Arn'])\n"
            "s.client('s3').create_bucket(Bucket='broker-demo')\n"
            "print('buckets:', [b['Name'] for b in s.client('s3').list_buckets()['Buckets']])\n"
        )
        sh(sys.executable, "-c", probe, env=env)
        step("an iam_user credential for a CI job, without the cache")
        sh(BROKER, "credential-process", "--mount", "aws", "--role", "ci", "--no-cache", env=env)
        step("the ledger: every lease Vault issued to this machine (no secret in any format)")
        sh(BROKER, "leases", env=env)
        step("incident: revoke everything of role ci (iam_user keys are deleted in AWS)")
        sh(BROKER, "revoke", "--role", "ci", "--yes", env=env)
        sh(BROKER, "leases", "--state", "revoked", "--format", "csv", env=env)
        step("what aws-vault users type: every profile with its live credential, and a setup check")
        sh(BROKER, "list", env=env)
        sh(BROKER, "doctor", env=env)
        print("\ndemo: done; everything it made is removed again")
        print(NEXT_STEPS)
    finally:
        double.send_signal(signal.SIGTERM)
        try:
            double.wait(timeout=15)
        except subprocess.TimeoutExpired:
            double.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
