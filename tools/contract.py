"""Check a live bus against its own OpenAPI document with schemathesis (`nox -s contract`).

Starts `ipt-bus serve` (memory storage) on a free port, and a second one that requires tokens,
runs schemathesis against each with a bounded number of examples, and stops them. Any server
error, or a status, content type or body that `/openapi.json` does not describe, fails the run:
a bug to fix in the bus or in the document, never to filter out.

    python tools/contract.py [--max-examples N]
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from collections.abc import Iterator

BIN = Path(sys.executable).parent
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _bus(*args: str) -> Iterator[str]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(BIN / "ipt-bus"), "serve", "--port", str(port), "--storage", "memory", *args]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"the bus did not start: {' '.join(command)}") from None
                time.sleep(0.05)  # polling a starting process, with a deadline
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _schemathesis(url: str, max_examples: int, *extra: str) -> int:
    command = [
        str(BIN / "st"),
        "run",
        f"{url}/openapi.json",
        "--checks",
        CHECKS,
        "--max-examples",
        str(max_examples),
        "--workers",
        "1",
        "--seed",
        "1",
        *extra,
    ]
    print("$", " ".join(command), flush=True)
    return subprocess.run(command, check=False).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=25)
    args = parser.parse_args()
    with _bus() as url:
        failed = _schemathesis(url, args.max_examples)
    with tempfile.TemporaryDirectory() as keys:
        secret = Path(keys) / "secret"
        secret.write_text("contract-test-secret-of-32-bytes-or-more")
        token = subprocess.run(
            [str(BIN / "ipt-bus"), "token", "--secret-file", str(secret), "--sub", "contract",
             "--publish", "**", "--subscribe", "**", "--admin"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        with _bus("--auth-secret-file", str(secret)) as url:
            failed |= _schemathesis(
                url, args.max_examples, "--header", f"Authorization: Bearer {token}"
            )
    return failed


if __name__ == "__main__":
    sys.exit(main())
